"""Devices from a CSV file, the way installers receive them: every row checked, every problem
reported with its line, and nothing imported unless every row is good.

Columns (header required, any order; only ``gateway``, ``id``, ``profile`` and ``bus`` must have
values): gateway, id, profile, bus, unit_id, address, district, street, grid, lat, lon,
install_date (YYYY-MM-DD), firmware, labels (``key=value;key=value``).

Two pure steps: ``parse`` checks each row on its own (types, required values, duplicates in the
file); ``judge`` checks the rows against what the registry holds, read once (``GatewayState``):
gateway registered and live, device id free, profile known, bus on the gateway, and then each
gateway's config with all its new devices generated and validated once. Per-row checks are set
lookups and the config is validated once per gateway, not once per row: the import used to
regenerate and validate the whole config for every row, which made it cubic (1,000 rows: 60 s).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from device_registry.inventory.configgen import (
    ConfigProblems,
    DeviceSpec,
    Profiles,
    document,
    validate,
)
from device_registry.inventory.requests import DeviceCreate
from gridwatch.ground.contract import Location

COLUMNS = (
    "gateway", "id", "profile", "bus", "unit_id", "address", "district", "street", "grid",
    "lat", "lon", "install_date", "firmware", "labels",
)  # fmt: skip
REQUIRED = ("gateway", "id", "profile", "bus")
_LOCATION = ("district", "street", "grid", "lat", "lon")
MAX_ROWS = 50_000
MAX_BYTES = 16 * 1024 * 1024
"""The import endpoint's own body limit: 50,000 rows of every column fit (the API's other
endpoints keep the 1 MiB default, which stops a file at ~20,000 rows)."""

Rows = Sequence[tuple[int, DeviceCreate]]


@dataclass
class RowReport:
    line: int
    device: str
    errors: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "device": self.device,
                "errors": [{"field": f, "message": m} for f, m in self.errors]}  # fmt: skip


class CsvRejected(Exception):
    """The file as a whole is unusable (no header, unknown columns, too many rows)."""


def parse(text: str) -> tuple[list[tuple[int, DeviceCreate]], list[RowReport]]:
    """Rows that validate (with their line numbers) and the report of those that do not."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if not header:
        raise CsvRejected("empty file: the first line must name the columns")
    unknown = sorted(set(header) - set(COLUMNS))
    missing = sorted(set(REQUIRED) - set(header))
    if unknown or missing:
        raise CsvRejected(f"unknown columns {unknown}, missing columns {missing}; "
                          f"known: {list(COLUMNS)}")  # fmt: skip
    good: list[tuple[int, DeviceCreate]] = []
    bad: list[RowReport] = []
    for row in reader:
        line = reader.line_num
        if len(good) + len(bad) >= MAX_ROWS:
            raise CsvRejected(f"more than {MAX_ROWS} rows: split the file")
        report = RowReport(line, f"{row.get('gateway') or ''}:{row.get('id') or ''}")
        if None in row:
            report.errors.append(("(row)", "more cells than columns"))
            bad.append(report)
            continue
        try:
            good.append((line, DeviceCreate.model_validate(_fields(row))))
        except ValidationError as exc:
            report.errors = [
                (".".join(str(x) for x in e["loc"]) or "(row)", e["msg"]) for e in exc.errors()
            ]
            bad.append(report)
        except ValueError as exc:
            report.errors.append(("labels", str(exc)))
            bad.append(report)
    _duplicates(good, bad)
    return good, bad


def _fields(row: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {k: v.strip() for k, v in row.items() if v is not None and v.strip()}
    loc = {k: data.pop(k) for k in _LOCATION if k in data}
    if loc:
        data["location"] = loc
    if "labels" in data:
        data["labels"] = _labels(data["labels"])
    return data


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"labels must be key=value;key=value, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def _duplicates(good: list[tuple[int, DeviceCreate]], bad: list[RowReport]) -> None:
    counts = Counter((d.gateway, d.id) for _, d in good)
    for line, d in list(good):
        if counts[(d.gateway, d.id)] > 1:
            bad.append(
                RowReport(
                    line, f"{d.gateway}:{d.id}", [("id", "appears more than once in the file")]
                )
            )
    good[:] = [(line, d) for line, d in good if counts[(d.gateway, d.id)] == 1]
    bad.sort(key=lambda r: r.line)


# ---- against the registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayState:
    """What the registry holds about one gateway named in the file, read once before judging."""

    id: str
    registered: bool
    retired: bool
    config_desired: int
    location: Location
    settings: dict[str, Any]
    devices: list[DeviceSpec]
    """Its registered, live devices: what its config holds now."""
    taken: dict[str, str]
    """Device ids registered on it before, live or retired: id -> 'registered' | 'retired'."""
    unregistered: frozenset[str] = frozenset()
    """Device ids it has seen (it reported them) that nobody registered: an import adopts them."""

    @functools.cached_property
    def buses(self) -> frozenset[str]:
        return frozenset(str(b.get("id")) for b in self.settings.get("buses", []))


def judge(rows: Rows, gateways: Mapping[str, GatewayState], profiles: Profiles) -> list[RowReport]:
    """The rows the registry refuses, by line (empty: every row can be imported)."""
    bad: list[RowReport] = []
    fit: dict[str, list[tuple[int, DeviceCreate]]] = {}
    for line, req in rows:
        problems = _row_problems(req, gateways.get(req.gateway), profiles)
        if problems:
            bad.append(RowReport(line, f"{req.gateway}:{req.id}", problems))
        else:
            fit.setdefault(req.gateway, []).append((line, req))
    for gw_id, gw_rows in fit.items():
        bad.extend(_config_problems(gateways[gw_id], gw_rows, profiles))
    bad.sort(key=lambda r: r.line)
    return bad


def _row_problems(
    req: DeviceCreate, gw: GatewayState | None, profiles: Profiles
) -> list[tuple[str, str]]:
    if gw is None or not gw.registered:
        return [("gateway", f"gateway {req.gateway!r} is not registered")]
    if gw.retired:
        return [("gateway", f"gateway {req.gateway!r} is retired")]
    problems = []
    state = gw.taken.get(req.id)
    if state is not None:
        problems.append(("id", f"device '{req.gateway}:{req.id}' is already {state}"))
    if req.profile not in profiles:
        problems.append(("profile", f"unknown profile (got {req.profile!r})"))
    if req.bus not in gw.buses:
        problems.append(("bus", f"unknown bus {req.bus!r}: gateway {gw.id!r} has buses "
                                f"{sorted(gw.buses)}"))  # fmt: skip
    return problems


_DEVICE_PATH = re.compile(r"^devices -> (\d+)(?: -> (.*))?$")


def _config_problems(gw: GatewayState, rows: Rows, profiles: Profiles) -> list[RowReport]:
    """The gateway's config with every new device, generated and validated once; a problem is
    reported on the row of the device it names (its field relative to the device), a problem of
    the gateway as a whole on the gateway's first row."""
    new = [DeviceSpec(r.id, r.profile, r.bus, r.unit_id, r.address or "", r.location or Location())
           for _, r in rows]  # fmt: skip
    doc = document(gw.id, gw.location, gw.settings, gw.devices + new, gw.config_desired + 1)
    try:
        validate(doc, profiles)
    except ConfigProblems as exc:
        problems = exc.problems
    else:
        return []
    ids = [d["id"] for d in doc["devices"]]
    line_of = {r.id: line for line, r in rows}
    reports: dict[int, RowReport] = {}
    for path, message in problems:
        m = _DEVICE_PATH.match(path)
        dev = ids[int(m.group(1))] if m else None
        line = line_of.get(dev or "", rows[0][0])
        name = f"{gw.id}:{dev}" if dev in line_of else gw.id
        field_ = (m.group(2) or "(device)") if m and dev in line_of else path
        reports.setdefault(line, RowReport(line, name)).errors.append((field_, message))
    return list(reports.values())
