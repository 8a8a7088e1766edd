"""What the case workflow and the registry say to a person comes in the request's language
(Accept-Language), the platform's alert sentence names the catalogue category, and the map
names the places the dashboard heads by code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from device_registry.db.tables import PlatformEvent
from device_registry.http.auth import Role
from gridwatch.ground.catalogue import default_catalogue_dir, load_catalogue
from tests._ops_helpers import Registry, parked, registry


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
