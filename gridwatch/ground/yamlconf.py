"""Loading YAML into pydantic models with errors that point at the file, line and key path.

A bad file is reported like::

    firmware_configs/gateways/demo.yaml:14: devices -> 3 -> address: Input should be ... (got 'x')

Nothing is dropped silently: every error in the file is reported, not just the first.

The file, line and key path stay as they are; the sentence is in the language spoken now
(``gridwatch/ground/i18n.py``: a command's ``--lang`` or ``LANG``), pydantic's messages too::

    firmware_configs/gateways/demo.yaml:14: devices -> 3 -> address: 输入应为有效的整数 (值为 'x')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gridwatch.ground.i18n import _, validation_message

M = TypeVar("M", bound=BaseModel)
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    path: KeyPath
    message: str
    value: Any = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        keys = " -> ".join(str(p) for p in self.path) or _("(top level)")
        got = "" if self.value is None else _(" (got {value!r})").format(value=self.value)
        return f"{where}: {keys}: {self.message}{got}"


class ConfigError(Exception):
    """One or more problems in one configuration file."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            lines[(*path, k)] = key.start_mark.line + 1
            _walk(value, (*path, k), lines)
            # the value's own line is less useful than the key's for scalars
            lines[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


def line_map(text: str) -> dict[KeyPath, int]:
    """Key path -> 1-based line number of every key and list item in a YAML document."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return lines


def data_paths(data: Any, path: KeyPath = ()) -> dict[KeyPath, int]:
    """Key paths of a document that has no lines (JSON pushed over MQTT): each at line 0."""
    out: dict[KeyPath, int] = {path: 0}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(data_paths(v, (*path, k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(data_paths(v, (*path, i)))
    return out


def _nearest_line(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    try:
        data = yaml.safe_load(text)
        lines = line_map(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(
            [
                ConfigProblem(
                    file, line, (), _("not valid YAML: {problem}").format(problem=exc.problem)
                )
            ]
        ) from exc
    return data, lines


def validate(model: type[M], data: Any, file: str, lines: dict[KeyPath, int]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, file, lines)) from exc


def problems_from(
    exc: ValidationError, file: str, lines: dict[KeyPath, int]
) -> list[ConfigProblem]:
    """A pydantic error as problems located by key path (and line, where ``lines`` has one)."""
    out = []
    for err in exc.errors():
        loc: KeyPath = tuple(err["loc"])
        # a discriminated union adds its tag value as a location level; keep only real keys
        path = _real_path(loc, lines, keep_last=err["type"] == "missing")
        value = None if err["type"] == "missing" else err.get("input")
        if isinstance(value, dict | list):
            value = None
        said = validation_message(err)
        out.append(ConfigProblem(file, _nearest_line(lines, path), path, said, value))
    return out


def _real_path(loc: KeyPath, lines: dict[KeyPath, int], keep_last: bool) -> KeyPath:
    """The error's location as keys of the file (a missing key is kept: it is the point)."""
    path: KeyPath = ()
    for i, part in enumerate(loc):
        candidate = (*path, part)
        if candidate in lines or (keep_last and i == len(loc) - 1):
            path = candidate
        # else: a union tag or model name inserted by pydantic, not a key in the file
    return path


def read_text(path: Path | str) -> str:
    """A config file's text; raises ConfigError naming the file when it cannot be read or is
    not UTF-8 (a binary file, or a config saved in another encoding)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(p), None, (), _("cannot read: {why}").format(why=exc.strerror))]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    str(p),
                    None,
                    (),
                    _("not UTF-8 text (byte {byte}): save it as UTF-8").format(byte=exc.start),
                )
            ]
        ) from exc


def load_model(model: type[M], path: Path | str) -> M:
    """Read one YAML file into ``model``; raises ConfigError naming file, line and keys."""
    data, lines = parse_yaml(read_text(path), str(path))
    return validate(model, data, str(path), lines)


def iter_yaml_files(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*.yaml") if p.is_file())
