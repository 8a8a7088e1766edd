"""Chinese first, English second (gridwatch/ground/i18n.py): who picks the language, and message
catalogues that keep up with the code.

The catalogue tests extract the marked strings from the code, as ``make i18n`` does, and fail when
a message has no Chinese, when a catalogue is older than the code, when a translation drops or
renames a placeholder, or when a compiled ``.mo`` is older than its ``.po``.
"""

from __future__ import annotations

import ast
import gettext
import string
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

from gridwatch.ground import i18n

ROOT = Path(__file__).resolve().parent.parent
CODE = ("gridwatch", "device_registry", "edge", "drivers", "cloud_bridge")  # Makefile's I18N_CODE
LOCALES = ROOT / "gridwatch" / "locale"


@pytest.mark.parametrize(
    ("value", "lang"),
    [
        # Accept-Language headers, as browsers send them
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"),
        ("en-US,en;q=0.9", "en"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("zh-TW,zh;q=0.9", "zh_CN"),  # the only Chinese shipped
        ("zh-Hant-HK", "zh_CN"),
        ("fr-FR,fr;q=0.9,en;q=0.5", "en"),  # French first, but English is the one we have
        ("fr-FR,de;q=0.5", "zh_CN"),  # nothing we have: the default
        ("en;q=0.2,zh;q=0.8", "zh_CN"),  # by weight, not by order
        ("zh;q=0,en", "en"),  # q=0: not acceptable
        ("en;q=zero,zh", "zh_CN"),  # an unreadable weight is no wish
        ("*", "zh_CN"),
        ("EN", "en"),
        ("", "zh_CN"),
        (None, "zh_CN"),
        # locale values, as LANG and LC_ALL carry them
        ("en_US.UTF-8", "en"),
        ("en_GB", "en"),
        ("zh_CN.UTF-8", "zh_CN"),
        ("zh_CN.GB18030", "zh_CN"),
        ("zh_TW.UTF-8@radical", "zh_CN"),
        ("de_DE.UTF-8", "zh_CN"),
        ("C", "zh_CN"),
    ],
)
def test_negotiate(value: str | None, lang: str) -> None:
    assert i18n.negotiate(value) == lang


@pytest.mark.parametrize(
    ("env", "lang"),
    [
        ({}, "zh_CN"),  # nothing set: Chinese first
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
        ({"LANG": "C"}, "zh_CN"),  # a service's or a CI job's locale names no language
        ({"LANG": "C.UTF-8"}, "zh_CN"),
        ({"LANG": "POSIX"}, "zh_CN"),
        ({"LANG": ""}, "zh_CN"),
        ({"LANG": "zh_CN.UTF-8", "LC_MESSAGES": "en_US.UTF-8"}, "en"),  # POSIX's order
        ({"LANG": "zh_CN.UTF-8", "LC_ALL": "en_US.UTF-8"}, "en"),
        ({"LC_ALL": "zh_CN.UTF-8", "LC_MESSAGES": "en_US.UTF-8"}, "zh_CN"),
        ({"LC_ALL": "C", "LANG": "en_US.UTF-8"}, "zh_CN"),  # LC_ALL decides, and names none
        ({"LC_ALL": "", "LANG": "en_US.UTF-8"}, "en"),  # set but empty: not set
        ({"GRIDWATCH_LANG": "en", "LC_ALL": "zh_CN.UTF-8"}, "en"),  # gridwatch's own first
        ({"GRIDWATCH_LANG": "zh_CN", "LANG": "en_US.UTF-8"}, "zh_CN"),
    ],
)
def test_language_from_the_environment(env: dict[str, str], lang: str) -> None:
    assert i18n.from_env(env) == lang


def test_translator_speaks_both_and_falls_back_to_the_source() -> None:
    msg = '{command} needs the {extra} extra: pip install "gridwatch[{extras}]"'
    assert i18n.translator("en")(msg) == msg
    assert (
        i18n.translator("zh_CN")(msg)
        == '{command} 需要安装 {extra} 扩展：pip install "gridwatch[{extras}]"'
    )
    assert i18n.translator("zh_CN")("a sentence nobody marked") == "a sentence nobody marked"
    assert i18n.catalog("zh_CN")[msg].startswith("{command} 需要安装")
    with pytest.raises(ValueError, match="no language 'fr'"):
        i18n.translations("fr")  # type: ignore[arg-type]  # a caller's mistake, on purpose


def _extracted() -> dict[str, str]:
    """Every message marked in the code -> where (as ``make i18n`` extracts them)."""
    found: dict[str, str] = {}
    for folder in CODE:
        for file, line, message, _comments, _context in extract_from_dir(
            ROOT / folder, keywords=DEFAULT_KEYWORDS
        ):
            msgid = message[0] if isinstance(message, tuple) else message
            found.setdefault(msgid, f"{folder}/{file}:{line}")
    return found


def _po(lang: str, domain: str = i18n.DOMAIN) -> dict[str, str]:
    with (LOCALES / lang / "LC_MESSAGES" / f"{domain}.po").open("rb") as fp:
        catalogue = read_po(fp)
    # a fuzzy translation is a guess babel made: compiled catalogues leave it out, and so do we
    return {
        m.id: ("" if m.fuzzy else m.string)
        for m in catalogue
        if m.id and isinstance(m.id, str) and isinstance(m.string, str)
    }


def _fields(text: str) -> list[str]:
    """The ``{placeholders}`` of a message, with their conversion and format, sorted."""
    return sorted(
        f"{name}!{conv}:{spec}"
        for _lit, name, spec, conv in string.Formatter().parse(text)
        if name is not None
    )


def test_every_message_in_the_code_has_chinese() -> None:
    code, zh = _extracted(), _po("zh_CN")
    assert code, "no marked message found: is the extraction looking in the right place?"
    missing = [f"{where}: {msgid!r}" for msgid, where in code.items() if not zh.get(msgid)]
    assert not missing, "no Chinese for (run `make i18n`, then translate):\n" + "\n".join(missing)


@pytest.mark.parametrize("lang", i18n.LANGS)
def test_catalogues_are_up_to_date_with_the_code(lang: str) -> None:
    code, po = set(_extracted()), set(_po(lang))
    assert sorted(code - po) == [], f"{lang}: messages in the code, not in the .po: `make i18n`"
    assert sorted(po - code) == [], f"{lang}: messages no code uses any more: `make i18n`"


@pytest.mark.parametrize("lang", i18n.LANGS)
def test_translations_keep_the_placeholders(lang: str) -> None:
    wrong = [
        f"{msgid!r} -> {words!r}"
        for msgid, words in _po(lang).items()
        if words and _fields(msgid) != _fields(words)
    ]
    assert not wrong, "placeholders differ between message and translation:\n" + "\n".join(wrong)


@pytest.mark.parametrize("lang", i18n.LANGS)
def test_compiled_catalogues_match_their_po(lang: str) -> None:
    po = {k: v for k, v in _po(lang).items() if v}
    mo = LOCALES / lang / "LC_MESSAGES" / f"{i18n.DOMAIN}.mo"
    with mo.open("rb") as fp:
        compiled = gettext.GNUTranslations(fp)
    got = {k: v for k, v in getattr(compiled, "_catalog", {}).items() if isinstance(k, str) and k}
    assert got == po, f"{mo} is older than its .po: run `make i18n`"


def _marked_calls() -> list[str]:
    """Calls of ``_``/``N_`` whose message is built in place (an f-string, a concatenation, a
    ``.format()`` inside): extraction cannot see it, so it would never be translated. A name is
    fine: it holds a message marked with ``N_`` where its table was written."""
    built = (ast.JoinedStr, ast.BinOp, ast.Call)
    bad = []
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("_", "N_")
                    and (len(node.args) != 1 or isinstance(node.args[0], built))
                ):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_marked_messages_are_literal_strings() -> None:
    assert _marked_calls() == []
