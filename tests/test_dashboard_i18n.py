"""The dashboard's words (device_registry/http/static, gridwatch/locale/*/LC_MESSAGES/dashboard.po):
every text the page shows has its Chinese, the catalogue keeps up with the page, the compiled
catalogue is the one edited, and the registry serves the page the language its reader asks for,
Chinese when nothing else is asked.

The texts are found as ``make i18n`` finds them: babel's JavaScript extractor for t() and N_()
in the scripts, dashboard.extract_html for index.html's data-i18n attributes
(gridwatch/locale/dashboard.cfg)."""

from __future__ import annotations

import gettext
import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from tests._ops_helpers import registry

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "device_registry" / "http" / "static"
LOCALES = ROOT / "gridwatch" / "locale"
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def page_texts() -> dict[str, str]:
    """Each English text the page's scripts and index.html use -> where (file:line)."""
    with open(LOCALES / "dashboard.cfg") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found = extract_from_dir(str(STATIC), method_map, options_map,
                             keywords={"t": None, "N_": None}, comment_tags=())  # fmt: skip
    return {msg: f"{name}:{line}" for name, line, msg, _c, _ctx in found if isinstance(msg, str)}


def catalogue(lang: str) -> Catalog:
    with open(LOCALES / lang / "LC_MESSAGES" / "dashboard.po", "rb") as fp:
        return read_po(fp)


def untranslated(used: dict[str, str], words: Catalog) -> list[str]:
    """The texts used without words in the catalogue, each with where it is used."""
    return sorted(f"{where}: {msg!r}" for msg, where in used.items()
                  if not (msg in words and words[msg].string))  # fmt: skip


def test_the_check_names_a_text_without_chinese() -> None:
    """The check below fails the build on a text the page uses without its Chinese."""
    words = Catalog(locale="zh_CN")
    words.add("Dispatch", "派遣")
    words.add("Urge", "")
    used = {"Dispatch": "app.js:1", "Urge": "app.js:2", "Close the case": "app.js:3"}
    assert untranslated(used, words) == ["app.js:2: 'Urge'", "app.js:3: 'Close the case'"]


def test_every_text_of_the_page_has_chinese() -> None:
    used = page_texts()
    # the extraction finds the scripts' texts, tables' (N_) and the page's (data-i18n) alike
    assert {"Dispatch", "reported", "Log in", "1 case", "{n} cases"} <= used.keys()
    assert untranslated(used, catalogue("zh_CN")) == []


def test_every_marked_text_is_extracted() -> None:
    """babel's JavaScript extractor skips a marked text inside another's arguments
    (``t("{a}", {a: N_("x")})``): such a text would have no Chinese and no test would say so."""
    scripts = [p for p in STATIC.glob("*.js") if p.name not in ("leaflet.js", "trusted.js")]
    marked = {m for p in scripts for m in re.findall(r'\b(?:t|N_)\("([^"]*)"', p.read_text())}
    assert sorted(marked - set(page_texts())) == []


def test_the_catalogues_keep_up_with_the_page() -> None:
    """No text the page no longer uses stays behind (``make i18n`` drops it), in either
    language; English shows the source texts themselves."""
    used = set(page_texts())
    for lang in ("zh_CN", "en"):
        have = {m.id for m in catalogue(lang) if m.id}
        assert have == used, (lang, sorted(have ^ used))
    assert all(not m.string for m in catalogue("en") if m.id)


def test_translations_keep_every_placeholder() -> None:
    wrong = [(m.id, m.string) for m in catalogue("zh_CN") if m.id
             and sorted(PLACEHOLDER.findall(m.id)) != sorted(PLACEHOLDER.findall(m.string))]  # fmt: skip
    assert wrong == []


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_the_compiled_catalogue_is_the_edited_one(lang: str) -> None:
    with open(LOCALES / lang / "LC_MESSAGES" / "dashboard.mo", "rb") as fp:
        compiled = {k: v for k, v in gettext.GNUTranslations(fp)._catalog.items() if k}  # type: ignore[attr-defined]
    edited = {m.id: m.string for m in catalogue(lang) if m.id and m.string}
    assert compiled == edited, "run `make i18n`"


@pytest.mark.parametrize(
    ("accept", "picked", "lang", "word"),
    [
        (None, None, "zh-CN", "案件"),  # nothing asked: Chinese
        ("zh-CN,zh;q=0.9", None, "zh-CN", "案件"),
        ("en-US,en;q=0.9", None, "en", None),
        ("fr-FR,fr;q=0.9", None, "zh-CN", "案件"),  # nothing we have: Chinese first
        ("en-US,en;q=0.9", "zh-CN", "zh-CN", "案件"),  # the toggle wins over the browser
        ("zh-CN", "en", "en", None),
    ],
)
async def test_the_page_gets_its_readers_language(
    tmp_path: Path, accept: str | None, picked: str | None, lang: str, word: str | None
) -> None:
    headers = {"Accept-Language": accept} if accept else {}
    query = f"?lang={picked}" if picked else ""
    # public, as the page is: the login form is in the reader's language too
    async with (
        registry(tmp_path) as reg,
        reg.http.get(f"{reg.url}/dashboard/messages{query}", headers=headers) as r,
    ):
        assert r.status == 200
        body = await r.json()
    assert body["lang"] == lang
    assert body["languages"] == [
        {"code": "zh-CN", "name": "中文"},
        {"code": "en", "name": "English"},
    ]
    assert body["messages"].get("Cases") == word
