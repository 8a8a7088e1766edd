"""Session fixtures: one real mosquitto, VictoriaMetrics and PostgreSQL per test session.

Tests isolate themselves by topic prefix and temp dir, not by private brokers, so they stay fast;
a test that stops a service (fault injection) starts its own with the classes in services.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cloud_bridge import SqliteSink
from device_registry import RegistryStore
from gridwatch.ground import i18n
from tests.services import Mosquitto, Postgres, Victoria

# gridwatch speaks Chinese first (gridwatch/ground/i18n.py); the suite's assertions read English,
# so every command and server it starts, in-process or as a child, speaks English unless a test
# asks otherwise (tests/test_i18n*.py do, with LANG and Accept-Language). GRIDWATCH_LANG and not
# LANG: initdb and Chromium, which inherit it, would refuse an en_US locale the machine lacks.
os.environ["GRIDWATCH_LANG"] = "en"


@pytest.fixture(autouse=True)
def _language_of_the_environment() -> Iterator[None]:
    """A command run in-process with ``--lang`` does not leave its language to the next test."""
    yield
    i18n.use(None)


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victoria]:
    vm = Victoria(tmp_path_factory.mktemp("victoria")).start()
    yield vm
    vm.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    # not under pytest's tmp dir: that is private to root, and the server runs as `postgres`
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-pg-"))
    pg = Postgres(workdir).start()
    yield pg
    pg.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of one test's own, to stop and start under the centre (the session's is
    shared by every test)."""
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-pg-own-"))
    pg = Postgres(workdir).start()
    try:
        yield pg
    finally:
        if (pg.data / "postmaster.pid").exists():
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgres"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry database, once as a SQLite file and once on PostgreSQL: the registry
    must give the same answers on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    url: str = request.getfixturevalue("pg_url")
    return url


ADMIN_TOKEN = "test-admin-token"
"""Every registry a test starts (in-process or as a child process) knows this admin token."""


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GRIDWATCH_ADMIN_TOKEN", ADMIN_TOKEN)
    return ADMIN_TOKEN


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """The root logger as it was before the test: a CLI run inside a test (``main()``) sets a
    handler on that test's captured stderr, which is closed when the test ends; left in place,
    the next test's log lines fail with "I/O operation on closed file" in its own stderr."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if type(h) is logging.StreamHandler and h not in before:  # not pytest's own
            root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RegistryStore]:
    """A fresh registry on a SQLite file (a module that needs PostgreSQL or both overrides it)."""
    s = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    yield s
    await s.close()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SqliteSink]:
    """The embedded telemetry history, kept an hour."""
    s = await SqliteSink.open(tmp_path / "telemetry.db", retention_hours=1)
    yield s
    await s.close()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests on one broker never see each other."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
