"""Composition root of ``gridwatch bridge run``: the ingest service alone.

It opens the registry store and the telemetry sink itself (the registry API runs elsewhere),
and starts the embedded broker when no ``--mqtt-host`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

from cloud_bridge.bridge import Bridge
from cloud_bridge.broker import Scope, embedded_broker
from cloud_bridge.config import BridgeConfig
from cloud_bridge.errors import BridgeError
from cloud_bridge.runner import Service, forever, run_services, stop_on_signals, tune_runtime
from cloud_bridge.sink import TelemetrySink
from cloud_bridge.sink_influx import InfluxSink
from cloud_bridge.sink_sqlite import SqliteSink
from device_registry import RegistryError, RegistryStore
from device_registry.alerts.operations import drill_policy
from device_registry.db.engine import default_url
from gridwatch.ground import metrics

logger = logging.getLogger(__name__)

_SUBSCRIBE_WAIT_S = 10.0


async def open_sink(cfg: BridgeConfig) -> TelemetrySink:
    if cfg.influx_url:
        logger.info("telemetry -> %s (InfluxDB v2 write API)", cfg.influx_url)
        return InfluxSink(cfg.influx_url, cfg.influx_bucket, cfg.influx_org, cfg.influx_token)
    path = cfg.data_dir / "telemetry.db"
    logger.info("telemetry -> %s (embedded SQLite, %g h of history)", path, cfg.history_hours)
    return await SqliteSink.open(path, cfg.history_hours)


def broker_service(cfg: BridgeConfig) -> Service:
    """The embedded broker on the bridge's address, scoped to its prefix; the bridge's id (and
    the ids derived from it) are the centre's."""
    scope = Scope(cfg.prefix, cfg.client_id)

    async def service(ready: asyncio.Event) -> None:
        async with embedded_broker(cfg.mqtt_host, cfg.mqtt_port, scope):
            ready.set()
            await forever()

    return service


def bridge_service(bridge: Bridge) -> Service:
    async def service(ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bridge.run(), name="bridge")
            # ready once subscribed, so that whatever starts next (a demo's gateways) is not
            # published into a broker session nobody has yet; a broker that is down only delays it
            try:
                async with asyncio.timeout(_SUBSCRIBE_WAIT_S):
                    await bridge.connected.wait()
            except TimeoutError:
                logger.warning("broker not reachable yet; the bridge keeps trying")
            ready.set()

    return service


def bridge_metrics(bridge: Bridge) -> list[metrics.Spec]:
    """Read at scrape time from the bridge's own counters."""
    # ``bridge.stats`` sums the lanes into a new object on each access: it must be read inside
    # the callback (a bound ``bridge.stats.as_dict`` would serve the start-up sum for ever)
    specs = metrics.counters_from(
        "gridwatch_bridge",
        lambda: bridge.stats.as_dict(),
        {"ingested": "kind", "rejected": "reason", "refused": "reason"},
    )
    specs.append(metrics.gauge("gridwatch_bridge_connected", "1 while every lane is subscribed",
                               lambda: float(bridge.connected.is_set())))  # fmt: skip
    specs.append(metrics.gauge(
        "gridwatch_bridge_store_failures", "Consecutive failed calls to each store (0: the last "
        "one succeeded)", lambda: {k: v.state.failures for k, v in bridge.stores.items()}, "store",
    ))  # fmt: skip
    specs.append(metrics.gauge("gridwatch_bridge_ingest_lag_seconds", "How long the oldest "
                               "message received and not yet committed has waited",
                               lambda: _lag_s(bridge)))  # fmt: skip
    return specs


def _lag_s(bridge: Bridge) -> float:
    report = bridge.report()
    oldest = report.oldest_uncommitted
    return 0.0 if oldest is None else max(0, report.at - oldest) / 1000


def metrics_service(bridge: Bridge, host: str, port: int) -> Service:
    """The standalone bridge has no HTTP app: a small listener serves its /metrics."""

    async def service(ready: asyncio.Event) -> None:
        async with metrics.serve_metrics(metrics.registry_of(*bridge_metrics(bridge)), host, port):
            ready.set()
            await forever()

    return service


def embedded_settings(cfg: BridgeConfig) -> BridgeConfig:
    """The embedded broker speaks MQTT 3.1.1 on loopback."""
    return dataclasses.replace(cfg, mqtt_host="127.0.0.1", mqtt_protocol="3.1.1")


async def run(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    cfg = BridgeConfig.from_args(args)
    services: list[tuple[str, Service]] = []
    if args.mqtt_host is None:
        cfg = embedded_settings(cfg)
        services.append(("broker", broker_service(cfg)))
    async with AsyncExitStack() as stack:
        policy = drill_policy(getattr(args, "escalation_scale", 1.0))
        store = await RegistryStore.open(args.db_url or default_url(cfg.data_dir), policy)
        stack.push_async_callback(store.close)
        sink = await open_sink(cfg)
        stack.push_async_callback(sink.close)
        bridge = Bridge(cfg, store, sink)
        services.append(("bridge", bridge_service(bridge)))
        if getattr(args, "metrics_port", None) is not None:
            services.append(("metrics", metrics_service(bridge, args.http_host, args.metrics_port)))
        logger.info("bridge: broker %s, prefix %r", ", ".join(map(str, cfg.brokers)), cfg.prefix)
        tune_runtime()
        await run_services(services, stop)


def main(args: argparse.Namespace) -> int:
    return exit_code(run(args))


def exit_code(main: Coroutine[Any, Any, None]) -> int:
    """Run a composition root; our own errors (a port in use, a bad option) end it with a
    message and exit status 1, not a traceback."""
    ours = (BridgeError, RegistryError)
    try:
        asyncio.run(main)
    except ours as exc:
        logger.error("%s", exc)
        return 1
    except BaseExceptionGroup as group:  # from a TaskGroup
        mine, rest = group.split(ours)
        if rest is not None or mine is None:
            raise
        for leaf in _leaves(mine):
            logger.error("%s", leaf)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
