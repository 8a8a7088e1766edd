"""Devices from a CSV file, the way installers receive them: every row checked, every problem
reported with its line, and nothing imported unless every row is good.

Columns (header required, any order; only ``gateway``, ``id``, ``profile`` and ``bus`` must have
values): gateway, id, profile, bus, unit_id, address, district, street, grid, lat, lon,
install_date (YYYY-MM-DD), firmware, labels (``key=value;key=value``).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from device_registry.inventory.requests import DeviceCreate

COLUMNS = (
    "gateway", "id", "profile", "bus", "unit_id", "address", "district", "street", "grid",
    "lat", "lon", "install_date", "firmware", "labels",
)  # fmt: skip
REQUIRED = ("gateway", "id", "profile", "bus")
_LOCATION = ("district", "street", "grid", "lat", "lon")
MAX_ROWS = 50_000


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
