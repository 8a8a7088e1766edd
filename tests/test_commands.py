"""A command's state as the API shows it: a command nobody answered in time is expired."""

from __future__ import annotations

import pytest

from device_registry.db.tables import CommandRow
from device_registry.inventory.commands import command_view

# (stored state, expires_at, now, shown state)
STATES: list[tuple[str, int | None, int, str]] = [
    ("sent", 61_000, 60_000, "sent"),
    ("sent", 61_000, 61_001, "expired"),  # no answer by the deadline: the gateway won't run it
    ("sent", None, 10**12, "sent"),  # made before commands expired
    ("ok", 61_000, 99_000, "ok"),  # answered in time, read later
    ("failed", 61_000, 99_000, "failed"),
    ("expired", 61_000, 62_000, "expired"),  # the gateway said so itself
]


@pytest.mark.parametrize(("stored", "expires_at", "now", "shown"), STATES)
def test_command_state(stored: str, expires_at: int | None, now: int, shown: str) -> None:
    row = CommandRow(id="c1", gateway_id="gw", device_id="gw:d", point="relay", value=True,
                     requested_by="ops", requested_at=1_000, state=stored, error="",
                     expires_at=expires_at)  # fmt: skip
    assert command_view(row, now).state == shown
