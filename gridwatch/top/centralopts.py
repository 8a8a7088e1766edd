"""The options of ``central run``, ``registry serve`` and ``bridge run``: a config file
(``-c central.yaml``, ``gridwatch.ground.centralconf``) with flags as overrides.

Each subcommand accepts exactly the options it uses (``ROLES``); docs/central.md has the table. The
flags have no argparse defaults: a flag that is not given is absent, so ``CentralOptions`` can tell
it from one given with the default's value, and takes the file's value (or the model's default)
instead. Building the parser loads no role module.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from gridwatch.ground.endpoints import parse_endpoints

# gridwatch.ground.centralconf (pydantic, the models) is imported when a centre subcommand's
# options are parsed or its help is shown, not when the parser is built: every other command
# (health, gateway add) would pay seconds for it


def _bridge_id(value: str) -> str:
    from gridwatch.ground.centralconf import check_bridge_id

    try:
        check_bridge_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is {exc}") from None
    return value


def _brokers(value: str) -> str:
    """``--mqtt-host``: one broker host, or several as ``host[:port],host[:port]``; checked here,
    split where the sessions are built."""
    try:
        parse_endpoints(value, 1883)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


class CentralOptions(argparse.ArgumentParser):
    """A subcommand parser whose result is the merged options: defaults < ``-c`` file <
    environment (the secrets it names) < flags. A bad file ends the command with every problem
    as ``file:line: key -> path: message`` and exit status 1; so does a broken catalogue (the
    folder ``GRIDWATCH_CATALOGUE`` names), at start rather than at the first alert."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(argument_default=argparse.SUPPRESS, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        from gridwatch.ground.catalogue import default_catalogue_dir, load_catalogue
        from gridwatch.ground.centralconf import Loaded, load_central, settle
        from gridwatch.ground.yamlconf import ConfigError

        given, rest = super().parse_known_args(args, None)
        flags = vars(given)
        path = flags.pop("config", None)
        accepted = {a.dest for a in self._actions if a.dest not in ("help", "config")}
        try:
            loaded = load_central(path) if path else Loaded()
            values = settle(loaded, flags, accepted)
            load_catalogue(default_catalogue_dir())
        except ConfigError as exc:
            self.exit(1, f"{self.prog}: the configuration is not valid:\n{exc}\n")
        merged = namespace if namespace is not None else argparse.Namespace()
        for key, value in {**values, "config": path}.items():
            setattr(merged, key, value)
        return merged, rest

    def format_help(self) -> str:
        from gridwatch.ground.centralconf import OPTIONS, option_default

        for action in self._actions:
            default = option_default(action.dest) if action.dest in OPTIONS else None
            if action.help and default not in (None, False) and "; default" not in action.help:
                action.help = f"{action.help[:-1]}; default {default}]"
        return super().format_help()


Adder = Callable[[argparse.ArgumentParser], None]


def _opt(p: argparse.ArgumentParser, flag: str, help: str, key: str, **kw: Any) -> None:
    # the default is added to the help when it is shown (CentralOptions.format_help)
    p.add_argument(flag, help=f"{help} [file: {key}]", **kw)


def store_args(p: argparse.ArgumentParser) -> None:
    _opt(p, "--data-dir", "SQLite files and state", "data_dir")
    _opt(p, "--db-url", "SQLAlchemy URL of the registry database; none: SQLite in the data dir",
         "database.url")  # fmt: skip


def broker_args(p: argparse.ArgumentParser) -> None:
    _opt(p, "--mqtt-host", "broker host, or the nodes of a broker cluster as host[:port],"
         "host[:port] (used in turn: on a loss the next); none: embedded broker",
         "mqtt.endpoints", type=_brokers)  # fmt: skip
    _opt(p, "--mqtt-port", "broker port (of those given without one; or the embedded broker's)",
         "mqtt.port", type=int)  # fmt: skip
    _opt(p, "--mqtt-username", "the centre's broker username", "mqtt.username")
    _opt(p, "--mqtt-password-env", "env var holding its password", "mqtt.password_env")
    _opt(p, "--mqtt-protocol", "MQTT version to the broker; auto tries 5, then 3.1.1",
         "mqtt.protocol", choices=["auto", "5", "3.1.1"])  # fmt: skip
    _opt(p, "--prefix", "topic prefix", "mqtt.prefix")
    _opt(p, "--bridge-id", "prefix of the centre's MQTT client ids (-telemetry, -events, "
         "-registry, -platform); unique per bridge; not gridwatch-edge-*, the gateways' ids",
         "mqtt.client_id", type=_bridge_id)  # fmt: skip


def http_args(p: argparse.ArgumentParser) -> None:
    _opt(p, "--http-host", "registry API listen address", "http.host")
    _opt(p, "--http-port", "registry API port", "http.port", type=int)
    _opt(p, "--tls-cert", "serve the API over HTTPS with this cert", "http.tls_cert")
    _opt(p, "--tls-key", "and this private key", "http.tls_key")


def sink_args(p: argparse.ArgumentParser) -> None:
    _opt(p, "--influx-url", "InfluxDB v2 write API; none: SQLite", "timeseries.influx_url")
    _opt(p, "--influx-bucket", "InfluxDB bucket", "timeseries.bucket")
    _opt(p, "--influx-org", "InfluxDB organisation", "timeseries.org")
    _opt(p, "--influx-token-env", "env var holding the InfluxDB token", "timeseries.token_env")
    _opt(p, "--history-hours", "telemetry history kept by the embedded SQLite sink",
         "timeseries.history_hours", type=float)  # fmt: skip
    _opt(p, "--share-group", "MQTT 5 shared subscription group", "bridge.share_group")


def installer_args(p: argparse.ArgumentParser) -> None:
    """The registry's own broker session and what generated configs say (docs/registry.md)."""
    _opt(p, "--broker-admin-user", "registry's broker user (configs, commands; dynsec admin); "
         "default: --mqtt-username", "registry.username")  # fmt: skip
    _opt(p, "--broker-admin-password-env", "env var holding its password; default: "
         "--mqtt-password-env", "registry.password_env")  # fmt: skip
    _opt(p, "--dynsec", "admit and revoke gateways through mosquitto's dynamic-security plugin",
         "registry.dynsec", action="store_true")  # fmt: skip
    _opt(p, "--gateway-mqtt-host", "broker host (or host[:port],host[:port]) that generated "
         "gateway configs name; default: --mqtt-host", "gateway_mqtt.endpoints", type=_brokers)  # fmt: skip
    _opt(p, "--gateway-mqtt-port", "broker port for gateways (e.g. its TLS listener); default: "
         "--mqtt-port", "gateway_mqtt.port", type=int)  # fmt: skip
    _opt(p, "--gateway-mqtt-ca", "CA file gateways check the broker's certificate with (turns "
         "TLS on)", "gateway_mqtt.ca_file")  # fmt: skip


def _scale(value: str) -> float:
    try:
        scale = float(value)
    except ValueError:
        scale = math.nan
    if not 0 < scale <= 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a scale: a number above 0 and at most 1 (0.01 makes an hour's "
            "time limit 36 s)"
        )
    return scale


def drill_args(p: argparse.ArgumentParser) -> None:
    """Of the processes that open alerts (``central run``, ``bridge run``): docs/alerts.md."""
    _opt(p, "--escalation-scale", "drill: every time of the case workflow (filing hold, time "
         "limit, verification window) times FACTOR (0.01: 60 min -> 36 s), for cases from now "
         "on; 1 in service", "bridge.escalation_scale",
         type=_scale, metavar="FACTOR")  # fmt: skip


def metrics_args(p: argparse.ArgumentParser) -> None:
    _opt(p, "--http-host", "listen address of /metrics", "http.host")
    _opt(p, "--metrics-port", "serve /metrics here", "bridge.metrics_port", type=int)


ROLES: dict[str, tuple[Adder, ...]] = {
    "central run": (store_args, http_args, broker_args, installer_args, sink_args, drill_args),
    "registry serve": (store_args, http_args, broker_args, installer_args),
    "bridge run": (store_args, broker_args, sink_args, metrics_args, drill_args),
}
"""The option groups each subcommand takes: the ones it uses, no more."""


def add_role(parent: argparse.ArgumentParser, name: str, role: str, help: str) -> None:
    """Add subcommand ``name`` of ``parent`` with ``ROLES[role]``'s options and ``-c``."""
    sub = parent.add_subparsers(dest="sub", required=True, parser_class=CentralOptions)
    p = sub.add_parser(name, help=help)
    p.add_argument("-c", "--config", help="central.yaml (docs/central.md; gridwatch config "
                   "example central prints a commented one); flags override it")  # fmt: skip
    for adder in ROLES[role]:
        adder(p)
