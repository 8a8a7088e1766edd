"""Errors of the device registry.

    RegistryError                 base of everything raised here
    ├── StoreUnavailable          the database cannot be reached or refused the statement
    ├── NotFound                  no such gateway/device/alert (``kind``, ``key``)
    └── Ambiguous                 a short device id matches devices of several gateways

SQLAlchemy and driver errors are converted in ``store.py`` where they enter our code, chained
with ``from exc``.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's errors."""


class StoreUnavailable(RegistryError):
    """The database failed; the caller may retry later."""


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
