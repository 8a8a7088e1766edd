"""Chinese first, English second, where people meet gridwatch: an installer registering a gateway
and a device, a crew asking for health, a config with a mistake, the registry's problem answers,
an alert in words. Each in Chinese and in English, picked as people pick them: ``LANG`` for a
command (the suite's own GRIDWATCH_LANG=en removed), ``Accept-Language`` for the API.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_registry.http.auth import Role
from gridwatch.ground import i18n
from gridwatch.ground.alertwords import AlertFacts, alert_text, alert_texts, platform_alert
from gridwatch.ground.contract import PlatformAlert
from tests._ops_helpers import Registry, registry, smoke

ROOT = Path(__file__).resolve().parent.parent
ZH = {"LANG": "zh_CN.UTF-8"}
EN = {"LANG": "en_US.UTF-8"}


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def gridwatch(locale: dict[str, str], *argv: str, token: str | None = None) -> Ran:
    """``gridwatch ARGV`` as its own process, in the locale ``locale`` alone."""
    drop = ("GRIDWATCH_LANG", "LC_ALL", "LC_MESSAGES", "LANG", "GRIDWATCH_TOKEN", "GRIDWATCH_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(locale, PYTHONPATH=str(ROOT))
    if token is not None:
        env["GRIDWATCH_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridwatch.top.cli", *argv, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    ran = Ran(proc.returncode or 0, out.decode(), err.decode())
    assert "Traceback" not in ran.out + ran.err, ran
    return ran


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[Registry]:
    async with registry(tmp_path) as r:
        yield r


BUS = "type=modbus_tcp,id=cabinet,host=10.0.0.5,port=502"


async def test_an_installer_registers_a_gateway_and_a_device_in_chinese(reg: Registry) -> None:
    token = reg.tokens[Role.INSTALLER]
    gw = await gridwatch(ZH, "gateway", "add", "gw1", "--bus", BUS, "--url", reg.url, token=token)
    assert gw.code == 0, gw
    assert "MQTT 用户名：" in gw.out and "MQTT 密码：" in gw.out and "仅显示一次" in gw.out, gw
    assert "设备 0" in gw.out and "password" not in gw.out, gw
    dev = await gridwatch(ZH, "device", "add", "gw1", "wl-1", "--profile",
                          "water-level-ultrasonic", "--bus", "cabinet", "--unit-id", "1",
                          "--url", reg.url, token=token)  # fmt: skip
    assert dev.code == 0 and dev.out.startswith("gw1:wl-1"), dev
    assert "新接入" in dev.out, dev  # the device's state, in words
    # the registry's refusal comes back in Chinese: the CLI asked for it (Accept-Language)
    again = await gridwatch(ZH, "device", "add", "gw1", "wl-1", "--profile",
                            "water-level-ultrasonic", "--bus", "cabinet", "--unit-id", "1",
                            "--url", reg.url, token=token)  # fmt: skip
    assert again.code == 4 and "被拒绝（409 冲突）" in again.err, again
    missing = await gridwatch(ZH, "gateway", "show", "gw-nope", "--url", reg.url, token=token)
    assert missing.code == 1 and "未找到（404 未找到）：未找到网关 'gw-nope'" in missing.err, (
        missing
    )
    no_token = await gridwatch(ZH, "gateway", "list", "--url", reg.url)
    assert no_token.code == 4 and "没有 API 令牌：请设置 GRIDWATCH_TOKEN" in no_token.err, no_token


async def test_the_same_installer_in_english(reg: Registry) -> None:
    token = reg.tokens[Role.INSTALLER]
    gw = await gridwatch(EN, "gateway", "add", "gw1", "--bus", BUS, "--url", reg.url, token=token)
    assert gw.code == 0 and "MQTT password:" in gw.out and "密码" not in gw.out, gw
    missing = await gridwatch(EN, "gateway", "show", "gw-nope", "--url", reg.url, token=token)
    assert missing.code == 1 and "not found (404 Not found): no gateway 'gw-nope'" in missing.err


async def test_a_crew_reads_health_in_chinese_and_in_english(reg: Registry) -> None:
    token = reg.tokens[Role.MAINTENANCE]
    zh = await gridwatch(ZH, "health", "--url", reg.url, token=token)
    assert zh.code == 0 and "正常：0 台设备中 0 台异常；0 个网关中 0 个异常" in zh.out, zh
    en = await gridwatch(EN, "health", "--url", reg.url, token=token)
    assert en.code == 0 and "healthy: 0 of 0 devices unhealthy; 0 of 0 gateways" in en.out, en
    status, _ = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER,
                               {"id": "gw1", "location": {"district": "310104", "grid": "G1"}})  # fmt: skip
    assert status == 201
    zh = await gridwatch(ZH, "health", "--url", reg.url, token=token)
    assert zh.code == 1 and "网关 gw1：从未连接：网关 gw1 从未连接" in zh.out, zh
    assert "1 个问题：0 台设备中 0 台异常；1 个网关中 1 个异常" in zh.out, zh
    nothing = await gridwatch(ZH, "health", "--district", "310105", "--url", reg.url, token=token)
    assert nothing.code == 1 and "没有符合 区 '310105' 的对象（区：未登记）" in nothing.err, nothing


@pytest.mark.parametrize(
    ("locale", "words"),
    [
        (ZH, "gw.yaml:6: mqtt -> port: 应为有效的整数，无法将文字解析为整数（值为 'abc'）"),
        (EN, "gw.yaml:6: mqtt -> port: Input should be a valid integer, unable to parse string "
             "as an integer (got 'abc')"),
        ({"LANG": "C.UTF-8"}, "应为有效的整数"),  # a C locale names no language: Chinese
        ({**ZH, "GRIDWATCH_LANG": "en"}, "Input should be a valid integer"),  # gridwatch's own
        ({**EN, "LC_ALL": "zh_CN.UTF-8"}, "应为有效的整数"),  # LC_ALL before LANG
    ],
)  # fmt: skip
async def test_a_config_mistake_in_the_language_of_the_locale(
    tmp_path: Path, locale: dict[str, str], words: str
) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("version: 1\ngateway:\n  id: gw1\nmqtt:\n  host: 127.0.0.1\n  port: abc\n")
    ran = await gridwatch(locale, "config", "check", str(bad))
    assert ran.code == 1 and words in ran.out and str(tmp_path) in ran.out, ran


async def test_lang_option_outranks_the_locale() -> None:
    zh = await gridwatch(ZH, "probe", "modbus", "--count", "0")
    assert zh.code == 2 and "--table holding 时 --count 须为 1..125" in zh.err, zh
    en = await gridwatch(ZH, "--lang", "en", "probe", "modbus", "--count", "0")
    assert en.code == 2 and "--count must be 1..125 for --table holding" in en.err, en
    helped = await gridwatch(EN, "--lang=zh_CN", "health", "--help")
    assert helped.code == 0 and "同时列出正常的设备" in helped.out, helped


# ---- the API's problems ------------------------------------------------------------------------


async def _problem(reg: Registry, method: str, path: str, body: object = None,
                   lang: str | None = None) -> tuple[int, dict[str, object], str]:  # fmt: skip
    headers = reg.auth(Role.INSTALLER)
    if lang is not None:
        headers["Accept-Language"] = lang
    async with reg.http.request(method, reg.url + path, json=body, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Content-Language", "")


async def test_a_404_problem_in_both_languages(reg: Registry) -> None:
    status, zh, said = await _problem(reg, "GET", "/api/v1/gateways/nope", lang="zh-CN,zh;q=0.9")
    assert (status, zh["title"], zh["detail"], said) == (
        404,
        "未找到",
        "未找到网关 'nope'",
        "zh-CN",
    )
    status, en, said = await _problem(reg, "GET", "/api/v1/gateways/nope", lang="en-US,en;q=0.9")
    assert (status, en["title"], en["detail"], said) == (
        404,
        "Not found",
        "no gateway 'nope'",
        "en",
    )
    assert zh["type"] == en["type"] == "urn:gridwatch:problem:not-found"  # the same for machines
    # no such route at all: aiohttp's own 404, in words too
    _, route, _ = await _problem(reg, "GET", "/api/v1/nothing-here", lang="zh-CN")
    assert route["title"] == "未找到" and route["type"] == "urn:gridwatch:problem:not-found"


async def test_a_422_problem_in_both_languages(reg: Registry) -> None:
    body = {"gateway": "gw1", "id": "wl-1", "bus": "cabinet", "unit_id": "one"}
    _, zh, _ = await _problem(reg, "POST", "/api/v1/devices", body, lang="zh-CN")
    _, en, _ = await _problem(reg, "POST", "/api/v1/devices", body, lang="en")
    assert (zh["status"], zh["title"], en["title"]) == (422, "请求无效", "Invalid request")
    assert str(zh["detail"]).startswith("请求正文无效：") and "缺少必填字段" in str(zh["detail"])
    assert str(en["detail"]).startswith("the body is invalid:") and "Field required" in str(
        en["detail"]
    )
    zh_errors, en_errors = zh["errors"], en["errors"]
    assert isinstance(zh_errors, list) and isinstance(en_errors, list)
    # the fields are the API's names in every language; the sentences are the reader's
    assert [e["loc"] for e in zh_errors] == [e["loc"] for e in en_errors] != []
    assert {e["msg"] for e in zh_errors} & {"缺少必填字段", "应为有效的整数，无法将文字解析为整数"}


async def test_without_accept_language_the_server_speaks_its_own(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, en, said = await _problem(reg, "GET", "/api/v1/gateways/nope")
    assert (en["title"], said) == ("Not found", "en")  # this suite's GRIDWATCH_LANG=en
    for var in ("GRIDWATCH_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    _, zh, said = await _problem(reg, "GET", "/api/v1/gateways/nope")
    assert (zh["title"], said) == ("未找到", "zh-CN")  # a server with no language: Chinese
    _, fr, _ = await _problem(reg, "GET", "/api/v1/gateways/nope", lang="fr-FR")
    assert fr["title"] == "未找到"  # a language we do not ship: Chinese, not the server's


async def test_concurrent_requests_keep_their_own_language(reg: Registry) -> None:
    """The language is the request's (a context variable of its task), never the last one set."""
    langs = ["zh-CN", "en"] * 10
    got = await asyncio.gather(
        *(
            _problem(reg, "GET", f"/api/v1/gateways/nope-{i}", lang=lang)
            for i, lang in enumerate(langs)
        )
    )
    titles = [p["title"] for _, p, _ in got]
    assert titles == ["未找到", "Not found"] * 10


# ---- an alert in words (pure) ------------------------------------------------------------------

FLOOD = AlertFacts(
    state="raised", category="0406", severity="critical", device="wl-01", point="level",
    value=0.35, unit="m", threshold=0.3, message="Water level above warning line",
    place="漕溪北路", name={"zh": "道路积水", "en": "road waterlogging"},
)  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "lang", "text"),
    [
        (FLOOD, "zh_CN", "告警发生【严重】道路积水（0406）：wl-01 level = 0.35 m（阈值 0.3 m），"
                         "漕溪北路：Water level above warning line"),
        (FLOOD, "en", "ALERT RAISED [critical] road waterlogging (0406): wl-01 level = 0.35 m "
                      "(threshold 0.3 m), 漕溪北路: Water level above warning line"),
        (AlertFacts(state="cleared", category="0406", severity="major", device="wl-01",
                    point="level", value=0.1, unit="m"), "zh_CN",
         "告警解除【重要】0406：wl-01 level = 0.1 m"),
        (AlertFacts(state="raised", category="2201", severity="minor", device="sd-1",
                    point="alarm", value=True), "zh_CN", "告警发生【一般】2201：sd-1 alarm = 开"),
        (AlertFacts(state="raised", category="0101", severity="info", device="mh-1", point="",
                    value=None), "en", "ALERT RAISED [info] 0101: mh-1 = no value"),
    ],
)  # fmt: skip
def test_an_alert_in_words(facts: AlertFacts, lang: i18n.Lang, text: str) -> None:
    assert alert_text(facts, lang) == text


def test_an_alert_in_every_language_chinese_first() -> None:
    texts = alert_texts(FLOOD)
    assert list(texts) == ["zh_CN", "en"] and texts["zh_CN"].startswith("告警发生")


def test_the_platform_alert_carries_the_sentence_in_every_language() -> None:
    """What the bridge publishes and the centre delivers (webhooks, SSE): the rule's own
    ``message`` as it was, and ``text`` in Chinese and English, through the wire contract."""
    sent = platform_alert(smoke("a-1"), name={"zh": "烟感报警", "en": "smoke alarm"})
    got = PlatformAlert.model_validate_json(sent.model_dump_json())
    assert got.message == "Smoke detected"
    assert got.text == {
        "zh_CN": "告警发生【严重】烟感报警（2201）：sd-001 obscuration = 5.2 %/m"
        "（阈值 4 %/m），310104014024001：Smoke detected",
        "en": "ALERT RAISED [critical] smoke alarm (2201): sd-001 obscuration = 5.2 %/m "
        "(threshold 4 %/m), 310104014024001: Smoke detected",
    }
