"""`tracehouse sink`: run the span sink in this process until SIGTERM or Ctrl-C, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal

from tracehouse.core import settings as declared
from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.health import HealthServer
from tracehouse.core.secrets import redact
from tracehouse.sinks.sink import Sink, SinkOptions

log = logging.getLogger("tracehouse.sink")


async def _main(settings: Settings, options: SinkOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = Sink(settings, options)
    health = HealthServer("sink", sink.readiness, settings.sink_health_host, settings.sink_health_port)
    await health.start()  # first: a supervisor sees the sink live while it waits for topics or ClickHouse
    log.info(
        "tracehouse sink started (kafka %s, clickhouse %s)", settings.kafka_bootstrap, redact(settings.clickhouse_url)
    )
    try:
        await sink.run(stop)
    finally:
        await health.stop()
    log.info("tracehouse sink stopped after %d rows", sink.stats.rows)


def run_sink(
    settings: Settings,
    *,
    batch_rows: int = 50_000,
    flush_interval_s: float = 1.0,
    insert_lanes: int = 2,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> int:
    options = SinkOptions(
        batch_rows=batch_rows,
        flush_interval_s=flush_interval_s,
        insert_lanes=insert_lanes,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        # tail sampling on: the worker decides which traces' spans are stored (pipeline/sampling.py)
        spans_topic=topics.SPANS_KEPT if declared.get(declared.SAMPLING) else topics.SPANS,
    )
    asyncio.run(_main(settings, options))
    return 0
