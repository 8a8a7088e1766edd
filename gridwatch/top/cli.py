"""The ``gridwatch`` command: one subcommand per role.

Each role's module is imported only when its subcommand runs, so ``gridwatch config check`` does
not load pymodbus and the edge never loads the registry.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from gridwatch.ground import i18n, logfmt
from gridwatch.ground.i18n import N_, _
from gridwatch.top import edgestatus, exits, healthcli, simopts
from gridwatch.top.centralopts import add_role
from gridwatch.top.extras import missing_extras

# subcommand path -> "module:function"; each function takes the parsed args, returns an exit code
COMMANDS: dict[tuple[str, ...], str] = {
    ("edge", "run"): "edge.app:main",
    ("edge", "status"): "gridwatch.top.edgestatus:main",
    ("central", "run"): "gridwatch.top.central:main",
    ("registry", "serve"): "device_registry.http.app:main",
    ("bridge", "run"): "cloud_bridge.app:main",
    ("health",): "gridwatch.top.healthcli:main",
    ("sim",): "gridwatch.top.sim:main",
    ("sim", "district"): "gridwatch.top.sim.districtrun:main",
    ("probe", "modbus"): "gridwatch.top.probe:main",
    ("config", "check"): "gridwatch.top.configcheck:main",
    ("config", "example"): "gridwatch.top.configcheck:example",
    ("catalogue", "import"): "gridwatch.top.cataloguecli:main",
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
    **{
        ("alert", c): "gridwatch.top.registrycli:main"
        for c in ("list", "file", "dispatch", "dispose", "verify", "reject", "close", "urge")
    },
}
# the extras (pyproject.toml) a command needs beyond the base install, checked before its module
# is imported (gridwatch.top.extras); a command not named here runs on the base alone. `edge run
# --metrics-port` needs "metrics" as well (_missing_extra).
EXTRAS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("edge", "run"): ("edge",),
    ("sim",): ("edge",),
    ("sim", "district"): ("edge",),
    ("probe", "modbus"): ("edge",),
    ("central", "run"): ("central",),
    ("registry", "serve"): ("central",),
    ("bridge", "run"): ("central",),
    ("demo",): ("all",),
}
MISSING_EXTRA = exits.USAGE
"""Exit status of a command whose extra is not installed: argparse's, for a command that cannot
run as asked."""
CLOSED_STDOUT = exits.CLOSED_STDOUT
"""Exit status when the reader of our output went away (``gridwatch health | head -3``): 128 +
SIGPIPE, what a shell reports for a Unix tool that SIGPIPE ended, so ``set -o pipefail`` scripts
tell it from a failure the command itself met."""
PROBE_EXIT_CODES = N_(
    "exit status: 0 read; 1 nothing answered (cannot connect, no answer in time, a garbled "
    "answer, or a converter saying the unit behind it is silent: 0x0A/0x0B); 2 bad arguments "
    "or profile; 4 the unit answered with a Modbus exception (it refused)"
)
"""gridwatch/top/probe.py's codes; here so that building the parser does not load pymodbus."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridwatch", description=_(
        "gridwatch: edge gateways, the device registry and the tools of the people who install "
        "and look after them. `gridwatch COMMAND --help` says more; docs/cli.md has them all."))  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help=_("debug logging"))
    parser.add_argument("--lang", choices=i18n.LANGS, default=None,
                        help=_("language of messages: zh_CN or en; default: from "
                               "GRIDWATCH_LANG, LC_ALL, LC_MESSAGES, LANG, else zh_CN"))  # fmt: skip
    parser.add_argument("--log-format", choices=logfmt.FORMATS, default=None,
                        help=_("text, or json (one object per line, for journald and log "
                               "shippers); default: $GRIDWATCH_LOG_FORMAT, else text"))  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True)

    edge = sub.add_parser("edge", help=_("the edge agent")).add_subparsers(
        dest="sub", required=True
    )
    run = edge.add_parser("run", help=_("run the edge agent"))
    run.add_argument("-c", "--config", required=True, help=_("gateway config YAML"))
    run.add_argument("--validate-config", action="store_true", help=_("check config, exit 0/1"))
    run.add_argument("--metrics-port", type=int, default=None, help=_("serve /metrics here"))
    status = edge.add_parser("status", help=_("the agent's state, read on the gateway box"),
                             epilog=_(edgestatus.EXIT_CODES))  # fmt: skip
    edgestatus.add_arguments(status)

    # the centre's three roles: a central.yaml and flags over it, each the options it uses
    add_role(sub.add_parser("central", help=_("central platform")), "run", "central run",
             "registry + bridge in one process")  # fmt: skip
    add_role(sub.add_parser("registry", help=_("device registry")), "serve", "registry serve",
             "serve the registry API alone")  # fmt: skip
    add_role(sub.add_parser("bridge", help=_("cloud bridge")), "run", "bridge run",
             "run the bridge alone")  # fmt: skip

    sim = sub.add_parser("sim", help=_("a field of simulated devices; `sim district`: gateways"))
    sim.add_argument("-c", "--config", help=_("gateway config whose devices to serve"))
    sim.add_argument("--speedup", type=float, default=1.0, help=_("run sim events faster"))
    sims = sim.add_subparsers(dest="sub", required=False, metavar="district")
    simopts.add_arguments(sims.add_parser(
        "district", help=_("a district's gateways on a broker (docs/central.md)"),
        description=_("Gateways speaking the wire contract, one MQTT connection each, spread "
                      "over Xuhui's streets: births, telemetry, a storm's alerts, health, deaths."),
    ))  # fmt: skip

    probe = sub.add_parser("probe", help=_("commissioning tools")).add_subparsers(
        dest="sub", required=True
    )
    pm = probe.add_parser("modbus", help=_("read registers and show every decoding"),
                          description=_("Read registers, coils or discrete inputs of one "
                          "unit and show what they mean; or read a unit as its profile "
                          "declares."),
                          epilog=_(PROBE_EXIT_CODES))  # fmt: skip
    pm.add_argument("--host", default="127.0.0.1")
    pm.add_argument("--port", type=int, default=502)
    pm.add_argument("--serial", default=None, help=_("serial device instead of TCP"))
    pm.add_argument("--baudrate", type=int, default=9600)
    pm.add_argument("--unit", type=int, default=1, help=_("unit id"))
    pm.add_argument("--table", choices=["holding", "input", "coil", "discrete"],
                    default="holding",
                    help=_("registers (shown under every decoding) or bits (on/off)"))  # fmt: skip
    pm.add_argument("--address", type=int, default=0, help=_("first address, from 0"))
    pm.add_argument("--count", type=int, default=4, help=_("1..125 registers or 1..2000 bits"))
    pm.add_argument("--profile", default=None, metavar="NAME",
                    help=_("read every point of a shipped profile (by id) or a profile file, "
                    "decoded with its unit and scale as the edge would; --table, --address "
                    "and --count are then not used"))  # fmt: skip
    pm.add_argument("--scan", action="store_true", help=_("scan unit ids 1..247 that answer"))
    pm.add_argument("--timeout", type=float, default=0.5, help=_("seconds to wait for an answer"))

    cfg = sub.add_parser("config", help=_("configuration tools")).add_subparsers(
        dest="sub", required=True
    )
    check = cfg.add_parser("check", help=_("validate profiles, gateway and centre configs"))
    check.add_argument(
        "files",
        nargs="*",
        help=_("YAML files or folders; none: the shipped profiles, gateways, catalogue"),
    )
    check.add_argument("--schema-dir", default=None, help=_("also write JSON Schemas here"))
    example = cfg.add_parser("example", help=_("print a commented example config"))
    example.add_argument("name", choices=["central"], help=_("central: a central.yaml"))

    # argparse only: no I/O modules load
    from gridwatch.top import cataloguecli, installer, registrycli

    cataloguecli.add_parsers(sub)
    installer.add_parsers(sub)
    registrycli.add_parsers(sub)

    health = sub.add_parser("health", help=_("what is unhealthy in the field (exit 0/1/2/3/4)"))
    healthcli.add_arguments(health)

    demo = sub.add_parser("demo", help=_("a simulated district, end to end, on this machine"))
    demo.add_argument(
        "--duration", type=float, default=0, help=_("stop after N seconds (0: never)")
    )
    demo.add_argument(
        "--workdir",
        default="var/demo",
        help=_("where state and logs go (relative: to this directory)"),
    )
    demo.add_argument("--speedup", type=float, default=1.0, help=_("run the rain event faster"))
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
    return _('{command} needs the {extra} extra: pip install "gridwatch[{extras}]"').format(
        command=command, extra=missing[0], extras=",".join(needs)
    )


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


def _lang_asked(argv: Sequence[str]) -> i18n.Lang | None:
    """``--lang`` read before the parser is built, so that its help is in that language too."""
    for i, arg in enumerate(argv):
        value = arg.partition("=")[2] if arg.startswith("--lang=") else ""
        if arg == "--lang" and i + 1 < len(argv):
            value = argv[i + 1]
        for lang in i18n.LANGS:
            if value == lang:
                return lang
    return None


def _run(argv: Sequence[str] | None) -> int:
    # every call decides afresh: tests run several commands, in several languages, in one process
    i18n.use(_lang_asked(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fmt = logfmt.chosen_format(args.log_format)
    except ValueError as exc:
        parser.error(f"GRIDWATCH_LOG_FORMAT: {exc}")
    logfmt.setup(logging.DEBUG if args.verbose else logging.INFO, fmt)
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
