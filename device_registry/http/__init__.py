"""The registry's one HTTP layer: the app composition, auth, errors, request parsing, the
OpenAPI document and the dashboard."""
