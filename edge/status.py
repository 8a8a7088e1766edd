"""The edge agent's status, for ``gridwatch edge status`` on the gateway box itself.

The agent writes a small JSON file beside its outbox (``<outbox>-status.json``) every
``STATUS_EVERY_S``, atomically (a temporary file renamed over the old one), so a reader never
sees half a file. A file rather than a socket because it outlives the agent: after a crash the
last status is still there, and the reader says how old it is. It holds the uplink (up or down,
since when, which broker, the last error), the outbox (depth, bytes, dropped, oldest waiting
message), each device's last poll outcome, the last errors logged, and the watchdog's verdict.

The reader needs neither the centre nor the broker. While the agent runs, the outbox is locked
by it (``locking_mode=EXCLUSIVE``), so the figures come from the file; when the agent is not
running, the reader opens the outbox itself, read-only. ``judge`` turns both into what a person
reads and an exit status: 0 healthy, 1 problems, 3 the agent is not running.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUS_EVERY_S = 2.0
STALE_S = 5 * STATUS_EVERY_S
"""A status older than this from a live pid: the agent is hung, not merely between writes."""
ERRORS_KEPT = 10

EXIT_HEALTHY, EXIT_PROBLEMS, EXIT_NOT_RUNNING = 0, 1, 3

KINDS = {0: "alerts", 1: "telemetry and the rest"}  # outbox priorities, in send order


def status_path(outbox: Path) -> Path:
    return Path(f"{outbox}-status.json")


def write_atomic(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file in one rename. Not fsynced: it is rewritten every few seconds,
    and a power cut that loses the last one loses seconds of status, not data."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=1))
    tmp.replace(path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(slots=True)
class LastPoll:
    """A device's last poll outcome, as the status file shows it (``at``: monotonic, not
    shown; the watchdog's check that the device's poll loop turns)."""

    ok: bool
    ts: int  # epoch ms
    error: str
    at: float

    def shown(self) -> dict[str, Any]:
        return {"ok": self.ok, "ts": self.ts, "error": self.error}


class RecentErrors(logging.Handler):
    """Keeps the last ERROR records of the process for the status file."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            {"ts": record.created, "logger": record.name, "message": record.getMessage()}
        )


# --- the outbox, read by either side --------------------------------------------------------
def outbox_summary(db: sqlite3.Connection) -> dict[str, Any]:
    """What the outbox holds for the centre, per priority, and the time of the oldest. A message
    is waiting until the centre acknowledges it (``mqtt.ack: centre``): not yet sent, or sent
    (the broker has it) and not acknowledged; acknowledged ones kept for repair are not
    waiting. Tolerant of an outbox from before the acknowledgement (no ``state``: every row
    waits; the payload in the row itself)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    acked = "state = 2" if "state" in columns else "0"
    rows = db.execute(
        f"SELECT prio, COUNT(*), SUM(CASE WHEN {acked} THEN 0 ELSE 1 END), "
        f"SUM(CASE WHEN {'state = 1' if 'state' in columns else '0'} THEN 1 ELSE 0 END) "
        "FROM outbox GROUP BY prio"
    ).fetchall()
    by_prio = {prio: int(waiting or 0) for prio, _, waiting, _ in rows if waiting}
    unacked = sum(int(sent or 0) for *_, sent in rows)
    oldest_ts: int | None = None
    body = "outbox_body b ON b.id = o.id" if "state" in columns else None
    query = (
        f"SELECT b.payload FROM outbox o JOIN {body} WHERE NOT o.{acked} ORDER BY o.id LIMIT 1"
        if body
        else "SELECT payload FROM outbox ORDER BY id LIMIT 1"
    )
    try:
        row = db.execute(query).fetchone()
        oldest_ts = payload_ts(bytes(row[0])) if row else None
    except sqlite3.Error:  # a schema this reader does not know: the age stays unknown
        pass
    return {
        "by_kind": {KINDS.get(p, f"priority {p}"): n for p, n in sorted(by_prio.items())},
        "waiting": sum(by_prio.values()),
        "unacknowledged": unacked,
        "oldest_ts": oldest_ts,
    }


def payload_ts(payload: bytes) -> int | None:
    """The epoch-ms time a queued message carries: its ``ts``, or its oldest reading's."""
    try:
        msg = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(msg, dict):
        return None
    found = [r.get("ts") for r in msg.get("readings") or [] if isinstance(r, dict)]
    times = [t for t in [msg.get("ts"), *found] if isinstance(t, int)]
    return min(times) if times else None


def read_outbox(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The summary of an outbox no agent holds, opened read-only; or None and why not."""
    if not path.exists():
        return None, f"{path}: no outbox yet"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            return outbox_summary(db), ""
        finally:
            db.close()
    except sqlite3.Error as exc:
        return None, f"{path}: cannot read the outbox: {exc}"


# --- judging ----------------------------------------------------------------------------------
@dataclass
class Report:
    exit: int
    running: str  # "running", "hung", "not running"
    problems: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None
    outbox: dict[str, Any] | None = None


def judge(
    status: dict[str, Any] | None,
    alive: bool,
    outbox: dict[str, Any] | None,
    now: float,
) -> Report:
    """What is wrong, from the last status file, whether its pid lives, and (agent not running)
    the outbox read directly (pure: ``now`` in epoch seconds)."""
    age = now - float(status["written_at"]) if status else None
    if status is None or not alive:
        if age is None:
            when = "never wrote a status"
        elif status and status.get("stopped_at"):
            when = f"stopped cleanly {_ago(now - float(status['stopped_at']))}"
        else:
            when = f"last status {_ago(age)}: it crashed, was killed, or the box lost power"
        return Report(EXIT_NOT_RUNNING, "not running", [f"agent not running ({when})"],
                      status, outbox)  # fmt: skip
    problems = []
    if age is not None and age > STALE_S:
        problems.append(f"status not updated since {_ago(age)}: the agent is hung, or cannot "
                        "write beside its outbox (a full disk?)")  # fmt: skip
    up = status.get("uplink") or {}
    if not up.get("connected"):
        since = up.get("since")
        problems.append(
            "uplink down"
            + (f" since {_clock(since)} ({_ago(now - since)})" if since else " (never connected)")
            + (f": {up['last_error']}" if up.get("last_error") else "")
        )
    for device, last in sorted((status.get("devices") or {}).items()):
        if last.get("ok") is False:
            problems.append(f"device {device}: {last.get('error') or 'failed'}")
        elif last.get("ts") is None:
            problems.append(f"device {device}: not polled yet")
    problems.extend(status.get("unhealthy") or [])
    running = "hung" if age is not None and age > STALE_S else "running"
    return Report(EXIT_PROBLEMS if problems else EXIT_HEALTHY, running, problems, status,
                  outbox or status.get("outbox"))  # fmt: skip


def render(report: Report, now: float) -> str:
    """The report as a person reads it on a terminal."""
    s = report.status or {}
    lines = [_headline(report, s, now)]
    up = s.get("uplink")
    if up:
        state = "up" if up.get("connected") else "DOWN"
        since = f" since {_clock(up['since'])}" if up.get("since") else ""
        broker = up.get("endpoint") or ", ".join(s.get("brokers") or []) or "-"
        lines.append(f"uplink: {state}{since}, broker {broker}"
                     f", {up.get('outages', 0)} outage(s)")  # fmt: skip
    ob = report.outbox
    if ob:
        kinds = ", ".join(f"{k} {n}" for k, n in (ob.get("by_kind") or {}).items()) or "empty"
        oldest = ob.get("oldest_ts")
        age = f", oldest from {_ago(now - oldest / 1000)}" if oldest else ""
        dropped = f", {ob['dropped']} dropped on overflow" if ob.get("dropped") else ""
        sent = ob.get("unacknowledged") or 0
        told = f", {sent} of them sent, not yet acknowledged by the centre" if sent else ""
        lines.append(f"outbox: {ob.get('waiting', 0)} waiting ({kinds}){told}{age}{dropped}")
    devices = s.get("devices") or {}
    if devices:
        lines.append("devices:")
        width = max(len(d) for d in devices)
        for device, last in sorted(devices.items()):
            when = f"{_ago(now - last['ts'] / 1000)}" if last.get("ts") else "not polled yet"
            state = {True: "ok", False: "FAILED"}.get(last.get("ok"), "-")
            err = f": {last['error']}" if last.get("error") else ""
            lines.append(f"  {device:<{width}}  {state:<6}  {when}{err}")
    errors = s.get("errors") or []
    if errors:
        lines.append("last errors:")
        lines.extend(f"  {_clock(e['ts'])} {e['logger']}: {e['message']}" for e in errors)
    if report.problems:
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in report.problems)
    return "\n".join(lines)


def _headline(report: Report, s: dict[str, Any], now: float) -> str:
    who = f"gateway {s.get('gateway', '?')}"
    if report.running == "not running":
        return f"{who}: {report.problems[0]}"
    up = f", up {_span(now - s['started_at'])}" if s.get("started_at") else ""
    return f"{who}: agent {report.running} (pid {s.get('pid')}{up}, config v" \
           f"{s.get('config_version')})"  # fmt: skip


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h"


def _ago(seconds: float) -> str:
    return f"{_span(seconds)} ago"


def pid_alive(pid: object) -> bool:
    """Whether ``pid`` is an edge agent still: after a reboot the status file's pid may belong
    to any process, so its command line must say ``edge run`` (where /proc is readable)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: the pid's existence is all there is to go on
        cmdline = b""
    if cmdline:  # empty while a process is still being exec'd, and for a zombie
        return b"edge\0run\0" in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
