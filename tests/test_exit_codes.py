"""One exit-code table for every command that talks to the registry (docs/cli.md): the same
failure gives the same code whichever command met it. ``gridwatch health`` once said 3 for a
503 and ``gridwatch device list`` 1; now 3 is "retry later" everywhere (the registry cannot be
reached, or its database is away) and 4 "refused" (the token, the role, the request).

Each command runs as its own process against a real registry: on PostgreSQL stopped under it
(503), with a token it does not know (401), with a role that may not (403), asking for what does
not exist (404), and at a port nobody listens on."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from device_registry.http.app import Delivery
from device_registry.http.auth import Role
from gridwatch.top.exits import for_http, said
from tests._ops_helpers import registry
from tests.services import Postgres, free_port
from tests.test_cli import Ran, gridwatch

OK, BAD_NEWS, USAGE, RETRY_LATER, REFUSED = 0, 1, 2, 3, 4


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, REFUSED), (401, REFUSED), (403, REFUSED), (404, BAD_NEWS), (408, RETRY_LATER),
     (409, REFUSED), (410, BAD_NEWS), (413, REFUSED), (415, REFUSED), (422, REFUSED),
     (429, RETRY_LATER), (500, BAD_NEWS), (501, BAD_NEWS), (502, RETRY_LATER),
     (503, RETRY_LATER), (504, RETRY_LATER)],
)  # fmt: skip
def test_each_http_status_has_one_exit_code(status: int, code: int) -> None:
    assert for_http(status) == code


@pytest.mark.parametrize(
    ("status", "words"),
    [(400, "refused"), (403, "refused"), (404, "not found"), (410, "not found"),
     (422, "refused"), (429, "the registry cannot do this now"),
     (500, "the registry failed at it"), (503, "the registry cannot do this now")],
)  # fmt: skip
def test_the_message_says_what_the_exit_code_says(status: int, words: str) -> None:
    """A 404 exits 1 (bad news), so its message must not say "refused" (exit 4)."""
    assert said(status).startswith(words)


COMMANDS: list[tuple[list[str], Role, Role | None, list[str] | None]] = [
    # (the command, a role that may run it, one that may not (None: every role may read it),
    # the same asking for something that does not exist)
    (["device", "list"], Role.INSTALLER, None, ["device", "show", "gw9:nope"]),
    (["gateway", "list"], Role.INSTALLER, None, ["gateway", "show", "gw9"]),
    (["health"], Role.INSTALLER, Role.PLATFORM, ["health", "--gateway", "gw9"]),
    (["alert", "list"], Role.OPERATOR, Role.INSTALLER,
     ["alert", "file", "nope", "--note", "crew 7"]),
    (["profile", "list"], Role.INSTALLER, None, ["profile", "show", "nope"]),
    (["token", "create", "--role", "installer"], Role.ADMIN, Role.INSTALLER, None),
]  # fmt: skip


async def _run_all(url: str, tokens: list[str]) -> list[tuple[list[str], Ran]]:
    """Every command of ``COMMANDS``, each with its token, at once."""
    argvs = [c[0] for c in COMMANDS]
    runs = [gridwatch(*argv, "--url", url, token=t) for argv, t in zip(argvs, tokens, strict=True)]
    return list(zip(argvs, await asyncio.gather(*runs), strict=True))


def _check(ran: list[tuple[list[str], Ran]], code: int, words: str) -> None:
    for argv, r in ran:
        assert r.code == code, (argv, r)
        assert words in r.err and r.err.count("\n") == 1, (argv, r)


async def test_the_same_failure_is_the_same_exit_code_for_every_command(
    tmp_path: Path, own_postgres: Postgres
) -> None:
    url = own_postgres.create_database("exits")
    async with registry(tmp_path, Delivery(poll_s=0.2), db_url=url) as reg:
        may = [reg.tokens[c[1]] for c in COMMANDS]
        ok = await _run_all(reg.url, may)
        assert [(argv, r.code) for argv, r in ok] == [(argv, OK) for argv, _ in ok], ok
        _check(await _run_all(reg.url, ["not-a-token"] * len(COMMANDS)), REFUSED,
               "does not know this API token")  # fmt: skip
        barred = [(c[0], reg.tokens[c[2]]) for c in COMMANDS if c[2] is not None]
        forbidden = await asyncio.gather(
            *(gridwatch(*argv, "--url", reg.url, token=token) for argv, token in barred)
        )
        _check(list(zip([argv for argv, _ in barred], forbidden, strict=True)), REFUSED, "403")
        missing = [(c[3], reg.tokens[c[1]]) for c in COMMANDS if c[3] is not None]
        found = await asyncio.gather(
            *(gridwatch(*argv, "--url", reg.url, token=token) for argv, token in missing)
        )
        for (argv, _), r in zip(missing, found, strict=True):
            assert r.code == BAD_NEWS and r.err.count("\n") == 1, (argv, r)
            assert "refused" not in r.err, (argv, r)  # exit 1 is not 4's word
        # the database goes: every command is told to retry later, none that it was refused
        await asyncio.to_thread(own_postgres.stop)
        _check(await _run_all(reg.url, may), RETRY_LATER, "503")
    # nobody listens: retry later too
    _check(await _run_all(f"http://127.0.0.1:{free_port()}", ["t"] * len(COMMANDS)),
           RETRY_LATER, "cannot be reached")  # fmt: skip


def test_docs_cli_md_is_the_table_the_commands_use() -> None:
    """Each HTTP status docs/cli.md names in a row gives that row's code."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = {int(r.split("|")[1]): r for r in doc.splitlines() if re.match(r"^\| \d+ \|", r)}
    assert sorted(rows) == [OK, BAD_NEWS, USAGE, RETRY_LATER, REFUSED, 141]
    named = {
        code: {int(s) for s in re.findall(r"\b([45]\d\d)\b", row)} for code, row in rows.items()
    }
    assert named[RETRY_LATER] == {408, 429, 502, 503, 504}
    assert named[REFUSED] >= {400, 401, 403, 409, 413, 415, 422}
    assert named[BAD_NEWS] == {404}
    for code, statuses in named.items():
        for status in statuses:
            assert for_http(status) == code, (status, code)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["gateway", "add", "gw1", "--label", "no-equals-sign"], "--label must be key=value"),
        (["device", "command", "gw1:wl-1", "level", "high"], "must be true, false or a number"),
        (["health", "--url", "ftp://registry"], "not an http:// or https:// address"),
    ],
)
async def test_an_option_that_cannot_be_used_is_a_usage_error(argv: list[str], words: str) -> None:
    url = [] if "--url" in argv else ["--url", f"http://127.0.0.1:{free_port()}"]
    ran = await gridwatch(*argv, *url, token="t")
    assert ran.code == USAGE and words in ran.err and ran.err.count("\n") == 1, ran
