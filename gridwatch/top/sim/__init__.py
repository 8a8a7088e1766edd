"""``gridwatch sim``: a field of simulated devices, served from their profiles' ``sim:`` blocks.

From Python (tests, demo, benchmarks)::

    cfg, devices = load_gateway("gateway.yaml")
    async with SimField(devices, speedup=10) as field:
        await field.set_raw("wl-001", "level", 65535)   # plant a sentinel
        field.kill("wl-002")                             # stops answering

``RtuField`` does the same for the devices on ``modbus_rtu`` buses, over socat pty pairs
that keep the baud rate's timing, and ``MqttField`` publishes for the devices on ``mqtt`` buses.

``gridwatch sim district`` (``districtrun``, ``district``) is the other simulator: whole gateways
speaking the wire contract to the centre's broker, a district of them, without the edge.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from gridwatch.ground.gatewayconf import load_gateway
from gridwatch.top import exits
from gridwatch.top.sim.modbus import SimField, SimUnit
from gridwatch.top.sim.mqtt import MqttField, SimSensor
from gridwatch.top.sim.rtu import RtuField, RtuLine

logger = logging.getLogger(__name__)

__all__ = ["MqttField", "RtuField", "RtuLine", "SimField", "SimSensor", "SimUnit", "main", "serve"]


async def serve(config: str, speedup: float = 1.0) -> None:
    """Serve the config's devices until SIGINT or SIGTERM."""
    _cfg, devices = load_gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with (
        SimField(devices, speedup=speedup),
        RtuField(devices, speedup=speedup),
        MqttField(devices, speedup=speedup),
    ):
        await stop.wait()
    logger.info("sim: stopped")


def main(args: argparse.Namespace) -> int:
    if not args.config:
        print(
            "gridwatch sim: -c CONFIG is required (the gateway config whose devices to "
            "serve); or `gridwatch sim district` for a district's gateways",
            file=sys.stderr,
        )
        return exits.USAGE
    asyncio.run(serve(args.config, args.speedup))
    return exits.OK
