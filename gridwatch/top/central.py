"""Composition root of ``gridwatch central run``: registry API + cloud bridge in one process.

Start order: embedded broker (only when no ``--mqtt-host``), registry store, registry HTTP API,
bridge; one TaskGroup with named tasks; SIGTERM/SIGINT stop them in reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from contextlib import AsyncExitStack
from typing import Any

from cloud_bridge.app import (
    bridge_metrics,
    bridge_service,
    broker_service,
    embedded_settings,
    exit_code,
    open_sink,
)
from cloud_bridge.bridge import Bridge
from cloud_bridge.config import BridgeConfig
from cloud_bridge.runner import Service, forever, run_services, stop_on_signals, tune_runtime
from cloud_bridge.sink import TelemetrySink
from cloud_bridge.sink_sqlite import SqliteSink
from device_registry import RegistryStore
from device_registry.alerts.operations import drill_policy
from device_registry.delivery.webhooks import SECRET_KEY_ENV, SecretBox
from device_registry.errors import RegistryError
from device_registry.http.app import (
    Delivery,
    build_app,
    db_url_from,
    installer_settings,
    serving,
    tls_from,
)
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.top import exits

logger = logging.getLogger(__name__)


class Central:
    """The parts of one central process; ``run`` until ``stop`` is set."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.embedded = args.mqtt_host is None
        cfg = BridgeConfig.from_args(args)
        self.cfg = embedded_settings(cfg) if self.embedded else cfg
        self.ready = asyncio.Event()
        self.registry_url = ""
        self.bridge: Bridge | None = None
        self.store: RegistryStore | None = None
        self.sink: TelemetrySink | None = None

    @property
    def broker(self) -> str:
        kind = "embedded amqtt, MQTT 3.1.1" if self.embedded else "external"
        return f"{', '.join(map(str, self.cfg.brokers))} ({kind})"

    def _bridge_health(self) -> dict[str, Any]:
        bridge = self.bridge
        if bridge is None:
            return {"connected": False}
        # no broker address here: /health is public (the address is in the start-up log);
        # whether it fails is judged from ``bridge.report`` (``bridges=`` below)
        return {
            "connected": bridge.connected.is_set(),
            "lanes": {lane: s.state.report() for lane, s in bridge.sessions.items()},
            **bridge.stats.as_dict(),
        }

    def _registry_service(self, store: RegistryStore) -> Service:
        async def service(ready: asyncio.Event) -> None:
            installers = installer_settings(self.args, self.cfg.mqtt_host, self.cfg.mqtt_protocol)
            assert self.bridge is not None
            app = build_app(store=store, health_parts={"bridge": self._bridge_health},
                            installers=installers, delivery=self._delivery(),
                            bridges=[self.bridge.report])  # fmt: skip
            tls = tls_from(self.args)
            async with serving(app, self.args.http_host, self.args.http_port, tls) as url:
                self.registry_url = url
                ready.set()
                await forever()

        return service

    def _delivery(self) -> Delivery:
        """The cases' lifecycle messages go to the bridge's broker; the device detail's
        chart reads the embedded telemetry history when that is the sink."""
        c = self.cfg
        target = BrokerSettings(c.mqtt_host, c.mqtt_port, c.prefix, c.mqtt_username,
                                c.mqtt_password, protocol=c.mqtt_protocol,
                                client_id=f"{c.client_id}-platform")  # fmt: skip
        sink = self.sink
        history = sink.history if isinstance(sink, SqliteSink) else None
        bridge = self.bridge
        assert bridge is not None
        return Delivery(mqtt=target, history=history, extra_metrics=bridge_metrics(bridge))

    def _announce(self) -> Service:
        async def service(ready: asyncio.Event) -> None:
            print(banner(self.registry_url, self.broker, self.cfg.prefix,
                         self.args.escalation_scale), flush=True)  # fmt: skip
            self.ready.set()
            ready.set()
            await forever()

        return service

    async def run(self, stop: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            policy = drill_policy(self.args.escalation_scale)
            store = self.store = await RegistryStore.open(db_url_from(self.args), policy)
            stack.push_async_callback(store.close)
            sink = await open_sink(self.cfg)
            stack.push_async_callback(sink.close)
            self.sink = sink
            self.bridge = Bridge(self.cfg, store, sink)
            services: list[tuple[str, Service]] = []
            if self.embedded:
                services.append(("broker", broker_service(self.cfg)))
            tune_runtime()
            services += [
                ("registry-api", self._registry_service(store)),
                ("bridge", bridge_service(self.bridge)),
                ("announce", self._announce()),
            ]
            await run_services(services, stop)
        logger.info("central stopped")


def banner(registry_url: str, broker: str, prefix: str, scale: float) -> str:
    """The start-up line: where the API, the dashboard and every platform topic are (the city
    platform subscribes to both kinds: docs/alerts.md)."""
    platform = f"{prefix}/platform"
    drill = (f" | DRILL: alert time limits x{scale:g}" if scale != 1 else "")  # fmt: skip
    return (f"gridwatch central: registry API {registry_url}/api/v1/devices | broker {broker} | "
            f"topics {prefix}/gw/+/... | platform alerts {platform}/alert/# | "
            f"lifecycle {platform}/lifecycle/# | "
            f"dashboard {registry_url}/dashboard{drill}")  # fmt: skip


async def _main(args: argparse.Namespace) -> None:
    await Central(args).run(stop_on_signals())


def main(args: argparse.Namespace) -> int:
    # a key that cannot be used is said before anything is made of the start: no database, no
    # admin token "shown once", no broker session for a centre that is not going to run
    if os.environ.get(SECRET_KEY_ENV, "").strip():
        try:
            SecretBox.from_env()
        except RegistryError as exc:
            logger.error("%s", exc)
            return exits.BAD_NEWS
    return exit_code(_main(args))
