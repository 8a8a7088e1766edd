"""The options of ``gridwatch sim district`` (``gridwatch.top.sim.districtrun``).

Apart from the simulator so that building the ``gridwatch`` parser loads neither aiomqtt nor
``gridwatch.top.sim`` (whose package loads pymodbus), as ``centralopts`` is for the centre.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt-host", default="127.0.0.1", help="broker host (or host:port,...)")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--mqtt-protocol", choices=["auto", "5", "3.1.1"], default="3.1.1")
    p.add_argument("--prefix", default=None, help="topic prefix (default: gridwatch)")
    p.add_argument("--credentials", type=Path, default=None,
                   help="CSV of gateway,username,password (a broker that needs a login per "
                   "gateway); none: no login")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="same seed and start: same messages")
    p.add_argument("--gateways", type=int, default=20)
    p.add_argument("--devices", type=int, default=100, help="per gateway")
    p.add_argument("--interval", type=float, default=10.0, help="each device's, seconds")
    p.add_argument("--batch", type=float, default=1.0, help="a gateway's batch period, seconds")
    p.add_argument("--health", type=float, default=30.0, help="health report period, seconds")
    p.add_argument("--ramp", type=float, default=None,
                   help="gateways join over this many seconds (default: gateways / 100)")  # fmt: skip
    p.add_argument("--storm-at", type=float, default=20.0, help="the storm's first street, s")
    p.add_argument("--storm-step", type=float, default=10.0, help="s between two streets")
    p.add_argument("--deaths", type=int, default=0, help="gateways that lose the connection once")
    p.add_argument("--down", type=float, default=10.0, help="how long they stay away, s")
    p.add_argument("--duration", type=float, default=0.0, help="stop after N s (0: never)")
    p.add_argument("--shard", default="0/1", help="K/N: run gateways K, K+N, K+2N, ...")
    p.add_argument("--report", type=float, default=10.0, help="log figures every N s")
    p.add_argument("--events", type=Path, default=None,
                   help="write alert, birth and cut times here (JSON lines)")  # fmt: skip
