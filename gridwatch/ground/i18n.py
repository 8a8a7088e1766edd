"""Chinese first, English second: which language a person reads, and the words in it.

Two languages: ``zh_CN`` (the default: the district's crews, installers and operators read Chinese
first) and ``en``. The source strings are English and marked with ``_()`` (or ``N_()`` where a
table is built at import time and translated when used), so ``pybabel extract`` finds them; the
words live in babel message catalogues, never in code::

    gridwatch/locale/<lang>/LC_MESSAGES/<domain>.po   the translations, edited by people
    gridwatch/locale/<lang>/LC_MESSAGES/<domain>.mo   compiled from them by ``make i18n``

Both are committed and shipped as package data; at run time the standard library's ``gettext``
reads the ``.mo`` files. Babel is a tool of the checkout (``make i18n`` extracts, updates and
compiles; tests/test_i18n.py fails when a catalogue is missing a translation or is older than the
code), not a dependency of the installs: its locale data would double an edge gateway's 21 MB.

Who picks the language:

- a request to the API: its ``Accept-Language`` header; without one, the server's own language;
- a command (and a server's default): ``--lang``, else the first of ``GRIDWATCH_LANG``,
  ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` that is set. A ``C`` or ``POSIX`` locale names no language
  (it is what a service, a container or cron gets), so it reads as unset: Chinese.
  ``GRIDWATCH_LANG`` comes first so that one box (a test run, a service) can speak English without
  asking the system for an ``en_US`` locale it may not have installed.

Any Chinese (``zh``, ``zh-TW``, ``zh_HK``) gets ``zh_CN``, the only Chinese shipped; any English
gets ``en``; anything else, or nothing, gets ``zh_CN``.

Logs stay English: they are read by whoever maintains the software, and searched for.

The dashboard keeps its own strings in its own domain (``domain=``), served to the browser by
``catalog()``; catalogue item names come from the catalogue data (``name.zh`` / ``name.en``).
"""

from __future__ import annotations

import gettext as _gettext
import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from functools import cache
from importlib.resources import files
from typing import Any, Final, Literal

Lang = Literal["zh_CN", "en"]
LANGS: Final[tuple[Lang, ...]] = ("zh_CN", "en")
DEFAULT: Final[Lang] = "zh_CN"
DOMAIN: Final = "gridwatch"
"""The domain of the CLI's, the API's, the alerts' and the config checker's messages."""
ENV_VARS: Final = ("GRIDWATCH_LANG", "LC_ALL", "LC_MESSAGES", "LANG")
"""Where a process finds its language, first set wins (POSIX's order, gridwatch's own first)."""

# a language tag's first part -> the language shipped for it
_PRIMARY: Final[dict[str, Lang]] = {"zh": "zh_CN", "en": "en"}
# locales that name no language: what a service, a container or a CI job gets by default
_NO_LANGUAGE: Final = frozenset({"c", "posix"})


def _wanted(value: str) -> list[tuple[float, str]]:
    """The tags of an Accept-Language header or a locale value, each with its weight."""
    out = []
    for item in value.split(","):
        tag, _sep, params = item.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _eq, number = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0  # a weight nobody can read: not a wish to honour
        # zh_CN.UTF-8@modifier -> zh_cn; zh-Hans-CN -> zh-hans-cn
        tag = tag.strip().split(".")[0].split("@")[0].lower()
        if tag and weight > 0:
            out.append((weight, tag))
    return out


def _pick(value: str | None) -> Lang | None:
    """The language a header or locale value asks for, or None when it names none we ship."""
    # a stable sort by weight alone: equal weights keep the order the client gave
    for _weight, tag in sorted(_wanted(value or ""), key=lambda wt: -wt[0]):
        if tag == "*":
            return DEFAULT
        primary = tag.replace("_", "-").split("-")[0]
        if primary in _PRIMARY:
            return _PRIMARY[primary]
    return None


def negotiate(header_or_env: str | None) -> Lang:
    """The language to answer in, from an ``Accept-Language`` header (``zh-CN,zh;q=0.9,en;q=0.8``)
    or a locale value (``en_US.UTF-8``); ``zh_CN`` when it names none we ship, or nothing."""
    return _pick(header_or_env) or DEFAULT


def from_env(environ: Mapping[str, str] | None = None) -> Lang:
    """A process's language: the first of ``ENV_VARS`` that is set decides (a ``C`` locale names
    no language, so it decides Chinese, the default)."""
    env = os.environ if environ is None else environ
    for var in ENV_VARS:
        value = env.get(var, "").strip()
        if value:
            if value.split(".")[0].lower() in _NO_LANGUAGE:
                return DEFAULT
            return negotiate(value)
    return DEFAULT


@cache
def translations(lang: Lang, domain: str = DOMAIN) -> _gettext.NullTranslations:
    """The compiled catalogue of ``domain`` in ``lang`` (package data); English falls back to
    the source strings where its catalogue says nothing."""
    if lang not in LANGS:
        raise ValueError(f"no language {lang!r}: gridwatch speaks {', '.join(LANGS)}")
    mo = files("gridwatch").joinpath("locale", lang, "LC_MESSAGES", f"{domain}.mo")
    try:
        with mo.open("rb") as fp:
            return _gettext.GNUTranslations(fp)
    except FileNotFoundError:
        if lang == "en":  # the source strings are English: a missing catalogue is no loss
            return _gettext.NullTranslations()
        raise FileNotFoundError(
            f"gridwatch's {lang} catalogue {domain}.mo is missing: run `make i18n`, or reinstall"
        ) from None


def translator(lang: Lang, domain: str = DOMAIN) -> Callable[[str], str]:
    """``_`` for one language: the message's words in ``lang``, or the message itself."""
    return translations(lang, domain).gettext


def catalog(lang: Lang, domain: str = DOMAIN) -> dict[str, str]:
    """Every translated message of ``domain`` in ``lang`` (source -> words), e.g. to hand to a
    browser as JSON."""
    found = translations(lang, domain)
    messages: dict[str, str] = getattr(found, "_catalog", {})
    # the "" entry is the catalogue's header, not a message; plural entries are keyed by tuples
    return {k: v for k, v in messages.items() if isinstance(k, str) and k}


# The language spoken now: a command sets it once for its process; the API's outermost middleware
# sets it for each request from its Accept-Language, and asyncio gives every request's task its
# own copy of the context, so code deep in a request (a NotFound raised by a store) speaks the
# request's language without being handed it. None: the environment's (``from_env``).
_current: ContextVar[Lang | None] = ContextVar("gridwatch_lang", default=None)


def use(lang: Lang | None) -> None:
    """Speak ``lang`` from now on in this context (a command's process, a request's task);
    None: whatever the environment picks."""
    _current.set(lang)


def current() -> Lang:
    """The language spoken now: set by ``use()``, else picked from the environment."""
    return _current.get() or from_env()


def _(message: str) -> str:
    """``message`` in the language spoken now (``current()``)."""
    return translator(current())(message)


def N_(message: str) -> str:
    """Marks ``message`` for extraction without translating it: for tables built at import, whose
    entries are translated with ``_()`` where they are shown."""
    return message


# pydantic's error type -> its English message with the error's context as placeholders: these are
# what a person sees of a config file or a request body that a model refused
_VALIDATION = {
    "missing": N_("Field required"),
    "extra_forbidden": N_("Extra inputs are not permitted"),
    "string_type": N_("Input should be a valid string"),
    "int_type": N_("Input should be a valid integer"),
    "int_parsing": N_("Input should be a valid integer, unable to parse string as an integer"),
    "int_from_float": N_("Input should be a valid integer, got a number with a fractional part"),
    "float_type": N_("Input should be a valid number"),
    "float_parsing": N_("Input should be a valid number, unable to parse string as a number"),
    "finite_number": N_("Input should be a finite number"),
    "bool_type": N_("Input should be a valid boolean"),
    "bool_parsing": N_("Input should be a valid boolean, unable to interpret input"),
    "dict_type": N_("Input should be a valid dictionary"),
    "model_type": N_("Input should be a valid dictionary or instance of {class_name}"),
    "list_type": N_("Input should be a valid list"),
    "literal_error": N_("Input should be {expected}"),
    "enum": N_("Input should be {expected}"),
    "greater_than": N_("Input should be greater than {gt}"),
    "greater_than_equal": N_("Input should be greater than or equal to {ge}"),
    "less_than": N_("Input should be less than {lt}"),
    "less_than_equal": N_("Input should be less than or equal to {le}"),
    "string_too_short": N_("String should have at least {min_length} characters"),
    "string_too_long": N_("String should have at most {max_length} characters"),
    "string_pattern_mismatch": N_("String should match pattern '{pattern}'"),
    "too_short": N_("{field_type} should have at least {min_length} items after validation, "
                    "not {actual_length}"),
    "too_long": N_("{field_type} should have at most {max_length} items after validation, "
                   "not {actual_length}"),
}  # fmt: skip
_VALUE_ERROR = ("Value error, ", "Assertion failed, ")


def validation_message(error: Mapping[str, Any]) -> str:
    """One pydantic error's message (an item of ``ValidationError.errors()``) in the language
    spoken now. English keeps pydantic's own words; a validator's message (``Value error, ...``)
    is translated when its raise site marked it with ``N_``, else said as written; pydantic's
    ``Value error,`` prefix is English jargon, left out of every other language."""
    msg = str(error.get("msg", ""))
    if current() == "en":
        return msg
    kind, ctx = str(error.get("type", "")), error.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        for prefix in _VALUE_ERROR:
            if msg.startswith(prefix):
                return _(msg[len(prefix) :])
        return msg
    if kind not in _VALIDATION:
        return msg
    try:
        return _(_VALIDATION[kind]).format(**ctx)
    except (KeyError, IndexError, ValueError):  # a context this pydantic names otherwise
        return msg


__all__ = [
    "DEFAULT",
    "DOMAIN",
    "ENV_VARS",
    "LANGS",
    "N_",
    "Lang",
    "_",
    "catalog",
    "current",
    "from_env",
    "negotiate",
    "translations",
    "translator",
    "use",
    "validation_message",
]
