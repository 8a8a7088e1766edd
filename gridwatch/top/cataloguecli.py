"""``gridwatch catalogue import FILE --layer national|city|district -o OUT.yaml``: a full list
(CSV or YAML, gridwatch.ground.catalogueimport) becomes one catalogue layer file.

The layer is checked where it will live before anything is written: with the layers of OUT's
folder, and the shipped layers below it that the folder lacks, as ``gridwatch config check``
would (a district may add items and tighten limits, never loosen or redefine). A problem of an
imported item names the row of FILE it came from (``file:line: column``), not the YAML written.
Exit 0: written; 1: problems, nothing written; 2: usage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gridwatch.ground.catalogue import default_catalogue_dir, layer_problems
from gridwatch.ground.catalogueimport import (
    MODELS,
    decode,
    items_from_csv,
    items_from_yaml,
    layer_data,
)
from gridwatch.ground.yamlconf import ConfigError, ConfigProblem
from gridwatch.top import exits

HEADER = """\
# {layer} layer imported by `gridwatch catalogue import` from {source} (items: {count}).
# Edit the source list and import again rather than this file; docs/catalogue.md.
"""


def add_parsers(sub: Any) -> None:
    cat = sub.add_parser("catalogue", help="the catalogue of classes and standards")
    cats = cat.add_subparsers(dest="sub", required=True)
    imp = cats.add_parser(
        "import",
        help="turn a full list (CSV or YAML) into a catalogue layer file, checked first",
        description="Columns of a CSV list (English or Chinese headers): docs/catalogue.md.",
    )
    imp.add_argument("file", help="the list: .csv, or .yaml/.yml")
    imp.add_argument("--layer", required=True, choices=("national", "city", "district"))
    imp.add_argument("--area", default="", help="city or district code, e.g. 310000, 310104")
    imp.add_argument("--extends", default="", help="file name of the layer below, e.g. "
                     "city-shanghai.yaml (national: none)")  # fmt: skip
    imp.add_argument("--name-zh", required=True, help="the list's title in Chinese")
    imp.add_argument("--name-en", required=True, help="the list's title in English")
    imp.add_argument("-o", "--out", required=True, help="the layer file to write")


def _usage(args: argparse.Namespace) -> str:
    if args.layer != "national" and not (args.area and args.extends):
        return f"a {args.layer} layer needs --area and --extends"
    if Path(args.file).suffix.lower() not in (".csv", ".yaml", ".yml"):
        return f"{args.file}: a list is a .csv or a .yaml file"
    return ""


def main(args: argparse.Namespace) -> int:
    wrong = _usage(args)
    if wrong:
        print(wrong, file=sys.stderr)
        return exits.USAGE
    out = Path(args.out)
    try:
        items, lines = _read(Path(args.file), args.layer)
        data = layer_data(items, args.layer, args.area, args.extends, args.name_zh, args.name_en)
        text = HEADER.format(layer=args.layer, source=Path(args.file).name, count=len(items))
        text += yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)
        _check(text, out, args.file, lines)
    except ConfigError as exc:
        for p in exc.problems:
            print(p)
        print(f"nothing written to {out}", file=sys.stderr)
        return exits.BAD_NEWS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {args.layer} layer, items: {len(items)}")
    return exits.OK


def _read(path: Path, layer: str) -> tuple[list[Any], list[int]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read: {exc.strerror}"
        raise ConfigError([ConfigProblem(str(path), None, (), msg)]) from exc
    model = MODELS[layer]
    text = decode(data, str(path))
    if path.suffix.lower() == ".csv":
        return items_from_csv(text, str(path), model)
    return items_from_yaml(text, str(path), model)


def _check(text: str, out: Path, source: str, lines: list[int]) -> None:
    """Check the layer as OUT, among the layers of OUT's folder; its item problems by row."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / out.name
        staged.write_text(text, encoding="utf-8")
        folder = out.parent if out.parent.is_dir() else Path(tmp)
        found = layer_problems(staged, default_catalogue_dir(), folder)
        if found:
            raise ConfigError([_by_row(p, staged, out, source, lines) for p in found])


def _by_row(
    p: ConfigProblem, staged: Path, out: Path, source: str, lines: list[int]
) -> ConfigProblem:
    """A problem of the staged layer, told by the source row of its item (else by OUT)."""
    if p.file != str(staged):
        return p  # a layer below, or the set (no national layer ...)
    path = p.path
    if len(path) >= 3 and path[1] in ("categories", "classes") and isinstance(path[2], int):
        return ConfigProblem(source, lines[path[2]], ("item", path[2] + 1, *path[3:]),
                             p.message, p.value)  # fmt: skip
    return ConfigProblem(str(out), None, path, p.message, p.value)
