"""What the case workflow and the registry say to a person comes in the request's language
(Accept-Language), the platform's alert sentence names the catalogue category, and the map
names the places the dashboard heads by code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from device_registry.alerts.store import AlertFilter, OpsStore
from device_registry.db.tables import PlatformEvent
from device_registry.http.auth import Role
from gridwatch.ground.catalogue import default_catalogue_dir, load_catalogue
from tests._ops_helpers import Registry, parked, registry
from tests.test_lifecycle_store import (  # noqa: F401  (ops: the fixture)
    DEPT,
    FOR_MS,
    PONDING,
    T0,
    ingest,
    ops,
    ponding,
)


async def _ask(reg: Registry, path: str, lang: str, body: Any) -> tuple[int, dict[str, Any]]:
    headers = {**reg.auth(Role.OPERATOR), "Accept-Language": lang}
    async with reg.http.post(reg.url + path, json=body, headers=headers) as r:
        return r.status, await r.json()


REFUSALS = [
    ("zh-CN", "案件处于“上报”阶段，不能报告处置"),
    ("en", "cannot dispose a case that is reported"),
]


@pytest.mark.parametrize(("lang", "said"), REFUSALS)
async def test_a_refused_step_is_said_in_the_requests_language(
    tmp_path: Path, lang: str, said: str
) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(parked("a-1"))
        status, body = await _ask(reg, "/api/v1/alerts/a-1/dispose", lang, {"note": ""})
        assert status == 409, body
        assert body["detail"] == said, body


async def test_the_platform_alert_names_the_category(tmp_path: Path) -> None:
    name = load_catalogue(default_catalogue_dir()).lookup("050501", "310104")
    assert name is not None
    async with registry(tmp_path) as reg:
        await reg.ingest(parked("a-1"))
        async with reg.store.transaction() as s:
            rows = list(await s.scalars(select(PlatformEvent).where(PlatformEvent.kind == "alert")))
        text = rows[0].payload["text"]
        assert name.name.zh in text["zh_CN"] and name.name.en in text["en"], text


async def test_the_map_names_the_district_and_its_streets(tmp_path: Path) -> None:
    """The dashboard heads a district's devices with its name (徐汇区), not its code."""
    async with registry(tmp_path) as reg:
        status, body = await reg.call("GET", "/api/v1/map", Role.OPERATOR)
    assert status == 200, body
    places = body["places"]
    assert places["310104"] == {"zh": "徐汇区", "en": "Xuhui District"}, places["310104"]
    assert places["310104003"]["zh"] == "天平路街道", places["310104003"]


async def test_the_centres_own_notes_are_kept_and_sent_in_chinese_too(ops: OpsStore) -> None:  # noqa: F811
    """Notes are data: the centre's are stored and sent in English (note, as before) and in
    Chinese (note_zh), whatever language the request that caused them spoke."""
    await ingest(ops, ponding("a1", "wl-1", T0))
    await ops.tick(T0 + FOR_MS)
    _, steps = await ops.alert("a1", T0 + FOR_MS)
    by = {st.action: st for st in steps}
    assert by["file"].note.startswith("filed by the centre: "), by["file"]
    assert by["file"].note_zh.startswith("中心自动立案：" + PONDING.filing.zh), by["file"]
    assert by["dispatch"].note.startswith("dispatched by the centre to "), by["dispatch"]
    assert by["dispatch"].note_zh.startswith("中心派遣至" + DEPT["zh"]), by["dispatch"]
    [view] = await ops.alerts(AlertFilter(), now=T0 + FOR_MS)
    assert view.notes_zh["file"] == by["file"].note_zh and view.notes["file"] == by["file"].note
    async with ops.store.transaction() as s:
        q = select(PlatformEvent).where(PlatformEvent.kind == "lifecycle")
        sent = {e.payload["action"]: e.payload for e in await s.scalars(q)}
    assert sent["file"]["note_zh"] == by["file"].note_zh, sent["file"]
    assert sent["file"]["note"] == by["file"].note
