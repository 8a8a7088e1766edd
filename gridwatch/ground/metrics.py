"""Prometheus metrics for every gridwatch process, read at scrape time from counters the process
keeps anyway: nothing is added to a hot path.

Each process builds one ``CollectorRegistry`` (never the global one, so tests can run several
processes' parts side by side) and registers ``Callbacks``: name -> a function returning the value
(or a dict of label value -> value). ``serve_metrics`` is the small listener for a process without
an HTTP app of its own (the bridge, the edge); the registry serves ``/metrics`` on its API.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Reading = Callable[[], float | Mapping[str, float]]


@dataclass(frozen=True)
class Spec:
    name: str
    help: str
    read: Reading
    kind: str = "gauge"
    """gauge or counter (a counter's name gets ``_total`` from prometheus_client)."""
    label: str = ""
    """The label name when ``read`` returns a dict."""


class Callbacks(Collector):
    def __init__(self, metrics: list[Spec]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for m in self.metrics:
            try:
                value = m.read()
            except Exception:  # a broken reading must not break the scrape of all others
                logger.exception("metric %s failed", m.name)
                continue
            family = self._family(m)
            if isinstance(value, Mapping):
                for label, v in sorted(value.items()):
                    family.add_metric([label], float(v))
            else:
                family.add_metric([], float(value))
            yield family

    @staticmethod
    def _family(m: Spec) -> CounterMetricFamily | GaugeMetricFamily:
        labels = [m.label] if m.label else []
        if m.kind == "counter":
            return CounterMetricFamily(m.name, m.help, labels=labels)
        return GaugeMetricFamily(m.name, m.help, labels=labels)


def gauge(name: str, help: str, read: Reading, label: str = "") -> Spec:
    return Spec(name, help, read, "gauge", label)


def counter(name: str, help: str, read: Reading, label: str = "") -> Spec:
    return Spec(name, help, read, "counter", label)


def registry_of(*metrics: Spec) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Callbacks(list(metrics)))
    return reg


def exposition(registry: CollectorRegistry) -> bytes:
    return bytes(generate_latest(registry))


def handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE})

    return metrics


@asynccontextmanager
async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> AsyncIterator[str]:
    """``GET /metrics`` on ``host:port`` while the block runs; yields the URL."""
    app = web.Application()
    app.router.add_get("/metrics", handler(registry))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0]
        url = f"http://{bound[0]}:{bound[1]}/metrics"
        logger.info("metrics on %s", url)
        yield url
    finally:
        await runner.cleanup()


def counters_from(prefix: str, read: Callable[[], Mapping[str, object]],
                  labels: Mapping[str, str] | None = None) -> list[Spec]:  # fmt: skip
    """One counter per key of a process's own counter dict (e.g. the bridge's ``Stats``); a key
    whose value is a dict becomes a labelled counter (label name from ``labels``, else "kind").
    ``read`` is called at every scrape and must return the live counts, not a copy taken once."""
    sample = read()
    specs = []
    for key, value in sample.items():
        label = (labels or {}).get(key, "kind") if isinstance(value, Mapping) else ""
        specs.append(counter(f"{prefix}_{key}", f"{prefix} {key.replace('_', ' ')}",
                             _field(read, key), label))  # fmt: skip
    return specs


def _field(read: Callable[[], Mapping[str, object]], key: str) -> Reading:
    def value() -> float | Mapping[str, float]:
        v = read()[key]
        if isinstance(v, Mapping):
            return {str(k): float(n) for k, n in v.items()}
        return float(v)  # type: ignore[arg-type]

    return value
