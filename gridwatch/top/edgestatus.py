"""``gridwatch edge status -c gateway.yaml [--json]``: the edge agent's state, read on the
gateway box from the status file the agent writes and, when the agent is not running, from its
outbox; it needs neither the centre nor the broker (``edge.status``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from edge.status import (
    EXIT_NOT_RUNNING,
    judge,
    pid_alive,
    read_outbox,
    read_status,
    render,
    status_path,
)
from gridwatch.ground.i18n import N_, _
from gridwatch.top import exits

EXIT_CODES = N_("exit status: 0 healthy; 1 problems (uplink down, a device failing, the agent "
                "hung, unhealthy or not running: --json's agent says which); 2 the config cannot "
                "be read. The table of every command: docs/cli.md")  # fmt: skip
"""``edge status --help``'s epilog, translated where the parser is built."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help=_("the gateway config the agent runs"))
    p.add_argument("--outbox", default=None,
                   help=_("the outbox file, if the config names it relative to another "
                          "directory than this one (the agent's working directory)"))  # fmt: skip
    p.add_argument("--json", action="store_true", help=_("machine-readable output"))


def main(args: argparse.Namespace) -> int:
    # here, not at the top: the CLI builds its parser from this module, and every command would
    # pay for loading pydantic and the config models
    from gridwatch.ground.gatewayconf import load_gateway
    from gridwatch.ground.yamlconf import ConfigError

    try:
        cfg, _source = load_gateway(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return exits.USAGE
    outbox = Path(args.outbox or cfg.outbox.path)
    outbox = outbox if outbox.is_absolute() else Path(os.getcwd()) / outbox
    status = read_status(status_path(outbox))
    alive = status is not None and pid_alive(status.get("pid"))
    direct, why = (None, "") if alive else read_outbox(outbox)
    now = time.time()
    report = judge(status, alive, direct, now)
    if why:
        report.problems.append(why)
    # a stopped agent is bad news like any other problem, not "retry later" (3 in the table of
    # every command, gridwatch.top.exits)
    code = exits.BAD_NEWS if report.exit == EXIT_NOT_RUNNING else report.exit
    if args.json:
        print(json.dumps({"exit": code, "agent": report.running,
                          "problems": report.problems, "status": report.status,
                          "outbox": report.outbox}, indent=1))  # fmt: skip
    else:
        if status is None:
            print(_("no status file at {file}").format(file=status_path(outbox)))
        print(render(report, now))
    return code
