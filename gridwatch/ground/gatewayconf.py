"""A gateway's configuration: its identity, uplink, outbox, buses and devices.

Devices refer to profiles by id; ``resolve`` joins them into what the edge runs. Secrets come from
the environment (``password_env``), never from the YAML.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from firmware_configs import PROFILES
from gridwatch.ground.contract import DEFAULT_PREFIX, Location
from gridwatch.ground.profiles import ModbusProfile, MqttProfile, Rule, Strict, load_profiles
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import ConfigError, ConfigProblem, KeyPath, line_map, load_model


class GatewayIdentity(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Gateway id; its MQTT username.")
    location: Location = Field(default_factory=Location, description="Where the cabinet stands.")


DEFAULT_BROKER_HOST = "127.0.0.1"
DEFAULT_BROKER_PORT = 1883
MAX_BROKERS = 16
"""A broker cluster has a handful of nodes; a longer list is a mistake (each dead one costs a try)."""


class BrokerEndpoint(Strict):
    host: str = Field(min_length=1, description="Broker host (one node of the broker cluster).")
    port: int = Field(default=DEFAULT_BROKER_PORT, ge=1, le=65535, description="Broker port.")
    tls: bool | None = Field(default=None, description="Connect with TLS; default: mqtt.tls.")


class MqttUplink(Strict):
    host: str | None = Field(
        default=None, min_length=1,
        description=f"Central broker host (one broker; default {DEFAULT_BROKER_HOST}); "
        "several: use endpoints instead.",
    )  # fmt: skip
    port: int | None = Field(
        default=None, ge=1, le=65535,
        description=f"Central broker port (default {DEFAULT_BROKER_PORT}); with host.",
    )  # fmt: skip
    endpoints: list[BrokerEndpoint] | None = Field(
        default=None, min_length=1, max_length=MAX_BROKERS,
        description="Several brokers (the nodes of a cluster), tried in turn: when the one in "
        "use is gone, the uplink moves to the next. Instead of host and port.",
    )  # fmt: skip
    prefix: str = Field(default=DEFAULT_PREFIX, description="Topic prefix of the whole tree.")
    username: str | None = Field(default=None, description="Defaults to the gateway id.")
    password_env: str | None = Field(
        default=None, description="Environment variable holding the password."
    )
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_file: str | None = Field(default=None, description="CA bundle for the broker's cert.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="MQTT version; auto tries 5, falls back to 3.1.1."
    )
    keepalive_s: int = Field(default=15, ge=2, description="MQTT keepalive.")
    batch_max: int = Field(default=500, ge=1, description="Readings per telemetry message.")
    batch_linger_s: float = Field(default=0.2, ge=0, description="Wait to fill a batch.")
    ack: Literal["centre", "broker"] = Field(
        default="centre",
        description="When a message may leave the outbox: 'centre' once the central platform "
        "has committed it (its Ack), 'broker' at the broker's PUBACK (for a third-party centre "
        "that never acknowledges; a broker crash then loses what it had not delivered).",
    )
    ack_timeout_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="With ack: centre, a message sent and not acknowledged within this is sent "
        "again (the centre drops repeats by message id); doubled while the centre stays silent.",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _one_broker_by_default(cls, data: Any) -> Any:
        # defaults filled in only without endpoints, so that "both given" means both written,
        # and a config that names the default broker equals one that leaves it out
        if isinstance(data, dict) and data.get("endpoints") is None:
            return {"host": DEFAULT_BROKER_HOST, "port": DEFAULT_BROKER_PORT, **data}
        return data

    @field_validator("endpoints")
    @classmethod
    def _endpoints_or_host(
        cls, value: list[BrokerEndpoint] | None, info: ValidationInfo
    ) -> list[BrokerEndpoint] | None:
        # a field validator (not a model one) so the error points at the endpoints line
        given = [k for k in ("host", "port") if info.data.get(k) is not None]
        if value is not None and given:
            raise ValueError(
                f"give the broker either as host/port (one broker) or as endpoints (several), "
                f"not both: move {' and '.join(given)} into the endpoints list"
            )
        seen = [(e.host, e.port) for e in value or []]
        twice = sorted({f"{h}:{p}" for h, p in seen if seen.count((h, p)) > 1})
        if twice:
            raise ValueError(f"each broker once: {', '.join(twice)} is listed twice")
        return value

    def brokers(self) -> list[BrokerEndpoint]:
        """The brokers to use, in order, each with its TLS switch resolved."""
        listed = self.endpoints or [
            BrokerEndpoint(host=self.host or DEFAULT_BROKER_HOST,
                           port=self.port or DEFAULT_BROKER_PORT)
        ]  # fmt: skip
        return [e if e.tls is not None else e.model_copy(update={"tls": self.tls}) for e in listed]

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


class OutboxConfig(Strict):
    path: str = Field(default="var/edge/outbox.db", description="SQLite file of the outbox.")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=4096, description="Bound on its size.")
    keep_acked_s: float = Field(
        default=600.0, ge=0,
        description="How long a message the centre acknowledged is kept, to answer the centre's "
        "repair requests; less when its bytes are needed under max_bytes.",
    )  # fmt: skip


class ModbusTcpBus(Strict):
    type: Literal["modbus_tcp"]
    id: str = Field(description="Bus id that devices refer to.")
    host: str = Field(description="Device or converter host.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")
    timeout_s: float = Field(default=1.0, gt=0, description="Per-request timeout.")
    max_concurrency: int = Field(default=1, ge=1, le=32, description="Requests in flight.")
    framer: Literal["socket", "rtu"] = Field(default="socket", description="rtu = RTU over TCP.")


class ModbusRtuBus(Strict):
    type: Literal["modbus_rtu"]
    id: str = Field(description="Bus id that devices refer to.")
    port: str = Field(description="Serial device, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, description="Line speed.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits.")
    timeout_s: float = Field(default=0.5, gt=0, description="Per-request timeout.")


class MqttSensorBus(Strict):
    type: Literal["mqtt"]
    id: str = Field(description="Bus id that devices refer to.")
    host: str = Field(default="127.0.0.1", description="Local broker the sensors publish to.")
    port: int = Field(default=1883, ge=1, le=65535, description="Local broker port.")


Bus = Annotated[ModbusTcpBus | ModbusRtuBus | MqttSensorBus, Field(discriminator="type")]


class DeviceEntry(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", description="Device id, unique per gateway.")
    profile: str = Field(description="Profile id.")
    bus: str = Field(description="Bus id.")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    address: str = Field(default="", description="MQTT device address used in its topic.")
    location: Location = Field(default_factory=Location, description="Where it is installed.")
    interval_s: float | None = Field(default=None, gt=0, description="Override poll interval.")
    rules: list[Rule] | None = Field(default=None, description="Replace the profile's rules.")


class GatewayConfig(Strict):
    version: int = Field(default=1, ge=0, description="Config version, bumped on every change.")
    gateway: GatewayIdentity
    mqtt: MqttUplink = Field(default_factory=MqttUplink, description="Uplink to the centre.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Store-and-forward.")
    profiles_dir: str = Field(default="", description="Profile folder; default: the shipped one.")
    health_interval_s: float = Field(default=30.0, gt=0, description="Gateway health period.")
    buses: list[Bus] = Field(description="Field buses and endpoints.")
    devices: list[DeviceEntry] = Field(description="Devices on those buses.")

    @model_validator(mode="after")
    def _check_refs(self) -> GatewayConfig:
        bus_ids = [b.id for b in self.buses]
        if len(set(bus_ids)) != len(bus_ids):
            raise ValueError("bus ids must be unique")
        # counted once: list.count per device made a 50,000-device config take minutes
        dupes = sorted(d for d, n in Counter(x.id for x in self.devices).items() if n > 1)
        if dupes:
            raise ValueError(f"device ids must be unique: {dupes}")
        for d in self.devices:
            if d.bus not in bus_ids:
                raise ValueError(f"device {d.id!r} is on unknown bus {d.bus!r}")
        return self


class ResolvedDevice(Strict):
    """A device entry joined with its profile: what the edge actually runs."""

    entry: DeviceEntry
    profile: ModbusProfile | MqttProfile
    bus: ModbusTcpBus | ModbusRtuBus | MqttSensorBus
    location: Location
    interval_s: float
    rules: list[Rule]

    @property
    def id(self) -> str:
        return self.entry.id


def _line(lines: dict[KeyPath, int], at: KeyPath) -> int | None:
    return lines.get(at) or lines.get(at[:2])


def default_profiles_dir() -> Path:
    """The profiles gridwatch ships (package data, wherever gridwatch is installed)."""
    return firmware(PROFILES)


def resolve(
    cfg: GatewayConfig, profiles: dict[str, ModbusProfile | MqttProfile], file: str = ""
) -> list[ResolvedDevice]:
    """Join devices with profiles and buses; every unknown profile or mismatch reported."""
    buses = {b.id: b for b in cfg.buses}
    lines = line_map(Path(file).read_text(encoding="utf-8")) if file and Path(file).exists() else {}
    out, problems = [], []
    for i, d in enumerate(cfg.devices):
        where = ("devices", i, "profile")
        prof = profiles.get(d.profile)
        if prof is None:
            problems.append(
                ConfigProblem(file, lines.get(where), where, "unknown profile", d.profile)
            )
            continue
        bus = buses[d.bus]
        if (prof.protocol == "mqtt") != (bus.type == "mqtt"):
            msg = f"profile protocol {prof.protocol!r} cannot run on a {bus.type} bus"
            problems.append(ConfigProblem(file, lines.get(where), where, msg, d.profile))
            continue
        interval = d.interval_s or prof.interval_s
        if bus.type != "mqtt" and bus.timeout_s >= interval:
            # a poll that may outlive its interval would always collide with the next one
            at: KeyPath = ("devices", i, "interval_s" if d.interval_s else "bus")
            msg = f"poll interval {interval}s must be longer than bus {bus.id!r} timeout {bus.timeout_s}s"
            problems.append(ConfigProblem(file, _line(lines, at), at, msg, interval))
            continue
        loc = d.location.model_copy(
            update={
                k: v
                for k, v in cfg.gateway.location.model_dump().items()
                if not getattr(d.location, k)
            }
        )
        out.append(
            ResolvedDevice(
                entry=d,
                profile=prof,
                bus=bus,
                location=loc,
                interval_s=d.interval_s or prof.interval_s,
                rules=d.rules if d.rules is not None else prof.rules,
            )
        )
    if problems:
        raise ConfigError(problems)
    return out


def resolve_with_profiles(
    cfg: GatewayConfig, file: str = "", base: Path | None = None
) -> list[ResolvedDevice]:
    """Resolve against the config's profile folder (relative to ``base``) or the shipped one."""
    pdir = Path(cfg.profiles_dir) if cfg.profiles_dir else default_profiles_dir()
    if cfg.profiles_dir and not pdir.is_absolute() and base is not None:
        pdir = base / pdir
    return resolve(cfg, load_profiles(pdir), file)


def load_gateway(path: Path | str) -> tuple[GatewayConfig, list[ResolvedDevice]]:
    """Load a gateway config and its profiles; raises ConfigError with every problem found."""
    cfg = load_model(GatewayConfig, path)
    return cfg, resolve_with_profiles(cfg, str(path), Path(path).parent)
