"""A gateway's config, generated from what the registry knows: pure, no I/O beyond the profiles.

The fixed part (uplink, outbox, buses, health period) is kept with the gateway as it was set at
registration, because the edge refuses a push that changes its uplink or outbox (that needs a
restart); the devices come from the registered, non-retired devices assigned to it. The result is
validated with the same models and profile resolution the edge runs, so a config the registry
accepts is one the gateway accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gridwatch.ground.contract import DEFAULT_PREFIX, Location
from gridwatch.ground.endpoints import parse_endpoints
from gridwatch.ground.gatewayconf import GatewayConfig, resolve
from gridwatch.ground.profiles import ModbusProfile, MqttProfile
from gridwatch.ground.yamlconf import ConfigError, data_paths, problems_from

PASSWORD_ENV = "GRIDWATCH_MQTT_PASSWORD"
"""The environment variable the generated config tells the edge to read its password from."""

Profiles = dict[str, ModbusProfile | MqttProfile]


@dataclass(frozen=True)
class Uplink:
    """How gateways reach the central broker: what generated configs say."""

    host: str = "127.0.0.1"
    """One broker host, or the nodes of a cluster as ``host[:port],host[:port]``: the config
    then lists them as ``endpoints``, which the edge uses in turn."""
    port: int = 1883
    """The port of a broker given without one."""
    prefix: str = DEFAULT_PREFIX
    tls: bool = False
    ca_file: str | None = None

    def mqtt_block(self, username: str) -> dict[str, Any]:
        """``username``: the gateway's broker account (``provisioning.username_for``); the
        edge would otherwise log in with its bare id, a name the registry does not own."""
        brokers = parse_endpoints(self.host, self.port)
        where: dict[str, Any] = (
            {"host": brokers[0].host, "port": brokers[0].port} if len(brokers) == 1
            else {"endpoints": [{"host": b.host, "port": b.port} for b in brokers]}
        )  # fmt: skip
        block: dict[str, Any] = {**where, "prefix": self.prefix, "username": username,
                                 "password_env": PASSWORD_ENV}  # fmt: skip
        if self.tls:
            block.update(tls=True, ca_file=self.ca_file)
        return block


@dataclass(frozen=True)
class DeviceSpec:
    """One registered device, as configgen needs it."""

    id: str
    profile: str
    bus: str
    unit_id: int | None
    address: str
    location: Location


class ConfigProblems(Exception):
    """The generated config would not run: (field path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems


def initial_settings(
    uplink: Uplink, buses: list[dict[str, Any]], gateway: str, username: str
) -> dict[str, Any]:
    return {
        "mqtt": uplink.mqtt_block(username),
        "outbox": {"path": f"var/edge/{gateway}/outbox.db"},
        "buses": buses,
    }


def document(
    gateway: str, location: Location, settings: dict[str, Any], devices: list[DeviceSpec],
    version: int,
) -> dict[str, Any]:  # fmt: skip
    """The config document (as in a gateway YAML file)."""
    entries = []
    for d in sorted(devices, key=lambda d: d.id):
        entry: dict[str, Any] = {"id": d.id, "profile": d.profile, "bus": d.bus}
        if d.unit_id is not None:
            entry["unit_id"] = d.unit_id
        if d.address:
            entry["address"] = d.address
        loc = d.location.model_dump(exclude_defaults=True)
        if loc:
            entry["location"] = loc
        entries.append(entry)
    return {
        "version": version,
        "gateway": {"id": gateway, "location": location.model_dump(exclude_defaults=True)},
        **{k: v for k, v in settings.items() if k != "buses"},
        "buses": settings.get("buses", []),
        "devices": entries,
    }


def validate(doc: dict[str, Any], profiles: Profiles) -> GatewayConfig:
    """Raise ``ConfigProblems`` with key paths (``devices -> 2 -> profile``) when it won't run."""
    try:
        cfg = GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        found = problems_from(exc, "generated config", data_paths(doc))
        raise ConfigProblems([(_path(p.path), _msg(p.message, p.value)) for p in found]) from exc
    try:
        resolve(cfg, profiles)
    except ConfigError as exc:
        raise ConfigProblems(
            [(_path(p.path), _msg(p.message, p.value)) for p in exc.problems]
        ) from exc
    return cfg


def _path(path: tuple[str | int, ...]) -> str:
    return " -> ".join(str(k) for k in path) or "(top level)"


def _msg(message: str, value: object) -> str:
    return message if value is None else f"{message} (got {value!r})"
