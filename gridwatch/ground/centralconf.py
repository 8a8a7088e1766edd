"""The centre's config file, ``central.yaml``: one file for ``central run``, ``registry serve`` and
``bridge run``.

One file may serve all three: each role reads the sections it uses (``OPTIONS`` says which option
each key is), and the whole file is validated either way, so a typo anywhere is an error with its
file, line and key path (``gridwatch.ground.yamlconf``). Secrets are never in the file: a key names
the environment variable or the file that holds one (``password_env`` / ``password_file``, as the
gateway config's ``password_env``), and a named variable that is not set is an error, not an empty
password. ``GRIDWATCH_SECRET_KEY`` and ``GRIDWATCH_ADMIN_TOKEN`` stay environment variables.

Precedence, lowest first: the defaults here < the file < the environment (the secrets it names) <
the command-line flags (``gridwatch.top.cli``'s ``CentralOptions`` merges them with ``settle``).
A commented example ships as ``firmware_configs/central/central.example.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gridwatch.ground.contract import DEFAULT_PREFIX
from gridwatch.ground.endpoints import Endpoint
from gridwatch.ground.gatewayconf import MAX_BROKERS
from gridwatch.ground.profiles import Strict
from gridwatch.ground.yamlconf import (
    ConfigError,
    ConfigProblem,
    KeyPath,
    parse_yaml,
    read_text,
    validate,
)

EDGE_CLIENT_PREFIX = "gridwatch-edge-"
"""``device_registry.inventory.provisioning.EDGE_CLIENT_PREFIX``, the gateways' client ids, not
imported: ground imports no role (tests/test_centralconf.py checks they agree)."""


def check_bridge_id(value: str) -> None:
    """Raises ValueError unless ``value`` may be the prefix of the centre's client ids."""
    # the centre's sessions are not bound to their accounts: an id in the gateways' space would
    # let gateway "<rest>-telemetry", bound to gridwatch-edge-<rest>-telemetry, take one over
    if value.startswith(EDGE_CLIENT_PREFIX) or not value:
        raise ValueError(
            f"not a bridge id: it must not be empty or start with {EDGE_CLIENT_PREFIX!r}, "
            "the client ids of gateways (docs/security.md)"
        )


class Broker(Strict):
    host: str = Field(min_length=1, description="Broker host (one node of a broker cluster).")
    port: int | None = Field(default=None, ge=1, le=65535, description="Its port; default: the "
                             "section's port.")  # fmt: skip


def _brokers_text(brokers: list[Broker] | None) -> str | None:
    """As ``--mqtt-host`` writes them: ``host[:port],host[:port]``."""
    if not brokers:
        return None
    return ",".join(
        str(Endpoint(b.host, b.port)) if b.port else (f"[{b.host}]" if ":" in b.host else b.host)
        for b in brokers
    )


def _each_once(brokers: list[Broker] | None) -> None:
    seen = [(b.host, b.port) for b in brokers or []]
    twice = sorted({f"{h}:{p or ''}" for h, p in seen if seen.count((h, p)) > 1})
    if twice:
        raise ValueError(f"each broker once: {', '.join(twice)} is listed twice")


class _EnvOrFile(Strict):
    """A section with one secret, named by an environment variable or a file, not both."""

    @model_validator(mode="after")
    def _one_source(self) -> _EnvOrFile:
        for env, file in _SECRET_KEYS:
            if getattr(self, env, None) and getattr(self, file, None):
                raise ValueError(f"give {env} or {file}, not both")
        return self


class HttpSection(Strict):
    host: str = Field(default="127.0.0.1", description="Listen address of the registry API "
                      "(bridge run alone: of its /metrics).")  # fmt: skip
    port: int = Field(default=8080, ge=0, le=65535, description="Registry API port (0: any "
                      "free port, shown in the log).")  # fmt: skip
    tls_cert: str | None = Field(default=None, description="Serve the API over HTTPS with this "
                                 "certificate (PEM file).")  # fmt: skip
    tls_key: str | None = Field(default=None, description="...and this private key.")

    @model_validator(mode="after")
    def _key_with_cert(self) -> HttpSection:
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key without tls_cert: give both to serve HTTPS")
        return self


class DatabaseSection(_EnvOrFile):
    url: str | None = Field(default=None, description="SQLAlchemy URL of the registry database "
                            "without a password; none: SQLite in data_dir.")  # fmt: skip
    url_env: str | None = Field(default=None, description="Environment variable holding the URL "
                                "(a PostgreSQL URL carries its password).")  # fmt: skip
    url_file: str | None = Field(default=None, description="File holding the URL.")

    @model_validator(mode="after")
    def _one_url(self) -> DatabaseSection:
        if self.url and (self.url_env or self.url_file):
            raise ValueError("give url, url_env or url_file: one of them")
        return self


class MqttSection(_EnvOrFile):
    endpoints: list[Broker] | None = Field(
        default=None, min_length=1, max_length=MAX_BROKERS,
        description="The centre's broker, or the nodes of a broker cluster, used in turn: on a "
        "loss the next. None: an embedded broker on 127.0.0.1 (a trial, not the field).",
    )  # fmt: skip
    port: int = Field(default=1883, ge=1, le=65535, description="Port of the endpoints listed without "
                      "one; the embedded broker's port.")  # fmt: skip
    username: str | None = Field(default=None, description="The centre's broker username.")
    password_env: str | None = Field(default=None, description="Environment variable holding "
                                     "its password.")  # fmt: skip
    password_file: str | None = Field(default=None, description="File holding its password.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(default="auto", description="MQTT version; "
                                                    "auto tries 5, then 3.1.1.")  # fmt: skip
    prefix: str = Field(default=DEFAULT_PREFIX, min_length=1, description="Topic prefix.")
    client_id: str = Field(
        default="gridwatch-bridge", min_length=1,
        description="Prefix of the centre's MQTT client ids (-telemetry, -events, -registry, "
        "-platform); unique per bridge; not gridwatch-edge-*, the gateways' ids.",
    )  # fmt: skip

    @field_validator("endpoints")
    @classmethod
    def _each_broker_once(cls, value: list[Broker] | None) -> list[Broker] | None:
        _each_once(value)  # a field validator: the error points at the endpoints line
        return value

    @field_validator("client_id")
    @classmethod
    def _not_a_gateways_id(cls, value: str) -> str:
        check_bridge_id(value)
        return value


class RegistrySection(_EnvOrFile):
    username: str | None = Field(default=None, description="The registry's broker user "
                                 "(configs, commands; dynsec admin); default: mqtt.username.")  # fmt: skip
    password_env: str | None = Field(default=None, description="Environment variable holding "
                                     "its password; default: mqtt's password.")  # fmt: skip
    password_file: str | None = Field(default=None, description="File holding its password.")
    dynsec: bool = Field(default=False, description="Admit and revoke gateways through "
                         "mosquitto's dynamic-security plugin.")  # fmt: skip


class GatewayMqttSection(Strict):
    endpoints: list[Broker] | None = Field(
        default=None, min_length=1, max_length=MAX_BROKERS,
        description="The broker (or nodes) that generated gateway configs name; default: "
        "mqtt.endpoints.",
    )  # fmt: skip
    port: int | None = Field(default=None, ge=1, le=65535, description="Port of those listed without "
                             "one (e.g. the TLS listener); default: mqtt.port.")  # fmt: skip
    ca_file: str | None = Field(default=None, description="CA file gateways check the broker's "
                                "certificate with (turns TLS on for them).")  # fmt: skip

    @field_validator("endpoints")
    @classmethod
    def _each_broker_once(cls, value: list[Broker] | None) -> list[Broker] | None:
        _each_once(value)  # a field validator: the error points at the endpoints line
        return value


class TimeseriesSection(_EnvOrFile):
    influx_url: str | None = Field(default=None, description="InfluxDB v2 write API "
                                   "(VictoriaMetrics speaks it); none: embedded SQLite history.")  # fmt: skip
    bucket: str = Field(default="gridwatch", description="InfluxDB bucket.")
    org: str = Field(default="gridwatch", description="InfluxDB organisation.")
    token_env: str | None = Field(default=None, description="Environment variable holding the "
                                  "InfluxDB token.")  # fmt: skip
    token_file: str | None = Field(default=None, description="File holding the InfluxDB token.")
    history_hours: float = Field(default=48.0, gt=0, description="Telemetry history the "
                                 "embedded SQLite sink keeps.")  # fmt: skip


class BridgeSection(Strict):
    share_group: str | None = Field(default=None, description="MQTT 5 shared subscription group "
                                    "of several bridges.")  # fmt: skip
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="bridge run "
                                     "alone: serve /metrics on http.host at this port.")  # fmt: skip
    escalation_scale: float = Field(default=1.0, gt=0, le=1, description="Drill: every time "
                                    "of the case workflow (filing hold, time limit, verification "
                                    "window) times this (0.01: 60 min -> 36 s), for cases from "
                                    "then on; 1 in service (docs/alerts.md).")  # fmt: skip


class CentralConfig(Strict):
    data_dir: str = Field(default="var/central", description="SQLite files and state.")
    http: HttpSection = Field(default_factory=HttpSection, description="The registry API.")
    database: DatabaseSection = Field(default_factory=DatabaseSection,
                                      description="The registry database.")  # fmt: skip
    mqtt: MqttSection = Field(default_factory=MqttSection, description="The centre's broker: "
                              "every MQTT session of the process uses it.")  # fmt: skip
    registry: RegistrySection = Field(default_factory=RegistrySection,
                                      description="The registry's own broker session.")  # fmt: skip
    gateway_mqtt: GatewayMqttSection = Field(
        default_factory=GatewayMqttSection, description="What generated gateway configs say "
        "about the broker.",
    )  # fmt: skip
    timeseries: TimeseriesSection = Field(default_factory=TimeseriesSection,
                                          description="Where telemetry is written.")  # fmt: skip
    bridge: BridgeSection = Field(default_factory=BridgeSection, description="The bridge.")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # a section whose keys are all commented out reads as null: it means "the defaults"
        if isinstance(data, dict):
            return {k: {} if v is None and k != "data_dir" else v for k, v in data.items()}
        return data


_SECRET_KEYS = (("password_env", "password_file"), ("token_env", "token_file"),
                ("url_env", "url_file"))  # fmt: skip

OPTIONS: dict[str, KeyPath] = {
    "data_dir": ("data_dir",),
    "db_url": ("database", "url"),
    "http_host": ("http", "host"),
    "http_port": ("http", "port"),
    "tls_cert": ("http", "tls_cert"),
    "tls_key": ("http", "tls_key"),
    "mqtt_host": ("mqtt", "endpoints"),
    "mqtt_port": ("mqtt", "port"),
    "mqtt_username": ("mqtt", "username"),
    "mqtt_password_env": ("mqtt", "password_env"),
    "mqtt_protocol": ("mqtt", "protocol"),
    "prefix": ("mqtt", "prefix"),
    "bridge_id": ("mqtt", "client_id"),
    "broker_admin_user": ("registry", "username"),
    "broker_admin_password_env": ("registry", "password_env"),
    "dynsec": ("registry", "dynsec"),
    "gateway_mqtt_host": ("gateway_mqtt", "endpoints"),
    "gateway_mqtt_port": ("gateway_mqtt", "port"),
    "gateway_mqtt_ca": ("gateway_mqtt", "ca_file"),
    "influx_url": ("timeseries", "influx_url"),
    "influx_bucket": ("timeseries", "bucket"),
    "influx_org": ("timeseries", "org"),
    "influx_token_env": ("timeseries", "token_env"),
    "history_hours": ("timeseries", "history_hours"),
    "share_group": ("bridge", "share_group"),
    "metrics_port": ("bridge", "metrics_port"),
    "escalation_scale": ("bridge", "escalation_scale"),
}
"""Command-line option (argparse dest) -> its key in the file."""

SECRETS: dict[str, tuple[str, tuple[str, str]]] = {
    "mqtt_password": ("mqtt_password_env", ("mqtt", "password")),
    "broker_admin_password": ("broker_admin_password_env", ("registry", "password")),
    "influx_token": ("influx_token_env", ("timeseries", "token")),
}
"""Resolved secret (argparse dest) -> (the flag naming its variable, its section and key stem)."""


def option_default(dest: str) -> Any:
    """The default of ``dest``, as the flag writes it."""
    return _value(CentralConfig(), OPTIONS[dest])


def _value(cfg: CentralConfig, path: KeyPath) -> Any:
    node: Any = cfg
    for key in path:
        node = getattr(node, str(key))
    return _brokers_text(node) if path[-1] == "endpoints" else node


@dataclass(frozen=True)
class Loaded:
    """A config file (or none: the defaults) with its lines, for errors found after loading."""

    config: CentralConfig = field(default_factory=CentralConfig)
    file: str = ""
    lines: Mapping[KeyPath, int] = field(default_factory=dict)

    def problem(self, path: KeyPath, message: str, value: Any = None) -> ConfigProblem:
        line = next((self.lines[path[:n]] for n in range(len(path), 0, -1)
                     if path[:n] in self.lines), None)  # fmt: skip
        return ConfigProblem(self.file or "(defaults)", line, path, message, value)


def load_central(path: Path | str) -> Loaded:
    """Read and validate one ``central.yaml``; raises ConfigError with every problem found."""
    p = Path(path)
    text = read_text(p)
    data, lines = parse_yaml(text, str(p))
    cfg = validate(CentralConfig, {} if data is None else data, str(p), lines)
    return Loaded(cfg, str(p), lines)


_SECRET_MAX = 64 * 1024
"""A secret file is a password or a token: one longer is the wrong file (or /dev/zero)."""


def _secret(loaded: Loaded, section: str, stem: str) -> tuple[str | None, ConfigProblem | None]:
    """The secret a section names by ``<stem>_env`` or ``<stem>_file``; (None, None) if none."""
    sect = getattr(loaded.config, section)
    env, file = getattr(sect, f"{stem}_env"), getattr(sect, f"{stem}_file")
    if env:
        value = os.environ.get(env)
        if value is None:
            where = (section, f"{stem}_env")
            return None, loaded.problem(where, f"environment variable {env} is not set")
        return value, None
    if file:
        where = (section, f"{stem}_file")
        try:
            with open(file, "rb") as f:
                raw = f.read(_SECRET_MAX + 1)
            text = raw.decode("utf-8")
        except OSError as exc:
            return None, loaded.problem(where, f"cannot read {file}: {exc.strerror}")
        except UnicodeDecodeError:
            return None, loaded.problem(where, f"{file} is not UTF-8 text")
        if len(raw) > _SECRET_MAX:
            return None, loaded.problem(where, f"{file} is longer than {_SECRET_MAX} bytes: "
                                        "not a secret")  # fmt: skip
        # the line end an editor or `echo` adds is not part of the secret; other spaces are
        return text.rstrip("\r\n"), None
    return None, None


def settle(loaded: Loaded, flags: Mapping[str, Any], accepted: set[str]) -> dict[str, Any]:
    """The options of one subcommand (``accepted``: its argparse dests): each from its flag if
    given, else from the file, else the default; with the secrets read (``SECRETS``) and the
    database URL resolved. Raises ConfigError naming the file's line, or the flag, at fault."""
    out = {dest: _value(loaded.config, OPTIONS[dest]) for dest in accepted if dest in OPTIONS}
    out.update({k: v for k, v in flags.items() if k in accepted})
    problems: list[ConfigProblem] = []
    for dest, (flag_dest, (section, stem)) in SECRETS.items():
        if flag_dest not in accepted:
            continue
        if flag_dest in flags:  # the flag names another variable: the file's source is not used
            name = flags[flag_dest]
            out[dest] = os.environ.get(name) if name else None
            if name and out[dest] is None:
                flag = "--" + flag_dest.replace("_", "-")
                problems.append(
                    ConfigProblem(
                        "command line", None, (flag,), f"environment variable {name} is not set"
                    )
                )
            continue
        out[dest], problem = _secret(loaded, section, stem)
        problems += [problem] if problem else []
    if "db_url" in accepted and "db_url" not in flags and out.get("db_url") is None:
        out["db_url"], problem = _secret(loaded, "database", "url")
        problems += [problem] if problem else []
    if problems:
        raise ConfigError(problems)
    return out


__all__ = [
    "EDGE_CLIENT_PREFIX",
    "OPTIONS",
    "SECRETS",
    "CentralConfig",
    "Loaded",
    "check_bridge_id",
    "load_central",
    "settle",
]
