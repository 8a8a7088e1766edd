"""Migration r0009_i13_case on SQLite and PostgreSQL: alerts kept under the old generic lifecycle
become cases at the stage the docs' table gives, their recorded steps renamed alike; and back."""

from __future__ import annotations

from sqlalchemy import text

from device_registry.db import migrate
from device_registry.db.engine import make_engine

BEFORE = "r0009_i13_xuhui"
CASE = "r0009_i13_case"

# (alert, old stage, escalated_at) -> (new stage, urge_count): docs/alerts.md "From the old stages"
ROWS = [
    ("a-open", "open", None, "reported", 0),
    ("a-ack", "acknowledged", 5, "filed", 1),  # an escalated alert counts as urged once
    ("a-clear", "cleared", None, "reported", 0),
    ("a-res", "resolved", None, "disposed", 0),
    ("a-closed", "closed", None, "closed", 0),
]


async def _migrate(url: str, revision: str, down: bool = False) -> None:
    move = migrate.command.downgrade if down else migrate.command.upgrade
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: move(migrate.alembic_config(c), revision))
    await engine.dispose()


async def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        got = [tuple(r) for r in await conn.execute(text(sql))]
    await engine.dispose()
    return got


async def test_old_stages_map_onto_the_case_workflow_and_back(registry_url: str) -> None:
    url = registry_url
    await _migrate(url, BEFORE)
    engine = make_engine(url)
    async with engine.begin() as conn:
        for alert_id, stage, escalated, _, _ in ROWS:
            await conn.execute(
                text("INSERT INTO alert_ops (alert_id, stage, incident_id, escalated_at, "
                     "acked_by, resolved_by) VALUES (:a, :s, 'inc-1', :e, 'anna', 'bob')"),
                {"a": alert_id, "s": stage, "e": escalated},
            )  # fmt: skip
        await conn.execute(text(
            "INSERT INTO alert_actions (alert_id, action, \"before\", \"after\", actor, note, at, "
            "override, sensor) VALUES ('a-res', 'ack', 'open', 'acknowledged', 'anna', '', 1, "
            "false, ''), ('a-res', 'resolve', 'acknowledged', 'resolved', 'bob', '', 2, false, '')"
        ))  # fmt: skip
    await engine.dispose()

    await _migrate(url, CASE)
    got = await _rows(url, "SELECT alert_id, stage, urge_count, filed_by, disposed_by, "
                           "dispatch_count FROM alert_ops ORDER BY alert_id")  # fmt: skip
    assert sorted(got) == sorted((a, new, urged, "anna", "bob", 0) for a, _, _, new, urged in ROWS)
    steps = await _rows(url, 'SELECT action, "before", "after" FROM alert_actions ORDER BY at')
    assert steps == [("file", "reported", "filed"), ("dispose", "filed", "disposed")]

    await _migrate(url, BEFORE, down=True)  # and back: the old stages the new ones came from
    back = dict(await _rows(url, "SELECT alert_id, stage FROM alert_ops"))  # type: ignore[arg-type]
    assert back == {"a-open": "open", "a-ack": "acknowledged", "a-clear": "open",
                    "a-res": "resolved", "a-closed": "closed"}  # fmt: skip
    steps = await _rows(url, 'SELECT action, "before", "after" FROM alert_actions ORDER BY at')
    assert steps == [("ack", "open", "acknowledged"), ("resolve", "acknowledged", "resolved")]
