"""The sink's numbers for operators: Prometheus text on `/metrics` (and the same in its log lines).

A Kafka-to-ClickHouse sink fails quietly when it falls behind; lag per partition, rows per second, batch
sizes, retries and dead letters are what tells an operator before users notice missing spans.

The sink keeps its own counters (sinks/sink.py `samples()`); prometheus-client turns a snapshot of them into
the exposition format at scrape time (a custom collector), so the escaping, number formatting and
HELP/TYPE lines are the library's, not ours. A name ending in `_total` is a counter, anything else a gauge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger("tracehouse.sink")

Sample = tuple[str, dict[str, str], float]  # name, labels, value


class SamplesCollector(Collector):
    """A prometheus-client collector over a callable that returns the current samples."""

    def __init__(self, collect: Callable[[], list[Sample]], help_text: dict[str, str]) -> None:
        self._collect = collect
        self.help_text = help_text

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, labels, value in self._collect():
            label_names = sorted(labels)
            family = families.get(name)
            if family is None:
                kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
                family = families[name] = kind(name, self.help_text.get(name, name), labels=label_names)
            family.add_metric([labels[k] for k in label_names], float(value))
        yield from families.values()


def render(samples: list[Sample], help_text: dict[str, str]) -> str:
    """The Prometheus text exposition format (0.0.4) of `samples`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SamplesCollector(lambda: samples, help_text))
    return generate_latest(registry).decode("utf-8")


class MetricsServer:
    """Serves `/metrics` from a callable that returns the current samples."""

    def __init__(self, collect: Callable[[], list[Sample]], help_text: dict[str, str], host: str, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SamplesCollector(collect, help_text))
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("sink metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
