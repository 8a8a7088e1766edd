"""Errors of the device registry.

    RegistryError                 base of everything raised here
    ├── StoreUnavailable          the database cannot be reached or cannot work now (connection,
    │                             timeout, shutting down or starting up, deadlock): retry
    ├── StoreRejected             the database refused a statement (a bug, bad data): retrying
    │                             the same thing will not help
    │                             (``db/faults.py`` tells the two apart by SQLSTATE and type)
    ├── NotFound                  no such gateway/device/alert (``kind``, ``key``)
    ├── Ambiguous                 a short device id matches devices of several gateways
    ├── Invalid                   a request the registry refuses: ``problems`` = [(field path,
    │                             message)] (HTTP 422)
    ├── Conflict                  it exists already, or is retired (HTTP 409)
    ├── BrokerUnavailable         the MQTT broker cannot be reached or refused a control request
    │                             (credentials, config push, command) (HTTP 503)
    ├── Unauthorized              no token, or one the registry does not know (HTTP 401)
    └── Forbidden                 the token's role may not do this (HTTP 403)

``http/problems.py`` turns each into one ``application/problem+json`` answer.

SQLAlchemy and driver errors are converted in ``store.py`` where they enter our code, chained
with ``from exc``.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's errors."""


class StoreUnavailable(RegistryError):
    """The database failed; the caller may retry later."""


class StoreRejected(RegistryError):
    """The database refused a statement; the caller should not retry it as it is."""


class NotFound(RegistryError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind = kind
        self.key = key


class Ambiguous(RegistryError):
    def __init__(self, key: str, candidates: list[str]) -> None:
        super().__init__(f"device id {key!r} is ambiguous; use one of {candidates}")
        self.key = key
        self.candidates = candidates


class Invalid(RegistryError):
    def __init__(self, problems: list[tuple[str, str]], where: str = "the request") -> None:
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))
        self.problems = problems
        self.where = where
        """What was invalid: the body, the query string, the path, a CSV file."""


class Conflict(RegistryError):
    """The change contradicts what is registered (a duplicate id, a retired gateway)."""


class BrokerUnavailable(RegistryError):
    """A broker control request failed; nothing was changed in the registry."""


class Unauthorized(RegistryError):
    """No token, or an unknown or revoked one."""


class Forbidden(RegistryError):
    """The caller's role may not call this endpoint."""
