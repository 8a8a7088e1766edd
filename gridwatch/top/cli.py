"""The ``gridwatch`` command: one subcommand per role.

Each role's module is imported only when its subcommand runs, so ``gridwatch config check`` does
not load pymodbus and the edge never loads the registry.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
from collections.abc import Sequence

from gridwatch.ground.endpoints import parse_endpoints
from gridwatch.top import healthcli
from gridwatch.top.extras import missing_extras

# subcommand path -> "module:function"; each function takes the parsed args, returns an exit code
COMMANDS: dict[tuple[str, ...], str] = {
    ("edge", "run"): "edge.app:main",
    ("central", "run"): "gridwatch.top.central:main",
    ("registry", "serve"): "device_registry.http.app:main",
    ("bridge", "run"): "cloud_bridge.app:main",
    ("health",): "gridwatch.top.healthcli:main",
    ("sim",): "gridwatch.top.sim:main",
    ("probe", "modbus"): "gridwatch.top.probe:main",
    ("config", "check"): "gridwatch.top.configcheck:main",
    ("demo",): "gridwatch.top.demo:main",
    **{
        ("gateway", c): "gridwatch.top.installer:main"
        for c in ("add", "edit", "list", "show", "config", "retire", "new-password")
    },
    **{
        ("device", c): "gridwatch.top.installer:main"
        for c in ("add", "import", "list", "show", "retire", "commission", "command")
    },
    ("profile", "list"): "gridwatch.top.registrycli:main",
    ("profile", "show"): "gridwatch.top.registrycli:main",
    ("token", "create"): "gridwatch.top.registrycli:main",
    **{("alert", c): "gridwatch.top.registrycli:main" for c in ("list", "ack", "resolve", "close")},
}
# the extras (pyproject.toml) a command needs beyond the base install, checked before its module
# is imported (gridwatch.top.extras); a command not named here runs on the base alone. `edge run
# --metrics-port` needs "metrics" as well (_missing_extra).
EXTRAS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("edge", "run"): ("edge",),
    ("sim",): ("edge",),
    ("probe", "modbus"): ("edge",),
    ("central", "run"): ("central",),
    ("registry", "serve"): ("central",),
    ("bridge", "run"): ("central",),
    ("demo",): ("all",),
}
MISSING_EXTRA = 2
"""Exit status of a command whose extra is not installed: argparse's, for a command that cannot
run as asked."""
CLOSED_STDOUT = 141
"""Exit status when the reader of our output went away (``gridwatch health | head -3``): 128 +
SIGPIPE, what a shell reports for a Unix tool that SIGPIPE ended, so ``set -o pipefail`` scripts
tell it from a failure the command itself met."""
PROBE_EXIT_CODES = (
    "exit status: 0 read; 1 nothing answered (cannot connect, no answer in time, a garbled "
    "answer, or a converter saying the unit behind it is silent: 0x0A/0x0B); 2 bad arguments "
    "or profile; 3 the unit answered with a Modbus exception (it refused)"
)
"""gridwatch/top/probe.py's codes; here so that building the parser does not load pymodbus."""


def _bridge_id(value: str) -> str:
    # the centre's sessions are not bound to their accounts: an id in the gateways' space would
    # let gateway "<rest>-telemetry", bound to gridwatch-edge-<rest>-telemetry, take one over
    try:
        from device_registry.inventory.provisioning import EDGE_CLIENT_PREFIX
    except ModuleNotFoundError:  # argparse checks the default too: main() names the extra
        return value

    if value.startswith(EDGE_CLIENT_PREFIX) or not value:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a bridge id: it must not be empty or start with "
            f"{EDGE_CLIENT_PREFIX!r}, the client ids of gateways (docs/security.md)"
        )
    return value


def _brokers(value: str) -> str:
    """``--mqtt-host``: one broker host, or several as ``host[:port],host[:port]``; checked here,
    split where the sessions are built."""
    try:
        parse_endpoints(value, 1883)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


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


def _drill_args(p: argparse.ArgumentParser) -> None:
    """Of the processes that open alerts (``central run``, ``bridge run``): docs/alerts.md."""
    p.add_argument("--escalation-scale", type=_scale, default=1.0, metavar="FACTOR",
                   help="drill: every alert time limit times FACTOR (0.01: 60 min -> 36 s), "
                   "for alerts opened from now on; 1 (default) in service")  # fmt: skip


def _central_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="var/central", help="SQLite files and state")
    p.add_argument("--http-host", default="127.0.0.1", help="registry API listen address")
    p.add_argument("--http-port", type=int, default=8080, help="registry API port")
    p.add_argument("--mqtt-host", default=None, type=_brokers,
                   help="broker host, or the nodes of a broker cluster as host[:port],"
                   "host[:port] (used in turn: on a loss the next); none: embedded broker")  # fmt: skip
    p.add_argument("--mqtt-port", type=int, default=1883,
                   help="broker port (of those given without one; or the embedded broker's)")  # fmt: skip
    p.add_argument("--mqtt-username", default=None, help="bridge's broker username")
    p.add_argument("--mqtt-password-env", default=None, help="env var holding its password")
    p.add_argument("--prefix", default="gridwatch", help="topic prefix")
    p.add_argument("--influx-url", default=None, help="InfluxDB v2 write API; none: SQLite")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL; none: SQLite in data dir")
    p.add_argument("--share-group", default=None, help="MQTT 5 shared subscription group")
    p.add_argument(
        "--bridge-id",
        default="gridwatch-bridge",
        type=_bridge_id,
        help="prefix of the centre's MQTT client ids (-telemetry, -events, -registry, "
        "-platform); unique per bridge; not gridwatch-edge-*, the gateways' ids",
    )
    p.add_argument(
        "--mqtt-protocol",
        choices=["auto", "5", "3.1.1"],
        default="auto",
        help="MQTT version to the broker; auto tries 5, then 3.1.1",
    )
    p.add_argument("--influx-bucket", default="gridwatch", help="InfluxDB bucket")
    p.add_argument("--influx-org", default="gridwatch", help="InfluxDB organisation")
    p.add_argument("--influx-token-env", default=None, help="env var holding the InfluxDB token")
    p.add_argument(
        "--history-hours",
        type=float,
        default=48.0,
        help="telemetry history kept by the embedded SQLite sink",
    )


def _installer_args(p: argparse.ArgumentParser) -> None:
    """Registry options of ``registry serve`` and ``central run`` (docs/registry.md)."""
    p.add_argument("--broker-admin-user", default=None,
                   help="registry's broker user (configs, commands; dynsec admin); "
                   "default: --mqtt-username")  # fmt: skip
    p.add_argument(
        "--broker-admin-password-env",
        default=None,
        help="env var holding its password; default: --mqtt-password-env",
    )
    p.add_argument(
        "--dynsec",
        action="store_true",
        help="admit and revoke gateways through mosquitto's dynamic-security plugin",
    )
    p.add_argument(
        "--gateway-mqtt-host",
        default=None,
        type=_brokers,
        help="broker host (or host[:port],host[:port]) that generated gateway configs name; "
        "default: --mqtt-host",
    )
    p.add_argument(
        "--gateway-mqtt-port",
        type=int,
        default=None,
        help="broker port for gateways (e.g. its TLS listener); default: --mqtt-port",
    )
    p.add_argument(
        "--gateway-mqtt-ca",
        default=None,
        help="CA file gateways check the broker's certificate with (turns TLS on)",
    )
    p.add_argument("--tls-cert", default=None, help="serve the API over HTTPS with this cert")
    p.add_argument("--tls-key", default=None, help="and this private key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridwatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)

    edge = sub.add_parser("edge", help="the edge agent").add_subparsers(dest="sub", required=True)
    run = edge.add_parser("run", help="run the edge agent")
    run.add_argument("-c", "--config", required=True, help="gateway config YAML")
    run.add_argument("--validate-config", action="store_true", help="check config, exit 0/1")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")

    central = sub.add_parser("central", help="central platform")
    central_run = central.add_subparsers(dest="sub", required=True).add_parser(
        "run", help="registry + bridge in one process"
    )
    _central_args(central_run)
    _installer_args(central_run)
    _drill_args(central_run)

    reg = sub.add_parser("registry", help="device registry").add_subparsers(
        dest="sub", required=True
    )
    reg_serve = reg.add_parser("serve", help="serve the registry API alone")
    _central_args(reg_serve)
    _installer_args(reg_serve)
    bridge = sub.add_parser("bridge", help="cloud bridge").add_subparsers(dest="sub", required=True)
    bridge_run = bridge.add_parser("run", help="run the bridge alone")
    _central_args(bridge_run)
    _drill_args(bridge_run)
    bridge_run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")

    sim = sub.add_parser("sim", help="a field of simulated devices")
    sim.add_argument("-c", "--config", required=True, help="gateway config whose devices to serve")
    sim.add_argument("--speedup", type=float, default=1.0, help="run sim events faster")

    probe = sub.add_parser("probe", help="commissioning tools").add_subparsers(
        dest="sub", required=True
    )
    pm = probe.add_parser("modbus", help="read registers and show every decoding",
                          description="Read registers, coils or discrete inputs of one unit "
                          "and show what they mean; or read a unit as its profile declares.",
                          epilog=PROBE_EXIT_CODES)  # fmt: skip
    pm.add_argument("--host", default="127.0.0.1")
    pm.add_argument("--port", type=int, default=502)
    pm.add_argument("--serial", default=None, help="serial device instead of TCP")
    pm.add_argument("--baudrate", type=int, default=9600)
    pm.add_argument("--unit", type=int, default=1, help="unit id")
    pm.add_argument("--table", choices=["holding", "input", "coil", "discrete"],
                    default="holding",
                    help="registers (shown under every decoding) or bits (on/off)")  # fmt: skip
    pm.add_argument("--address", type=int, default=0, help="first address, from 0")
    pm.add_argument("--count", type=int, default=4, help="1..125 registers or 1..2000 bits")
    pm.add_argument("--profile", default=None, metavar="NAME",
                    help="read every point of a shipped profile (by id) or a profile file, "
                    "decoded with its unit and scale as the edge would; --table, --address "
                    "and --count are then not used")  # fmt: skip
    pm.add_argument("--scan", action="store_true", help="scan unit ids 1..247 that answer")
    pm.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for an answer")

    cfg = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="sub", required=True
    )
    check = cfg.add_parser("check", help="validate profiles and gateway configs")
    check.add_argument(
        "files",
        nargs="*",
        help="YAML files or folders; none: the shipped profiles, gateways, catalogue",
    )
    check.add_argument("--schema-dir", default=None, help="also write JSON Schemas here")

    # argparse only: no I/O modules load
    from gridwatch.top import installer, registrycli

    installer.add_parsers(sub)
    registrycli.add_parsers(sub)

    health = sub.add_parser("health", help="what is unhealthy in the field (exit 0/1/3)")
    healthcli.add_arguments(health)

    demo = sub.add_parser("demo", help="a simulated district, end to end, on this machine")
    demo.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    demo.add_argument(
        "--workdir",
        default="var/demo",
        help="where state and logs go (relative: to this directory)",
    )
    demo.add_argument("--speedup", type=float, default=1.0, help="run the rain event faster")
    return parser


def _missing_extra(key: tuple[str, ...], args: argparse.Namespace) -> str:
    """One line naming the extra the command lacks and how to install it, or ""."""
    command, needs = " ".join(("gridwatch", *key)), EXTRAS.get(key, ())
    if key == ("edge", "run") and args.metrics_port is not None:
        needs = (*needs, "metrics")
    missing = missing_extras(needs)
    if not missing:
        return ""
    if missing[0] == "metrics":
        command += " --metrics-port"
    return f'{command} needs the {missing[0]} extra: pip install "gridwatch[{",".join(needs)}]"'


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = _run(argv)
        sys.stdout.flush()  # a reader gone early shows here, inside the try, not at exit
        return result
    except BrokenPipeError:
        # quiet, as Unix tools are; stdout now points at devnull so that Python's own flush at
        # exit does not fail a second time (the recipe in the signal module's docs)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return CLOSED_STDOUT


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # alembic narrates every plugin and migration step at INFO: keep start-up logs readable
    logging.getLogger("alembic").setLevel(logging.WARNING)
    key = (args.cmd, args.sub) if getattr(args, "sub", None) else (args.cmd,)
    refusal = _missing_extra(key, args)
    if refusal:
        print(refusal, file=sys.stderr)
        return MISSING_EXTRA
    module, func = COMMANDS[key].split(":")
    result: int = getattr(importlib.import_module(module), func)(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
