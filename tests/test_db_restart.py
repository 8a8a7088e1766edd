"""A PostgreSQL restart under a running centre (``gridwatch central run``: the bridge, the
registry API and its delivery side, on real mosquitto and PostgreSQL) is an outage, and its log
says so the way an operator can read: no traceback, one ERROR line per component when the
outage starts and one INFO line with its length when it ends; and nothing published meanwhile
is lost."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from device_registry import RegistryStore
from gridwatch.ground.contract import Topics
from tests._central_helpers import batch, now_ms, publisher, reading
from tests.services import Mosquitto, Postgres, free_port

LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<msg>.*)$")
START = re.compile(r"^(?P<what>.+?) (unavailable|failed)\b")
END = re.compile(r"^(?P<what>.+?) is back after (?P<s>[0-9.]+) s \(")


def _log_lines(log: Path) -> list[tuple[str, str, str]]:
    out = []
    for raw in log.read_text(errors="replace").splitlines():
        m = LINE.match(raw)
        if m:
            out.append((m["level"], m["logger"], m["msg"]))
    return out


def _outages(log: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """(what -> ERROR lines that began an outage, what -> INFO lines that ended one)."""
    began: collections.Counter[str] = collections.Counter()
    ended: collections.Counter[str] = collections.Counter()
    for level, _, msg in _log_lines(log):
        if level == "ERROR" and (m := START.match(msg)):
            began[m["what"]] += 1
        elif level == "INFO" and (m := END.match(msg)):
            ended[m["what"]] += 1
    return began, ended


async def _wait(predicate, what: str, log: Path, within_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not await predicate():
        assert time.monotonic() < deadline, f"{what}:\n{_tail(log)}"
        await asyncio.sleep(0.2)  # polling a condition, with a deadline


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:]


def _central(url: str, mosquitto: Mosquitto, prefix: str, port: int, workdir: Path,
             log: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "central", "run",
             "--data-dir", str(workdir / "central"), "--http-port", str(port),
             "--db-url", url, "--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port),
             "--prefix", prefix, "--bridge-id", f"bridge-{prefix}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _post_webhook(port: int) -> None:
    body = json.dumps({"url": "http://127.0.0.1:9/never-called", "secret": "s" * 32}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/webhooks", data=body, method="POST",
        headers={"Authorization": f"Bearer {os.environ['GRIDWATCH_ADMIN_TOKEN']}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201


@pytest.mark.parametrize("stop", ["fast", "immediate"])  # an administrator's restart; a crash
async def test_a_postgresql_restart_is_one_line_per_component_each_way_and_loses_nothing(
    own_postgres: Postgres, mosquitto: Mosquitto, tmp_path: Path, stop: str
) -> None:
    pg = own_postgres
    url = pg.create_database("restart")
    prefix = f"t{os.getpid()}r{int(time.time() * 1000) % 100000}"
    topics = Topics(prefix)
    port, log = free_port(), tmp_path / "central.log"
    proc = _central(url, mosquitto, prefix, port, tmp_path, log)
    store = await RegistryStore.open(url)
    try:

        async def delivering() -> bool:
            assert proc.poll() is None, _tail(log)
            return "now delivers" in _tail(log)

        await _wait(delivering, "the centre did not start", log, within_s=90)
        _post_webhook(port)  # so that a webhook worker polls the database too

        before, during = batch("gw-r", [reading("d1", "level", 1.0, now_ms())]), None
        async with publisher(mosquitto.host, mosquitto.port) as client:
            await client.publish(topics.telemetry("gw-r"), before.model_dump_json(), qos=1)

            async def seen(msg_id: str) -> bool:
                try:
                    return msg_id in await store.seen({msg_id})
                except Exception:  # our own view of the database, while it is down
                    return False

            await _wait(lambda: seen(before.id), "the first batch was not ingested", log)

            await asyncio.to_thread(pg.stop, stop)
            during = batch("gw-r", [reading("d1", "level", 2.0, now_ms())])
            await client.publish(topics.telemetry("gw-r"), during.model_dump_json(), qos=1)

            async def noticed() -> bool:
                began, _ = _outages(log)
                # the lease checks its connection every 5 s: the outage lasts until it has
                return {"bridge: registry", "webhook delivery: registry database",
                        "delivery lease: database connection"} <= set(began)  # fmt: skip

            await _wait(noticed, "the outage was not noticed", log, within_s=30)
            await asyncio.to_thread(pg.start)
            await _wait(lambda: seen(during.id), "the batch sent meanwhile was lost", log)

            async def all_ended() -> bool:
                began, ended = _outages(log)
                return set(began) <= set(ended)

            await _wait(all_ended, "an outage was never said to end", log, within_s=30)
    finally:
        await store.close()
        proc.terminate()
        code = proc.wait(20)
    text = _tail(log) if code else log.read_text(errors="replace")
    assert code == 0, text
    assert "Traceback" not in text, text
    began, ended = _outages(log)
    assert {"bridge: registry", "webhook delivery: registry database",
            "delivery lease: database connection"} <= set(began), began  # fmt: skip
    # one outage: one line each way, per component and dependency
    assert set(began.values()) == {1} and began == ended, (began, ended)
    # every ERROR line is the start of an outage: nothing else was said at ERROR
    errors = [msg for level, _, msg in _log_lines(log) if level == "ERROR"]
    assert all(START.match(m) for m in errors), errors
    # the end says how long it lasted
    lengths = [float(m["s"]) for _, _, msg in _log_lines(log) if (m := END.match(msg))]
    assert lengths and all(0 <= s < 120 for s in lengths), lengths
