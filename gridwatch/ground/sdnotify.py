"""systemd's readiness and watchdog protocol (``sd_notify``), written out: one datagram of
``KEY=value`` lines to the unix socket named by ``$NOTIFY_SOCKET``; a name starting with ``@``
is in the abstract namespace (a leading NUL byte).

Written here rather than taken from PyPI: the protocol is these few lines, and the ``sdnotify``
package has been unmaintained since 2017 (``systemd-python`` needs libsystemd headers to build,
which a gateway image does not carry). Without ``$NOTIFY_SOCKET`` (not started by systemd, or a
``Type=`` other than ``notify``) every call is a no-op, so the roles call it unconditionally.

What the roles send: ``READY=1`` once serving, ``STATUS=`` lines a person reads in
``systemctl status``, ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while healthy (each role
defines healthy itself), ``RELOADING=1`` then ``READY=1`` around a reload, ``STOPPING=1`` on
a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def address(env: Mapping[str, str]) -> str | None:
    """The socket address to send to, or None when there is none (pure)."""
    name = env.get("NOTIFY_SOCKET", "")
    if not name or name[0] not in "/@":  # vsock addresses (vsock:CID:PORT) are not for us
        return None
    return "\0" + name[1:] if name[0] == "@" else name


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when systemd
    watches no watchdog for this process (``$WATCHDOG_PID`` names another) (pure)."""
    usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 2e6


def message(**fields: str | int) -> bytes:
    """``message(READY=1, STATUS="serving")`` -> ``b"READY=1\\nSTATUS=serving"`` (pure)."""
    for value in fields.values():
        if "\n" in str(value):
            raise ValueError(f"sd_notify values are single lines, got {value!r}")
    return "\n".join(f"{k}={v}" for k, v in fields.items()).encode()


def notify(**fields: str | int) -> bool:
    """Send one notification; True when a socket took it. A send that fails is logged, never
    raised: the service runs on, and systemd's own timeouts say what went wrong."""
    where = address(os.environ)
    if where is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message(**fields), where)
    except OSError as exc:
        logger.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


async def keep_alive() -> None:
    """Ping the watchdog while the event loop turns, until cancelled: the liveness the bridge
    and the registry promise (a loop blocked by a hung call stops the pings, and systemd
    restarts the process). The edge pings from its own health check instead."""
    every = watchdog_interval(os.environ, os.getpid())
    if every is None:
        return
    while True:
        notify(WATCHDOG=1)
        await asyncio.sleep(every)
