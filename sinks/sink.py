"""`tracehouse sink`: Kafka -> ClickHouse for spans, traces, rollups and alerts, with nothing lost.

The rules, each for a failure users of other tools have hit:
- Offsets are committed to Kafka only after ClickHouse acknowledged the insert. While ClickHouse is away
  the sink retries with exponential backoff and jitter and stops reading (Kafka holds the data; memory
  stays at one batch).
- Every span row carries its Kafka partition and offset; a materialized view keeps the highest stored
  offset per partition in `ingest_offsets`. When partitions are assigned (start, restart after a crash,
  rebalance) the sink seeks past what ClickHouse already holds, so a batch inserted but not yet committed
  is not inserted twice: each span lands exactly once.
- A row ClickHouse rejects for its content is found by splitting the batch and goes to `tracehouse.dlq`
  with the reason; the rest of the batch lands. Every other failure is classified too (sinks/errors.py):
  transient ones are retried with backoff while Kafka holds the data, configuration ones wait for an
  operator with a loud error naming the fix, and an unclassified one is retried a bounded number of times
  and then split like bad content, so one poison batch cannot hold its partitions forever.
- No insert touches more partitions than the server allows in one block (`max_partitions_per_insert_block`,
  read from it): a batch over the limit is cut by partition, in an order that keeps the exactly-once
  argument above (sinks/insert_blocks.py). Spans (and traces) whose time is outside what is stored, far in
  the future or older than the table's TTL (core/timestamps.py), go to `tracehouse.dlq` with the reason.
- Under a backlog, inserts run concurrently in lanes, and each lane reads and encodes its next batch
  while its last one is being inserted: the sink's CPU (decode, rows, encode) and ClickHouse's (parse,
  write) overlap instead of taking turns, and ClickHouse parses two inserts on two cores (one insert is
  mostly one core). Each Kafka partition belongs to one lane (partition % lanes), and a lane inserts one
  batch at a time, in order, committing its offsets only after it is stored: per partition, the
  exactly-once argument above is unchanged. Memory is two batches per lane. Without a backlog (batches
  sent because of their age, not their size) the lanes' rows go as one insert, in flight for every lane:
  concurrency would only cut the parts smaller.
- Big batches (rows, bytes and time bounds): few parts, no TOO_MANY_PARTS. Each message's rows are
  encoded as soon as they are read and held as bytes (JSON lines), not as Python objects, so the
  garbage collector has nothing to scan. Batch size is the biggest
  lever on ClickHouse's cost per row (each insert writes a part in `spans` and in every table its
  materialized views feed, and small parts are merged again later); tests/benchmarks/sink_throughput.py
  measures it.

The parts: sinks/consumer.py reads Kafka and keeps the lanes, sinks/batching.py holds what is read until
it is stored, sinks/writer.py inserts, splits, dead-letters and commits; this module composes them and
serves their metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from aiokafka import TopicPartition

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable
from tracehouse.sinks.consumer import FETCH_RECORDS, ConsumerLoop
from tracehouse.sinks.metrics import MetricsServer, Sample
from tracehouse.sinks.options import SinkOptions, SinkStats
from tracehouse.sinks.routes import Retention, Route, default_routes
from tracehouse.sinks.writer import INSERT_SETTINGS, Writer

__all__ = ["FETCH_RECORDS", "INSERT_SETTINGS", "METRICS_HELP", "Sink", "SinkOptions", "SinkStats"]

log = logging.getLogger("tracehouse.sink")

METRICS_HELP = {
    "tracehouse_sink_rows_total": "Rows inserted into ClickHouse and committed in Kafka.",
    "tracehouse_sink_batches_total": "Batches inserted.",
    "tracehouse_sink_retries_total": "Insert attempts that failed and were retried.",
    "tracehouse_sink_dead_letters_total": "Records sent to tracehouse.dlq.",
    "tracehouse_sink_invalid_records_total": "Records that failed validation.",
    "tracehouse_sink_last_batch_rows": "Rows in the last batch.",
    "tracehouse_sink_rows_per_second": "Average rows per second since start.",
    "tracehouse_sink_pending_rows": "Rows read but not yet stored (the batch being built and the one being inserted).",
    "tracehouse_sink_lag_messages": "Kafka messages not yet read, per partition.",
}


def sampled_routes(routes: list[Route], spans_topic: str) -> list[Route]:
    """The routes with span rows read from `spans_topic`. For the kept spans of tail sampling
    (`tracehouse.spans.kept`), rows carry `ingest_offset` 0 and the route does not claim offsets: the
    exactly-once seek (`ingest_offsets`, filled by a view that names every span row's offset as one of
    `tracehouse.spans`) must keep meaning `tracehouse.spans`, or turning sampling off would seek that
    topic to offsets of the other. So on the kept topic the sink resumes at its committed offsets, and
    a batch stored but not committed before a crash is stored again: the same rows, which `spans`
    (ReplacingMergeTree on the span's key) collapses and `spans_minutely` counts once (`span_keys`)."""
    if spans_topic == topics.SPANS:
        return routes
    out = []
    for route in routes:
        if route.topic == topics.SPANS:
            decode = route.decode
            route = replace(
                route,
                topic=spans_topic,
                decode=lambda value, partition, offset, received_ns, decode=decode: decode(
                    value, partition, 0, received_ns
                ),
                offsets_in_rows=False,
            )
        out.append(route)
    return out


class Sink:
    """Consumes the pipeline's topics and inserts into ClickHouse in large, acknowledged batches."""

    def __init__(
        self,
        settings: Settings,
        options: SinkOptions | None = None,
        routes: list[Route] | None = None,
        prices: PriceTable | None = None,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or SinkOptions()
        # The `spans` TTL, read from ClickHouse (core.timestamps refuses spans older than it)
        self.retention = Retention()
        self.routes = sampled_routes(routes or default_routes(prices, self.retention), self.options.spans_topic)
        self.stats = SinkStats()
        self.database = settings.clickhouse.database
        self.writer = Writer(self.database, self.options, self.stats, self.retention)
        self.consumer = ConsumerLoop(settings, self.options, self.routes, self.stats, self.writer, on_flush)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then flush what is pending and commit (sinks/consumer.py)."""
        metrics = None
        if self.options.metrics_port:
            metrics = MetricsServer(self.samples, METRICS_HELP, self.options.metrics_host, self.options.metrics_port)
        await self.consumer.run(stop, metrics, self._log_stats)

    def readiness(self) -> tuple[bool, str, dict[str, object]]:
        """Ready once the sink consumes its assigned partitions (for `/health/ready`)."""
        return self.consumer.readiness()

    @property
    def _partition_limit(self) -> int:
        """What the server allows per insert block, as the writer last read it (tests look at it)."""
        return self.writer.partition_limit

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition (from the last fetch's high watermark)."""
        return self.consumer.lag()

    def samples(self) -> list[Sample]:
        s = self.stats
        out: list[Sample] = [
            ("tracehouse_sink_rows_total", {}, s.rows),
            ("tracehouse_sink_batches_total", {}, s.batches),
            ("tracehouse_sink_retries_total", {}, s.retries),
            ("tracehouse_sink_dead_letters_total", {}, s.dead_letters),
            ("tracehouse_sink_invalid_records_total", {}, s.invalid),
            ("tracehouse_sink_last_batch_rows", {}, s.last_batch_rows),
            ("tracehouse_sink_rows_per_second", {}, round(s.rate(), 1)),
            ("tracehouse_sink_pending_rows", {}, self.consumer.pending_rows()),
        ]
        for tp, lag in sorted(self.lag().items()):
            out.append(("tracehouse_sink_lag_messages", {"topic": tp.topic, "partition": str(tp.partition)}, lag))
        return out

    def _log_stats(self) -> None:
        s = self.stats
        log.info(
            "sink: %d rows in %d batches (%.0f rows/s), last batch %d rows, %d retries, %d dead letters, lag %d",
            s.rows,
            s.batches,
            s.rate(),
            s.last_batch_rows,
            s.retries,
            s.dead_letters,
            sum(self.lag().values()),
        )
