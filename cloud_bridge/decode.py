"""Topic + payload -> a contract message, or the reason it was refused. Pure: no I/O, no clock."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from pydantic import BaseModel, TypeAdapter, ValidationError

from gridwatch.ground.contract import (
    STREAMS,
    AlertEvent,
    Birth,
    Death,
    GatewayHealth,
    Status,
    TelemetryBatch,
    Topics,
)

Message = TelemetryBatch | AlertEvent | GatewayHealth | Birth | Death

_STATUS: TypeAdapter[Birth | Death] = TypeAdapter(Status)
_MODELS: dict[str, type[BaseModel]] = {
    "telemetry": TelemetryBatch,
    "alert": AlertEvent,
    "health": GatewayHealth,
}
LEAVES = ("telemetry", "alert", "health", "status")
_DETAIL_MAX = 500


class Reason(enum.StrEnum):
    """Why a message was quarantined (the quarantine table's ``reason``, the stats' key)."""

    BAD_TOPIC = "bad_topic"
    BAD_JSON = "bad_json"
    BAD_SCHEMA = "bad_schema"
    BAD_VERSION = "bad_version"
    OUT_OF_RANGE = "out_of_range"
    """Well formed, but a number, string or list outside the contract's ranges."""
    GATEWAY_MISMATCH = "gateway_mismatch"
    CLOCK = "clock"
    """A time outside the centre's clock window (``core.ClockWindow``)."""
    FOREIGN_DEVICE = "foreign_device"
    """About a device an installer registered under another gateway."""
    DEVICE_LIMIT = "device_limit"
    """A new device beyond its gateway's limit: not added to the registry (counted only)."""
    STORE_REFUSED = "store_refused"
    """Valid by the contract, but the registry refused to store it (a poison message)."""


# pydantic error types that mean "the right type, outside its range"
_RANGE_ERRORS = frozenset({
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
    "string_too_long", "string_too_short", "too_long", "too_short", "string_pattern_mismatch",
    "value_error",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Cleared:
    """An empty retained payload: someone deleted a retained status. Nothing to ingest."""


def decode(topics: Topics, topic: str, payload: bytes) -> Message | Rejection | Cleared:
    parsed = topics.parse_gateway_topic(topic)
    if parsed is None or parsed[1] not in LEAVES:
        return Rejection(Reason.BAD_TOPIC, f"not a gateway upstream topic: {topic}")
    gateway, leaf = parsed
    if not payload and leaf == "status":
        return Cleared()
    try:
        msg: Message
        if leaf == "status":
            msg = _STATUS.validate_json(payload)
        else:
            msg = _MODELS[leaf].model_validate_json(payload)  # type: ignore[assignment]
    except ValidationError as exc:
        return _rejection(exc)
    if msg.gateway != gateway:
        return Rejection(
            Reason.GATEWAY_MISMATCH, f"gateway {msg.gateway!r} published on {gateway!r}'s topic"
        )
    return msg


def _rejection(exc: ValidationError) -> Rejection:
    first = exc.errors(include_url=False)[0]
    detail = f"{exc.error_count()} error(s); first at {_loc(first['loc'])}: {first['msg']}"
    if first["type"] == "json_invalid":
        return Rejection(Reason.BAD_JSON, detail[:_DETAIL_MAX])
    if first["loc"][:1] == ("v",) or first["loc"][1:2] == ("v",):
        return Rejection(Reason.BAD_VERSION, detail[:_DETAIL_MAX])
    # a value of a union (a reading's value) fails once per member: any range error means the
    # sender meant the right type and went out of range
    if any(e["type"] in _RANGE_ERRORS for e in exc.errors(include_url=False)):
        return Rejection(Reason.OUT_OF_RANGE, detail[:_DETAIL_MAX])
    return Rejection(Reason.BAD_SCHEMA, detail[:_DETAIL_MAX])


def _loc(loc: tuple[int | str, ...]) -> str:
    return " -> ".join(str(p) for p in loc) or "(root)"


def delivery_key(topics: Topics, topic: str, payload: bytes) -> tuple[str, str, int] | None:
    """(gateway, stream, seq) of a message refused at decode, when its topic and payload still
    name them: it is acknowledged like any message the centre dealt with, or the gateway's
    outbox would send it forever. The gateway is the topic's (the one that published it)."""
    parsed = topics.parse_gateway_topic(topic)
    if parsed is None or parsed[1] not in STREAMS:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's
        return None  # depth: not from an outbox
    seq = doc.get("seq") if isinstance(doc, dict) else None
    return (parsed[0], parsed[1], seq) if type(seq) is int else None
