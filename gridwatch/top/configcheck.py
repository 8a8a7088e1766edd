"""``gridwatch config check [FILE...]``: validate profiles, gateway and centre configs, export JSON
Schema; ``gridwatch config example central`` prints the commented example ``central.yaml``.

A file is a centre config when its name starts with ``central`` or it has no ``gateway`` key and
one of the centre's sections; a profile or a catalogue layer when its top-level key says so; else
a gateway config. Every
problem of every file is printed as ``file:line: key -> path: message``; the exit code is 0 when all
are valid, 1 otherwise. With no FILE it checks what this installation ships (``SHIPPED``), so an
installed gridwatch can vouch for its own data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from pydantic import BaseModel

from firmware_configs import CATALOGUE, CENTRAL, GATEWAYS, PROFILES
from gridwatch.ground.catalogue import CatalogueFile
from gridwatch.ground.centralconf import CentralConfig, load_central
from gridwatch.ground.gatewayconf import GatewayConfig, load_gateway
from gridwatch.ground.profiles import ProfileFile, load_profile
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import ConfigError, iter_yaml_files, load_model

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
    roots = [Path(a) for a in args] or [firmware(folder) for folder in SHIPPED]
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
    return str(next(iter(data)))


def check(path: Path) -> list[str]:
    try:
        kind = _kind(path)
        if kind == "central":
            load_central(path)
        elif kind == "profile":
            load_profile(path)
        elif kind == "catalogue":
            load_model(CatalogueFile, path)
        else:
            load_gateway(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


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
    for path in _files(args.files):
        problems = check(path)
        for line in problems:
            print(line)
        if problems:
            bad += 1
        else:
            print(f"{path}: ok")
    if args.schema_dir:
        for target in write_schemas(Path(args.schema_dir)):
            print(f"wrote {target}")
    return 1 if bad else 0


def example(args: argparse.Namespace) -> int:
    folder, name = EXAMPLES[args.name]
    print(firmware(folder).joinpath(name).read_text(encoding="utf-8"), end="")
    return 0
