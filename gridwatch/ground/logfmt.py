"""How every role logs: plain lines for a person at a terminal, or JSON lines for journald and
log shippers (``--log-format json`` or ``GRIDWATCH_LOG_FORMAT=json``).

A JSON record is one object per line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, ``exc`` when there is a traceback, and the context it was logged in: ``gateway``
and ``device`` when known. Context comes from ``log_context`` (a ``contextvars`` variable, so a
device poller's task carries its device and every task of the edge its gateway) or from a
record's ``extra={"device": ...}``; the record's own wins. journald takes the lines from stderr
as they are.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from datetime import UTC, datetime

FORMATS = ("text", "json")
CONTEXT_KEYS = ("gateway", "device")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "gridwatch_log_context", default=None
)


def log_context(**fields: str) -> None:
    """Add fields to every record logged from this context on (this task and those it starts)."""
    _context.set({**(_context.get() or {}), **fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get() or {}
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None) or context.get(key)
            if value:
                entry[key] = str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def chosen_format(flag: str | None) -> str:
    """The flag, else ``$GRIDWATCH_LOG_FORMAT``, else text; an unknown value is an error."""
    fmt = flag or os.environ.get("GRIDWATCH_LOG_FORMAT", "") or "text"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def setup(level: int, fmt: str) -> None:
    """Configure the root logger once, for the whole process."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
