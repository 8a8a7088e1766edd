"""``gridwatch config check [FILE...]``: validate profiles, gateway and centre configs, export JSON
Schema; ``gridwatch config example central`` prints the commented example ``central.yaml``.

A file is a centre config when its name starts with ``central`` or it has no ``gateway`` key and
one of the centre's sections; a profile or a catalogue layer when its top-level key says so; else
a gateway config. Every
problem of every file is printed as ``file:line: key -> path: message``; the exit code is 0 when all
are valid, 1 otherwise. With no FILE it checks what this installation ships (``SHIPPED``), so an
installed gridwatch can vouch for its own data (the catalogue it runs on: ``GRIDWATCH_CATALOGUE``
when set).

Rules (a profile's, or a device's in a gateway config) are held to the catalogue: their
category must be an item's code, their severity the item's, and a rule under an item the centre
files by itself must catch its filing condition (gridwatch.ground.catalogue.rule_problems). The
catalogue is the one among the files checked when they hold a city layer, else the one this
installation ships. A catalogue layer is checked in its folder, with the shipped layers below it
when the folder lacks them: a district may add items and tighten limits, not loosen or redefine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from pydantic import BaseModel

from firmware_configs import CATALOGUE, CENTRAL, GATEWAYS, PROFILES
from gridwatch.ground.catalogue import (
    Catalogue,
    CatalogueFile,
    CityLayer,
    default_catalogue_dir,
    layer_problems,
    load_catalogue,
    rule_problems,
)
from gridwatch.ground.centralconf import CentralConfig, load_central
from gridwatch.ground.gatewayconf import GatewayConfig, load_gateway
from gridwatch.ground.i18n import _
from gridwatch.ground.profiles import ProfileFile, load_profile
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import ConfigError, iter_yaml_files, line_map, load_model

SCHEMAS: dict[str, type[BaseModel]] = {
    "profile.schema.json": ProfileFile,
    "gateway.schema.json": GatewayConfig,
    "catalogue.schema.json": CatalogueFile,
    "central.schema.json": CentralConfig,
}

EXAMPLES = {"central": (CENTRAL, "central.example.yaml")}
"""``gridwatch config example NAME``: (shipped folder, file)."""


# the shipped folders checked when no file is named
SHIPPED = (PROFILES, GATEWAYS, CATALOGUE, CENTRAL)


def _files(args: list[str]) -> list[Path]:
    shipped = [default_catalogue_dir() if f == CATALOGUE else firmware(f) for f in SHIPPED]
    roots = [Path(a) for a in args] or shipped
    out: list[Path] = []
    for p in roots:
        out.extend(iter_yaml_files(p) if p.is_dir() else [p])
    return out


def _kind(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return ""  # the real loader reports it with its line
    if path.name.startswith("central"):
        return "central"  # named so: a file of typos only is still reported as a centre config
    if not isinstance(data, dict) or not data:
        return ""
    if "gateway" not in data and set(data) & set(CentralConfig.model_fields):
        return "central"
    if "catalogue" in data:
        return "catalogue"  # beside its x- anchor blocks, which may come first
    return str(next(iter(data)))


def check(path: Path, catalogue: Catalogue | None = None) -> list[str]:
    try:
        kind = _kind(path)
        if kind == "central":
            load_central(path)
            return []
        cat = catalogue or load_catalogue(default_catalogue_dir())
        if kind == "profile":
            prof = load_profile(path)
            found = rule_problems(prof.rules, cat, str(path), ("profile", "rules"), _lines(path),
                                  dict(prof.points), prof.interval_s)  # fmt: skip
        elif kind == "catalogue":
            return check_layer(path)
        else:
            cfg, devices = load_gateway(path)
            lines = _lines(path)
            run = {r.id: r for r in devices}
            found = [p for i, d in enumerate(cfg.devices) if d.rules is not None
                     for p in rule_problems(d.rules, cat, str(path), ("devices", i, "rules"),
                                            lines, dict(run[d.id].profile.points),
                                            run[d.id].interval_s)]  # fmt: skip
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return [str(p) for p in found]


def check_layer(path: Path) -> list[str]:
    """A catalogue layer's problems, judged with the layers below it (its folder's, else the
    shipped ones); problems of its neighbours are theirs, reported when they are checked."""
    mine = (str(path), str(path.parent))
    found = layer_problems(path, default_catalogue_dir())
    return [str(p) for p in found if p.file in mine]


def _lines(path: Path) -> dict[tuple[str | int, ...], int]:
    return line_map(path.read_text())


def catalogue_for(paths: list[Path]) -> Catalogue | None:
    """The catalogue formed by the layers among ``paths`` when one is a city layer (its folder
    holds the whole catalogue); None: the shipped one. A broken layer is reported by ``check``."""
    for p in paths:
        if _kind(p) == "catalogue":
            try:
                if isinstance(load_model(CatalogueFile, p).catalogue, CityLayer):
                    return load_catalogue(p.parent)
            except ConfigError:
                return None
    return None


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        target = folder / name
        target.write_text(json.dumps(model.model_json_schema(), indent=2) + "\n")
        written.append(target)
    return written


def main(args: argparse.Namespace) -> int:
    bad = 0
    files = _files(args.files)
    catalogue = catalogue_for(files)
    if catalogue is None:
        try:
            catalogue = load_catalogue(default_catalogue_dir())
        except ConfigError:
            catalogue = None  # its own files say why; each check reports it again
    for path in files:
        problems = check(path, catalogue)
        for line in problems:
            print(line)
        if problems:
            bad += 1
        else:
            print(_("{file}: ok").format(file=path))
    if args.schema_dir:
        for target in write_schemas(Path(args.schema_dir)):
            print(_("wrote {file}").format(file=target))
    return 1 if bad else 0


def example(args: argparse.Namespace) -> int:
    folder, name = EXAMPLES[args.name]
    print(firmware(folder).joinpath(name).read_text(encoding="utf-8"), end="")
    return 0
