"""The type of a value the API serves back, apart from the routing so that every room's views
can use it without importing the HTTP machinery (and, through it, the store)."""

Served = int | float | bool | str | None
"""A reading's value as the API serves it back: as stored, not re-checked against the wire
contract's ranges (a row may predate them, and refusing to show it would hide the device);
``routing.json_reply`` turns a non-finite float into null."""
