"""The wire contract between edge gateways and the central platform.

One pure module, imported by both ends: topic names and message models, no I/O.
Every message is JSON with a schema version ``v``. docs/contract.md shows an example of each.

Topic tree (``P`` is the configurable prefix, ``G`` the gateway id, which is also the
gateway's MQTT username so a broker ACL ``pattern readwrite P/gw/%u/#`` confines it)::

    P/gw/G/status          retained  Birth on connect, Death as the last will      (up)
    P/gw/G/telemetry                 TelemetryBatch                                (up)
    P/gw/G/alert                     AlertEvent                                    (up)
    P/gw/G/health                    GatewayHealth                                 (up)
    P/gw/G/config          retained  ConfigPush                                    (down)
    P/gw/G/config/ack                ConfigAck                                     (up)
    P/gw/G/cmd                       Command                                       (down)
    P/gw/G/cmd/result                CommandResult                                 (up)
    P/gw/G/ack                       Ack: what the centre has committed            (down)
    P/gw/G/repair                    Repair: numbers the centre never received     (down)
    P/platform/alert/D/C/S           PlatformAlert  (district D, category C, severity S)
    P/platform/lifecycle/D/C/S       PlatformLifecycle  (the case's steps: reported with its
                                     incident, filed, dispatched, disposed, verified, closed,
                                     re-dispatched, urged: who, when, department, time limit)

Upstream messages carry a message id and a per-gateway, per-stream sequence number so the
central side drops duplicates (at-least-once delivery) and notices gaps. The centre answers
with an ``Ack`` naming the sequence numbers it has committed (the edge keeps a message until
then, not only until the broker's PUBACK) and asks for numbers it never received with a
``Repair``.

Every field has a range, so that a message the models accept can be stored and served back:
integers fit a signed 64-bit column (times, counters and numbers tighter, see ``EpochMs``),
floats are finite (JSON has no NaN), strings and lists are bounded, ids use a safe character
set. The bounds follow the registry's columns; a message outside them is refused at decode,
never half-written. How far a time may be from the centre's clock is the centre's policy
(``cloud_bridge``), not the contract's.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

SCHEMA_VERSION: Literal[1] = 1
DEFAULT_PREFIX = "gridwatch"


class Quality(enum.StrEnum):
    """How far a reading can be trusted. A failed read is never reported as a number."""

    GOOD = "good"
    STALE = "stale"
    COMM_ERROR = "comm_error"
    OUT_OF_RANGE = "out_of_range"
    INVALID = "invalid"


class Severity(enum.StrEnum):
    INFO = "info"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class AlertState(enum.StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    CLEARED = "cleared"


INT64_MAX = 2**63 - 1
EPOCH_MS_MAX = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the contract's outer bound for a time; the centre refuses times far
from its own clock long before that (``cloud_bridge.core.ClockWindow``)."""
ID_MAX = 64
"""Gateway, device, rule, point and district ids; an alert id may be twice that."""
TEXT_MAX = 200
"""Free text that is shown (street, message, software, an error)."""
READINGS_MAX = 100_000
"""Readings in one telemetry batch: the edge's outbox replays at most this many at once."""
DEVICES_MAX = 10_000
"""Devices a birth or a health report names: far more than one gateway's buses can poll."""


def _int64(value: object) -> object:
    # without this a JSON integer too big for 64 bits would pass as a float (1e30 for 10**30)
    if type(value) is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError("integer out of the signed 64-bit range")
    return value


GatewayId = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=r"^[A-Za-z0-9_.-]+$")]
DeviceId = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=r"^[A-Za-z0-9_.:-]+$")]
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL's text cannot hold NUL: refused at decode, not by the store
Name = Annotated[str, Field(max_length=ID_MAX, pattern=_NO_CONTROL)]
"""A short free name (a point, a rule, a district, a grid cell, a unit): no control characters,
which would break the time-series store's line protocol (a refused write is retried)."""
Unit = Annotated[str, Field(max_length=32, pattern=_NO_CONTROL)]
Text = Annotated[str, Field(max_length=TEXT_MAX, pattern=_NO_NUL)]
Int64 = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""Counters, sequence numbers, sessions, versions."""
EpochMs = Annotated[int, Field(ge=0, le=EPOCH_MS_MAX)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
"""NaN and Infinity are refused: JSON cannot carry them and a store would serve them back bare."""

MessageId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
AlertId = Annotated[
    str, Field(min_length=1, max_length=2 * ID_MAX, pattern=r"^[^\x00-\x20\x7f/]+$")
]
"""Stable across an alert's transitions; the centre scopes it by the gateway it came through."""

Value = Annotated[Int64 | Finite | bool | Text | None, BeforeValidator(_int64)]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Msg):
    """One value of one point of one device at one instant."""

    device: DeviceId = Field(description="Device id, unique within the gateway.")
    point: Name = Field(description="Point name from the device profile.")
    value: Value = Field(description="Decoded, scaled value; null when quality is not good.")
    unit: Unit = Field(default="", description="Engineering unit, e.g. 'm', 'ppm'.")
    ts: EpochMs = Field(description="Time the value was read, Unix epoch milliseconds (UTC).")
    quality: Quality = Field(default=Quality.GOOD)
    historical: bool = Field(
        default=False, description="True when replayed from the outbox after an outage."
    )


class Upstream(_Msg):
    """Fields every message from a gateway carries."""

    v: Literal[1] = SCHEMA_VERSION
    id: MessageId = Field(description="Message id (UUID), unique forever; the dedupe key.")
    gateway: GatewayId
    seq: Count = Field(description="Per-gateway, per-stream sequence number.")
    session: Count = Field(description="Increments every time the gateway connects.")


class TelemetryBatch(Upstream):
    kind: Literal["telemetry"] = "telemetry"
    readings: list[Reading] = Field(max_length=READINGS_MAX)


class Location(_Msg):
    district: Name = ""
    street: Text = ""
    grid: Name = Field(default="", description="Grid cell of the city's management grid.")
    lat: Finite | None = Field(default=None, ge=-90, le=90)
    lon: Finite | None = Field(default=None, ge=-180, le=180)


class AlertEvent(Upstream):
    """A transition of one alert. ``alert_id`` is stable across raise, updates and clear."""

    kind: Literal["alert"] = "alert"
    alert_id: AlertId
    state: AlertState
    rule: Name = Field(description="Rule id that fired, e.g. 'level_high'.")
    category: Name = Field(description="Event catalogue code.")
    severity: Severity
    device: DeviceId
    point: Name
    location: Location
    value: Value = Field(description="The value that caused this transition.")
    peak: Value = Field(default=None, description="Most extreme value while active.")
    threshold: Finite | None = None
    unit: Unit = ""
    message: Annotated[str, Field(max_length=1000, pattern=_NO_NUL)] = ""
    raised_at: EpochMs = Field(description="Epoch ms when the alert was raised.")
    ts: EpochMs = Field(description="Epoch ms of this transition.")


class DeviceInfo(_Msg):
    """What the centre needs to judge a device's health: its profile's expected interval."""

    device: DeviceId
    profile: Name = ""
    interval_s: Finite | None = Field(
        default=None, gt=0, le=366 * 24 * 3600, description="Expected reporting interval."
    )
    firmware: Name = ""
    location: Location | None = Field(default=None, description="Where it is installed.")


class Birth(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["birth"] = "birth"
    gateway: GatewayId
    session: Count
    ts: EpochMs
    software: Annotated[str, Field(max_length=100, pattern=_NO_CONTROL)] = ""
    config_version: Count = 0
    devices: list[DeviceId] = Field(default_factory=list, max_length=DEVICES_MAX)
    device_info: list[DeviceInfo] = Field(
        default_factory=list,
        max_length=DEVICES_MAX,
        description="Profile and expected interval of each device.",
    )


class Death(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["death"] = "death"
    gateway: GatewayId
    session: Count


Status = Annotated[Birth | Death, Field(discriminator="kind")]


RECENT_POLLS = 50
"""The window of ``DeviceHealth.recent_ok``/``recent_failed``: the last this many polls..."""
RECENT_S = 600
"""...none older than this many seconds, so an outage an hour ago no longer counts."""
RECOVERED_POLLS = 3
"""A device that answered this many polls in a row has recovered: the window's ratio no longer
makes it "failing reads" (the centre's rule), and the edge reports at once when it gets there."""


class DeviceHealth(_Msg):
    device: DeviceId
    online: bool
    reads_ok: Count = Field(default=0, description="Polls answered since the gateway started.")
    reads_failed: Count = Field(default=0, description="Polls failed since the gateway started.")
    consecutive_failures: Count = 0
    response_ms: Finite | None = Field(default=None, ge=0)
    last_ok: EpochMs | None = None
    polls_skipped: Count = 0
    recent_ok: Count | None = Field(
        default=None,
        description="Polls answered among the recent ones (the last RECENT_POLLS, none older "
        "than RECENT_S). Absent from an older edge: the centre then judges the lifetime counters.",
    )
    recent_failed: Count | None = Field(default=None, description="Polls failed among them.")
    consecutive_ok: Count | None = Field(
        default=None, description="Polls answered in a row since the last failed one (absent "
        "from an older edge).",
    )  # fmt: skip
    last_failed: EpochMs | None = Field(
        default=None, description="Gateway clock of the newest failed poll."
    )


class BusHealth(_Msg):
    """One bus of the gateway (a Modbus TCP endpoint, a serial line, a sensor broker)."""

    bus: Name = Field(description="Bus id from the gateway config.")
    type: Name = Field(default="", description="modbus_tcp, modbus_rtu or mqtt.")
    address: Text = Field(default="", description="host:port or serial port.")
    up: bool = Field(description="False when the bus itself cannot be reached.")
    error: Text = Field(default="", description="Why it is down, as the edge logs it.")
    down_since: EpochMs | None = None
    devices: list[DeviceId] = Field(default_factory=list, max_length=DEVICES_MAX)


class GatewayHealth(Upstream):
    kind: Literal["health"] = "health"
    ts: EpochMs
    interval_s: Finite | None = Field(
        default=None, gt=0, le=366 * 24 * 3600,
        description="This gateway's report period (absent from an older edge).",
    )  # fmt: skip
    cpu_percent: Finite | None = None
    memory_mb: Finite | None = None
    disk_free_mb: Finite | None = None
    outbox_depth: Count = 0
    outbox_bytes: Count = 0
    outbox_dropped: Count = 0
    outbox_unacked: Count = Field(
        default=0, description="Messages the broker has and the centre has not acknowledged."
    )
    outbox_unacked_oldest_s: Finite | None = Field(
        default=None, ge=0, description="Seconds since the oldest of them was first sent."
    )
    uplink_reconnects: Count = 0
    devices: list[DeviceHealth] = Field(default_factory=list, max_length=DEVICES_MAX)
    buses: list[BusHealth] = Field(
        default_factory=list, max_length=DEVICES_MAX,
        description="Each bus's state (absent from an older edge).",
    )  # fmt: skip


class ConfigPush(_Msg):
    """A gateway's whole configuration, as the registry generated it (retained)."""

    v: Literal[1] = SCHEMA_VERSION
    gateway: GatewayId
    version: Count = Field(ge=1, description="Increases with every change; acks name it.")
    config: dict[str, Any] = Field(description="The gateway config document (as in YAML).")
    ts: EpochMs


class ConfigAck(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    gateway: GatewayId
    version: Count
    accepted: bool
    errors: list[Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=list, max_length=1000
    )
    ts: EpochMs


class Command(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    id: Annotated[str, Field(min_length=1, max_length=64)]
    device: Annotated[str, Field(min_length=1, max_length=ID_MAX)]
    point: Annotated[str, Field(max_length=ID_MAX)]
    value: Annotated[Int64 | Finite | bool, BeforeValidator(_int64)]
    ts: EpochMs
    expires_at: EpochMs | None = Field(
        default=None,
        description="Unix epoch ms. A gateway that gets the command later (it was offline and "
        "the broker kept it) does not run it and answers 'expired': an actuator must not move "
        "hours after someone asked.",
    )


class CommandResult(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    id: MessageId
    gateway: GatewayId
    ok: bool
    error: Annotated[str, Field(max_length=2000)] = ""
    expired: bool = Field(default=False, description="Not run: it arrived after expires_at.")
    ts: EpochMs


class PlatformAlert(_Msg):
    """What the city platform receives: the edge's alert event plus where it came from.

    The platform messages are built by the centre from what it stored (already in range): their
    numbers are bounded to 64 bits, their strings are as the registry keeps them."""

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["alert"] = "alert"
    gateway: str
    alert_id: str
    state: AlertState
    rule: str
    category: str
    severity: Severity
    device: str
    point: str
    location: Location
    value: Value
    peak: Value = None
    threshold: float | None = None
    unit: str = ""
    message: str = ""
    raised_at: Int64
    ts: Int64
    text: dict[str, str] = Field(
        default_factory=dict,
        description="The alert as a sentence for people, by language: zh_CN first, then en "
        "(filled by gridwatch/ground/alertwords.py; ``message`` is the rule's own words).",
    )

    @classmethod
    def from_event(cls, ev: AlertEvent) -> PlatformAlert:
        data = ev.model_dump(exclude={"v", "id", "seq", "session", "kind"})
        return cls(**data)


class Department(_Msg):
    """A responsible (dispatch) department, as the catalogue names it."""

    code: str
    zh: str
    en: str


CaseStage = Literal["reported", "filed", "dispatched", "disposed", "verified", "closed"]
CaseAction = Literal["open", "file", "dispatch", "dispose", "verify", "reject", "close", "urge"]


class PlatformLifecycle(_Msg):
    """A step of an alert's case in the city's workflow (上报 立案 派遣 处置 核查 结案, 督办),
    with the incident it belongs to.

    ``action`` ``open`` is sent once per alert when the centre first stores it (stage
    ``reported``); alerts with the same ``incident_id`` are one incident (``incident_new`` is
    true on its first alert only). ``urge`` (督办) keeps the stage. ``actor`` ``sensor`` marks a
    verification (or a re-dispatch) the sensor's own reports decided.
    """

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["lifecycle"] = "lifecycle"
    alert_id: str
    incident_id: str
    incident_new: bool = False
    action: CaseAction
    stage: CaseStage
    actor: str = Field(description="Who: a token's name, 'centre' or 'sensor'.")
    note: str = Field(default="", description="The step's note: a person's as typed; the "
                      "centre's own in English.")  # fmt: skip
    note_zh: str = Field(default="", description="The centre's own note in Chinese; empty for "
                         "a person's note.")  # fmt: skip
    override: bool = Field(default=False, description="A person verified or closed it while "
                           "its sensor still reported the condition (the note says why).")  # fmt: skip
    sensor: str = Field(default="", description="On a verify or close the device did not "
                        "clear: what the sensor last reported, and why the step went against "
                        "it ('still reported', 'its device is retired', 'no reading for 30 h').")  # fmt: skip
    gateway: str
    device: str
    category: str
    class_code: str = Field(default="", description="4-digit class code (GB/T 30428.2).")
    component_id: str | None = Field(default=None, description="16-digit id of the city "
                                     "component (部件) the device is attached to.")  # fmt: skip
    department: Department | None = Field(default=None, description="Dispatched to.")
    area_class: str | None = Field(default=None, description="A, B or C: sets the time limit.")
    severity: Severity
    location: Location
    due_at: Int64 | None = Field(default=None, description="Epoch ms the time limit ends.")
    time_limit_min: Int64 | None = None
    overdue: bool = False
    urged: bool = Field(default=False, description="Urged (督办) at least once.")
    urge_count: Int64 = 0
    dispatch_count: Int64 = Field(default=0, description="Dispatches, re-dispatches included.")
    ts: Int64


PlatformMessage = Annotated[PlatformAlert | PlatformLifecycle, Field(discriminator="kind")]


UpstreamMessage = Annotated[
    TelemetryBatch | AlertEvent | GatewayHealth, Field(discriminator="kind")
]


Stream = Literal["telemetry", "alert", "health"]
"""The upstream streams that carry sequence numbers (an upstream message's ``kind``)."""
STREAMS: tuple[Stream, ...] = ("telemetry", "alert", "health")
RANGES_MAX = 100_000
"""Runs of numbers in one Ack or Repair: far more than one commit step or gap holds."""


def _forwards(run: tuple[int, int]) -> tuple[int, int]:
    if run[0] > run[1]:
        raise ValueError(f"range [{run[0]}, {run[1]}] runs backwards")
    return run


SeqRange = Annotated[tuple[Count, Count], AfterValidator(_forwards)]
"""An inclusive run of sequence numbers, first <= last."""
SeqRanges = Annotated[list[SeqRange], Field(max_length=RANGES_MAX)]


class Ack(_Msg):
    """The centre has committed these messages of one gateway (down, QoS 1, not retained).

    Sent after each registry commit, one per gateway and commit step, naming every message of
    the step by (stream, seq): stored, dropped as a duplicate, or quarantined; all are dealt
    with, so the edge may forget them. Runs of numbers rather than a watermark: under a shared
    subscription each bridge commits a different subset of one stream."""

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["ack"] = "ack"
    gateway: GatewayId
    ts: EpochMs
    streams: dict[Stream, SeqRanges] = Field(
        description="Per stream, the committed sequence numbers as inclusive [first, last] runs."
    )


class Repair(_Msg):
    """The centre never received these numbers of one stream: send them again if still held
    (down, QoS 1). The edge answers with the original messages (same id and seq)."""

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["repair"] = "repair"
    gateway: GatewayId
    stream: Stream
    ranges: SeqRanges = Field(min_length=1, description="Inclusive [first, last] runs.")
    ts: EpochMs


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sequence numbers -> the fewest inclusive runs that hold them, ascending."""
    runs: list[tuple[int, int]] = []
    for n in sorted(set(seqs)):
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def encode_acks(delivered: Iterable[tuple[str, str, int]], ts: int) -> dict[str, Ack]:
    """(gateway, stream, seq) of everything a commit step dealt with -> one Ack per gateway.
    Keys outside the contract (a stream that is not one, a gateway id it refuses) are left out:
    they did not come from a gateway's outbox."""
    by_gateway: dict[str, dict[str, set[int]]] = {}
    for gateway, stream, seq in delivered:
        if stream in STREAMS and 0 <= seq <= INT64_MAX:
            by_gateway.setdefault(gateway, {}).setdefault(stream, set()).add(seq)
    acks: dict[str, Ack] = {}
    for gateway, streams in by_gateway.items():
        try:
            acks[gateway] = Ack.model_validate(
                {"gateway": gateway, "ts": ts,
                 "streams": {s: seq_ranges(n) for s, n in streams.items()}}
            )  # fmt: skip
        except ValidationError:
            continue
    return acks


def new_id() -> str:
    return uuid.uuid4().hex


class Topics:
    """Topic names under one prefix. Pure string work, shared by both ends."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix.rstrip("/")

    def gateway(self, gateway_id: str, leaf: str) -> str:
        return f"{self.prefix}/gw/{gateway_id}/{leaf}"

    def status(self, gw: str) -> str:
        return self.gateway(gw, "status")

    def telemetry(self, gw: str) -> str:
        return self.gateway(gw, "telemetry")

    def alert(self, gw: str) -> str:
        return self.gateway(gw, "alert")

    def health(self, gw: str) -> str:
        return self.gateway(gw, "health")

    def config(self, gw: str) -> str:
        return self.gateway(gw, "config")

    def config_ack(self, gw: str) -> str:
        return self.gateway(gw, "config/ack")

    def command(self, gw: str) -> str:
        return self.gateway(gw, "cmd")

    def command_result(self, gw: str) -> str:
        return self.gateway(gw, "cmd/result")

    def ack(self, gw: str) -> str:
        return self.gateway(gw, "ack")

    def repair(self, gw: str) -> str:
        return self.gateway(gw, "repair")

    def all_gateways(self, leaf: str) -> str:
        """Subscription filter for one leaf of every gateway."""
        return f"{self.prefix}/gw/+/{leaf}"

    def platform_alert(self, district: str, category: str, severity: str) -> str:
        return f"{self.prefix}/platform/alert/{_level(district)}/{_level(category)}/{severity}"

    def platform_alerts(self) -> str:
        return f"{self.prefix}/platform/alert/#"

    def platform(self, kind: str, district: str, category: str, severity: str) -> str:
        """``kind``: alert or lifecycle (a platform message's ``kind``)."""
        return f"{self.prefix}/platform/{kind}/{_level(district)}/{_level(category)}/{severity}"

    def platform_all(self) -> str:
        return f"{self.prefix}/platform/#"

    def parse_gateway_topic(self, topic: str) -> tuple[str, str] | None:
        """``P/gw/G/leaf...`` -> (G, leaf); None for a topic outside the gateway tree."""
        head = f"{self.prefix}/gw/"
        if not topic.startswith(head):
            return None
        gw, _, leaf = topic[len(head) :].partition("/")
        if not gw or not leaf:
            return None
        return gw, leaf


def _level(name: str) -> str:
    """A topic level from free text: MQTT wildcards and separators are not allowed in it."""
    cleaned = "".join("_" if c in "/+#" else c for c in name.strip())
    return cleaned or "_"
