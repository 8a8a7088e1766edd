"""The import rule is checked by a tool: the tree keeps every contract, and each contract catches
an import planted against it (in a copy of the tree, so the real one is never touched)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gridwatch", "drivers", "edge", "cloud_bridge", "device_registry", "firmware_configs")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# (contract id, file of the copy, module it imports, planted at the file's end)
PLANTS = [
    ("ground", "gridwatch/ground/contract.py", "device_registry.errors"),
    ("ground", "gridwatch/ground/profiles.py", "gridwatch.top.cli"),
    ("data", "firmware_configs/__init__.py", "gridwatch.ground.yamlconf"),
    ("top", "device_registry/errors.py", "gridwatch.top.demo"),
    ("top", "drivers/planner.py", "gridwatch.top.sim"),
    ("drivers", "drivers/codec.py", "edge.outbox"),
    ("edge", "edge/outbox.py", "cloud_bridge.errors"),
    ("cloud_bridge", "cloud_bridge/errors.py", "drivers.planner"),
    ("device_registry", "device_registry/ingest/changes.py", "edge.journal"),
    ("roots", "edge/pipeline.py", "edge.app"),
    ("roots", "device_registry/http/api.py", "device_registry.http.app"),
]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts the copy's packages before the editable install's (a meta-path finder
    # that Python asks only after sys.path)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def broken_sections(report: str) -> dict[str, str]:
    """Contract name -> its part of the report's "Broken contracts" list."""
    lines = report.split("Broken contracts", 1)[1].splitlines()[2:]
    heads = [
        i
        for i in range(len(lines) - 1)
        if lines[i] and set(lines[i + 1]) == {"-"} and len(lines[i + 1]) == len(lines[i])
    ]
    ends = [*heads[1:], len(lines)]
    return {lines[h]: "\n".join(lines[h + 2 : e]) for h, e in zip(heads, ends, strict=True)}


def contract_names() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def test_the_tree_keeps_every_import_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in done.stdout


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One lint of a copy holding every plant: one run (~2 s) rather than one per contract."""
    copy = tmp_path_factory.mktemp("planted")
    shutil.copy(ROOT / "pyproject.toml", copy)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for _contract, file, target in PLANTS:
        with (copy / file).open("a") as f:
            f.write(f"\nimport {target}  # planted by tests/test_imports.py\n")
    done = lint_imports(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    return broken_sections(done.stdout)


@pytest.mark.parametrize(("contract", "file", "target"), PLANTS, ids=[p[1] for p in PLANTS])
def test_a_planted_import_breaks_its_contract(
    broken: dict[str, str], contract: str, file: str, target: str
) -> None:
    name = contract_names()[contract]
    assert name in broken, f"contract {contract!r} kept despite {file} importing {target}"
    importer = file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert f"{importer} -> {target} (l." in broken[name], broken[name]
