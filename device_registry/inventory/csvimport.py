"""Devices from a CSV file, the way installers receive them: every row checked, every problem
reported with its line, and nothing imported unless every row is good.

Columns (header required, any order, spaces around the names and their case ignored; only
``gateway``, ``id``, ``profile`` and ``bus`` must have values): gateway, id, profile, bus,
unit_id, address, district, street, grid, lat, lon (the device's own), install_date
(YYYY-MM-DD), firmware, labels (``key=value;key=value``), component_id (the city component, 部件,
16 digits) and its departments dept_competent (主管), dept_owner (权属), dept_maintainer (养护),
each ``CODE:NAME`` (or ``CODE``). ``firmware_configs/samples/devices.csv`` is a file to start from.

Two pure steps: ``parse`` checks each row on its own (types, required values, coordinates in
range) and the rows against each other (one device id twice, two devices at one bus's unit id or
MQTT address); ``judge`` checks the rows against what the registry holds, read once
(``GatewayState``): gateway registered and live, device id free, unit id or address free,
profile known, bus on the gateway, and then each gateway's config with all its new devices
generated and validated once. A row ``parse`` refused is still judged on its other cells, so
that an installer gets every problem of a file in one answer (``merged``), with line numbers as
an editor shows them. Per-row checks are set
lookups and the config is validated once per gateway, not once per row: the import used to
regenerate and validate the whole config for every row, which made it cubic (1,000 rows: 60 s).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from device_registry.inventory.components import DEPARTMENTS, department_cell
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
    "component_id", "dept_competent", "dept_owner", "dept_maintainer",
)  # fmt: skip
_DEPARTMENTS = tuple(f"dept_{d}" for d in DEPARTMENTS)
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
    cells: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The row's cells as written (stripped): a row refused for a malformed value is still
    judged on the others (gateway, profile, bus), so that a file is fixed in one round."""

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "device": self.device,
                "errors": [{"field": f, "message": m} for f, m in self.errors]}  # fmt: skip


class CsvRejected(Exception):
    """The file as a whole is unusable (no header, unknown columns, too many rows)."""


@dataclass
class Parsed:
    """A file read: its good rows (line, device), the reports of its bad ones, and how many
    data rows it has (the count an installer checks against the editor)."""

    good: list[tuple[int, DeviceCreate]]
    bad: list[RowReport]
    total: int


def parse(text: str) -> Parsed:
    """Rows that validate (with their line numbers) and the report of those that do not.

    Line numbers are those an editor shows: a row's first line (a quoted cell may span lines),
    blank lines counted."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header, end = _header(reader)
    good: list[tuple[int, DeviceCreate]] = []
    bad: list[RowReport] = []
    for cells in reader:
        line, end = end + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue  # a blank line, as editors leave at the end
        if len(good) + len(bad) >= MAX_ROWS:
            raise CsvRejected(f"more than {MAX_ROWS} rows: split the file")
        row = {k: v.strip() for k, v in zip(header, cells, strict=False)}
        report = RowReport(line, f"{row.get('gateway', '')}:{row.get('id', '')}", cells=row)
        if len(cells) > len(header):
            report.errors.append(("(row)", f"{len(cells)} cells, but the header names "
                                           f"{len(header)} columns"))  # fmt: skip
            bad.append(report)
            continue
        try:
            good.append((line, DeviceCreate.model_validate(_fields(row))))
        except ValidationError as exc:
            report.errors = [(_where(e["loc"]), _plain(e)) for e in exc.errors()]
            bad.append(report)
        except ValueError as exc:
            report.errors.append(("labels", str(exc)))
            bad.append(report)
    total = len(good) + len(bad)
    _duplicates(good, bad)
    return Parsed(good, bad, total)


def _header(reader: Any) -> tuple[list[str], int]:
    """The column names (spaces around them and case ignored) and the line the header ends on."""
    for cells in reader:
        if any(c.strip() for c in cells):
            break
    else:
        raise CsvRejected("empty file: the first line must name the columns, e.g. "
                          f"{','.join(REQUIRED)}")  # fmt: skip
    header = [c.strip().lower() for c in cells]
    problems = []
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        problems.append(f"unknown column{'s' * (len(unknown) > 1)} "
                        f"{', '.join(repr(c) for c in unknown)}")  # fmt: skip
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        problems.append(f"missing column{'s' * (len(missing) > 1)} "
                        f"{', '.join(repr(c) for c in missing)}")  # fmt: skip
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        problems.append(f"column{'s' * (len(twice) > 1)} named twice: {', '.join(twice)}")
    if problems:
        raise CsvRejected(f"line {reader.line_num} (the header): {'; '.join(problems)}. "
                          f"Known columns: {', '.join(COLUMNS)}")  # fmt: skip
    return header, reader.line_num


def _where(loc: tuple[int | str, ...]) -> str:
    """``location.lat`` is the file's ``lat`` column."""
    parts = [str(x) for x in loc]
    if parts == ["location"]:
        return "lat/lon"  # the location as a whole: its coordinates, given as a pair
    if parts[:1] == ["location"]:
        parts = parts[1:]
    if parts[:1] and parts[0] in _DEPARTMENTS:
        return parts[0]  # the cell holds code and name: the column is what the installer fixes
    return ".".join(parts) or "(row)"


_DEPT_WORDS = {
    ("code", "string_too_short"): "the code before the colon is empty",
    ("code", "string_pattern_mismatch"): "the code holds letters, digits, '-', '_', '.' only",
    ("code", "string_too_long"): "the code is at most 32 characters",
    ("name", "string_pattern_mismatch"): "the name holds a control character",
    ("name", "string_too_long"): "the name is at most 200 characters",
}
_RANGE = {"lat": "a latitude, -90 to 90", "lon": "a longitude, -180 to 180"}


def _plain(err: Any) -> str:
    """An empty cell and a coordinate out of range in the installer's words; others as pydantic
    words them."""
    column = _where(err["loc"])
    if column in _DEPARTMENTS:
        part = "code" if "code" in err["loc"] else "name"
        why = _DEPT_WORDS.get((part, err["type"]), str(err["msg"]))
        return f"must be CODE:NAME, e.g. 310104SW01:徐汇区水务局: {why} (got {err['input']!r})"
    if err["type"] == "missing":
        return "required: the cell is empty"
    if column in _RANGE and err["type"] in ("less_than_equal", "greater_than_equal"):
        return f"must be {_RANGE[column]} (got {err['input']!r})"
    return str(err["msg"])


def _fields(row: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {k: v for k, v in row.items() if v}
    loc = {k: data.pop(k) for k in _LOCATION if k in data}
    if loc:
        data["location"] = loc
    if "labels" in data:
        data["labels"] = _labels(data["labels"])
    for column in _DEPARTMENTS:
        if column in data:
            data[column] = department_cell(data[column])
    return data


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"labels must be key=value;key=value, got {part!r}")
        out[key.strip()] = value.strip()
    return out


Slot = tuple[str, str, str]
"""Where a device answers on its gateway: bus, ``unit_id`` or ``address``, and its value."""


def slots(cells: Mapping[str, str]) -> list[Slot]:
    """The slots a row takes: two devices in one slot would answer as one."""
    out = []
    for column in ("unit_id", "address"):
        value = cells.get(column, "")
        if column == "unit_id":
            if not value.isdigit():
                continue  # refused as malformed already
            value = str(int(value))  # 07 and 7 are one unit
        if value and cells.get("bus"):
            out.append((cells["bus"], column, value))
    return out


_SLOT_NAME = {"unit_id": "unit id", "address": "address"}
_NAMED_LINES = 3
"""Other lines named in a duplicate's message: a file of 50,000 rows all at unit id 1 must not
answer with 50,000 lists of 50,000 lines."""


def _others(lines: list[int], line: int) -> str:
    """The lines of ``lines`` other than ``line``, the first few named (linear in the rows)."""
    shown = [n for n in lines[: _NAMED_LINES + 1] if n != line][:_NAMED_LINES]
    more = len(lines) - 1 - len(shown)
    named = ", ".join(str(n) for n in shown)
    return f"{named} and {more} more" if more > 0 else named


def _cells(req: DeviceCreate) -> dict[str, str]:
    return {"gateway": req.gateway, "id": req.id, "bus": req.bus, "profile": req.profile,
            "unit_id": "" if req.unit_id is None else str(req.unit_id),
            "address": req.address or ""}  # fmt: skip


def _duplicates(good: list[tuple[int, DeviceCreate]], bad: list[RowReport]) -> None:
    """Two rows of one device id, or of one bus slot, on one gateway: both refused, each
    naming the other's line."""
    rows = [(line, _cells(d)) for line, d in good] + [(r.line, r.cells) for r in bad]
    seen: dict[tuple[str, Any], list[int]] = {}
    for line, cells in rows:
        if cells.get("gateway") and cells.get("id"):
            seen.setdefault(("id", (cells["gateway"], cells["id"])), []).append(line)
        for slot in slots(cells):
            seen.setdefault((slot[1], (cells.get("gateway", ""), *slot)), []).append(line)
    problems: dict[int, list[tuple[str, str]]] = {}
    for (column, key), lines in seen.items():
        for line in lines if len(lines) > 1 else ():
            others = _others(lines, line)
            what = ("device id" if column == "id" else
                    f"{_SLOT_NAME[column]} {key[3]} on bus {key[1]!r} (two devices would answer "
                    "as one)")  # fmt: skip
            problems.setdefault(line, []).append((column, f"line {others} has the same {what}"))
    if not problems:
        return
    reports = {r.line: r for r in bad}
    for line, d in good:
        if line in problems:
            reports[line] = RowReport(line, f"{d.gateway}:{d.id}", cells=_cells(d))
    for line, found in problems.items():
        reports[line].errors.extend(found)
    good[:] = [(line, d) for line, d in good if line not in problems]
    bad[:] = sorted(reports.values(), key=lambda r: r.line)


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

    @functools.cached_property
    def slots(self) -> dict[Slot, str]:
        """Its devices by where they answer (``slots``)."""
        out: dict[Slot, str] = {}
        for d in self.devices:
            if d.unit_id is not None:
                out[(d.bus, "unit_id", str(d.unit_id))] = d.id
            if d.address:
                out[(d.bus, "address", d.address)] = d.id
        return out


def judge(
    rows: Rows, gateways: Mapping[str, GatewayState], profiles: Profiles,
    unparsed: Sequence[RowReport] = (),
) -> list[RowReport]:  # fmt: skip
    """The rows the registry refuses, by line (empty: every row can be imported).

    ``unparsed``: the rows ``parse`` refused, judged on the cells they have, so that every
    problem of a file is reported at once; merge the answer with them (``merged``)."""
    bad: list[RowReport] = []
    fit: dict[str, list[tuple[int, DeviceCreate]]] = {}
    for line, req in rows:
        problems = _row_problems(_cells(req), gateways.get(req.gateway), profiles)
        if problems:
            bad.append(RowReport(line, f"{req.gateway}:{req.id}", problems))
        else:
            fit.setdefault(req.gateway, []).append((line, req))
    for report in unparsed:
        given = {f for f, _ in report.errors}
        cells = {k: v for k, v in report.cells.items() if k not in given}
        problems = _row_problems(cells, gateways.get(cells.get("gateway", "")), profiles)
        if problems:
            bad.append(RowReport(report.line, report.device, problems))
    for gw_id, gw_rows in fit.items():
        bad.extend(_config_problems(gateways[gw_id], gw_rows, profiles))
    bad.sort(key=lambda r: r.line)
    return bad


def merged(*reports: Sequence[RowReport]) -> list[RowReport]:
    """One report per line, its problems in the order found, by line."""
    out: dict[int, RowReport] = {}
    for r in (r for group in reports for r in group):
        out.setdefault(r.line, RowReport(r.line, r.device)).errors.extend(r.errors)
    return sorted(out.values(), key=lambda r: r.line)


def _row_problems(
    cells: Mapping[str, str], gw: GatewayState | None, profiles: Profiles
) -> list[tuple[str, str]]:
    """A row's problems with what the registry holds; a cell left out is not judged."""
    gw_id, dev, profile, bus = (cells.get(k, "") for k in ("gateway", "id", "profile", "bus"))
    problems = []
    if profile and profile not in profiles:
        problems.append(("profile", f"unknown profile (got {profile!r}); known profiles: "
                                    f"{', '.join(sorted(profiles))}"))  # fmt: skip
    if not gw_id:
        return problems
    if gw is None or not gw.registered:
        return [("gateway", f"gateway {gw_id!r} is not registered"), *problems]
    if gw.retired:
        return [("gateway", f"gateway {gw_id!r} is retired"), *problems]
    state = gw.taken.get(dev)
    if state is not None:
        problems.insert(0, ("id", f"device '{gw_id}:{dev}' is already {state}"))
    if bus and bus not in gw.buses:
        problems.append(("bus", unknown_bus(gw_id, bus, gw.buses)))
    for slot in slots(cells):
        holder = gw.slots.get(slot)
        if holder is not None and holder != dev:
            problems.append((slot[1], f"{_SLOT_NAME[slot[1]]} {slot[2]} on bus {bus!r} is "
                                      f"already device '{gw_id}:{holder}' (two devices would "
                                      "answer as one)"))  # fmt: skip
    return problems


def unknown_bus(gateway: str, bus: str, buses: Collection[str]) -> str:
    """What an installer reads for a device on a bus its gateway does not have."""
    if not buses:
        return (f"unknown bus {bus!r}: gateway {gateway!r} has no buses yet; add one: "
                f"gridwatch gateway edit {gateway} --bus {bus} --type modbus_tcp --host ADDRESS")  # fmt: skip
    return (f"unknown bus {bus!r}: gateway {gateway!r} has bus{'es' * (len(buses) > 1)} "
            f"{', '.join(repr(b) for b in sorted(buses))}")  # fmt: skip


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
