"""The exit status of every ``gridwatch`` command: one table, for scripts and monitoring, said
once for people in docs/cli.md.

    0    OK           done: healthy, read, registered, commissioned
    1    BAD_NEWS     the command worked and the answer is bad news: something unhealthy, no such
                      gateway or device, nothing matching a filter, a device not commissioned, a
                      command the device did not carry out, a config with problems (``config
                      check``, ``--validate-config``), a Modbus unit that does not answer, an
                      edge agent that is not running. A service (``central run``, ``registry
                      serve``, ``bridge run``, ``edge run``) that stops on an error of its own (a
                      config that is not valid, a port in use) exits 1 too.
    2    USAGE        the command cannot run as asked: bad arguments, an address that is no URL,
                      a CA file that cannot be used, an extra that is not installed
    3    RETRY_LATER  the centre cannot answer now: nobody listens, no such host, a TLS mismatch,
                      a timeout, or it answers 502/503/504 (its database or broker is away),
                      408 or 429. The same command later may well work.
    4    REFUSED      the registry refused this request (400, 401, 403, 409, 413, 415, 422: a
                      token it does not know, a role that may not, a value it does not take), or
                      a Modbus unit answered with an exception. The same command again will be
                      refused again: fix the request, the token or the role.
    141  CLOSED_STDOUT  the reader of the output went away (``gridwatch alert list | head``):
                      128 + SIGPIPE, as a shell reports for a Unix tool that SIGPIPE ended

An HTTP error from the registry becomes its code through ``for_http``, in one place, and the
first words of its message through ``said``, so that a person reads what the code says: "not
found" for a 404 that exits 1, "refused" only for what exits 4.
"""

from __future__ import annotations

from gridwatch.ground.i18n import _

OK = 0
BAD_NEWS = 1
USAGE = 2
RETRY_LATER = 3
REFUSED = 4
CLOSED_STDOUT = 141

CLIENT_EPILOG = (
    "exit status: 0 done; 1 bad news (unhealthy, not found, not commissioned); 2 usage; 3 retry "
    "later (the registry cannot be reached, or answers 503); 4 refused (the token, the role, "
    "the request). The table of every command: docs/cli.md"
)
"""What ``--help`` of each command that talks to the registry says about its exit status."""

_LATER = frozenset({408, 429, 502, 503, 504})
_NOT_THERE = frozenset({404, 410})


def for_http(status: int) -> int:
    """The exit status for an HTTP error status (400 and up) the registry answered with."""
    if status in _LATER:
        return RETRY_LATER
    if status in _NOT_THERE:
        return BAD_NEWS
    if 400 <= status < 500:
        return REFUSED
    return BAD_NEWS  # 500, 501: the registry failed at it (its log says why)


def said(status: int) -> str:
    """The first words of the message for an HTTP error status, agreeing with ``for_http``."""
    code = for_http(status)
    if code == RETRY_LATER:
        return _("the registry cannot do this now")
    if code == REFUSED:
        return _("refused")
    if status in _NOT_THERE:
        return _("not found")
    return _("the registry failed at it (its log says why)")


__all__ = [
    "BAD_NEWS",
    "CLIENT_EPILOG",
    "CLOSED_STDOUT",
    "OK",
    "REFUSED",
    "RETRY_LATER",
    "USAGE",
    "for_http",
    "said",
]
