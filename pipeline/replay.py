"""`tracehouse replay`: re-derive the traces and rollups of a time range from the span log Kafka keeps.

After a mapping fix, a new price file or a worker bug, the spans are still in `tracehouse.spans` for as long
as the topic's retention: replay reads the records Kafka received between two times (each partition from
`offsets_for_times(from)` to `offsets_for_times(to)`), assembles their traces with the worker's own
assembler and the current prices (`core.pricing.configured_prices`), and publishes the records on
`tracehouse.traces`, where the sink writes them like the worker's (or hands them to another `ReplayOutput`:
`tracehouse replay --to-table` writes them into a side table to compare, cli/replay_table.py). Nothing is
doubled: `traces` is a ReplacingMergeTree(version) whose version is the number of spans a record covers, so
a trace whose spans all lie in the range replaces its stored row (same version, later insert), and a trace
cut by the range's edges (fewer spans) loses to the stored one.

Rollups: the worker's own windows (pipeline/windows.py, one aggregator per partition and size, as the
worker keeps them) and merger (pipeline/merger.py `merge_records`) over the same spans, published as final
rows on `tracehouse.rollups` for the windows wholly inside [from, to) only. `rollups` is a ReplacingMergeTree
without a version: the row inserted last wins, so a replayed window replaces the stored one, and an edge
window (only part of its spans in the range) would replace a full row with an undercount: those are
skipped and counted. A window's spans may reach Kafka after `to` (a span is sent after it ends), so for
rollups the log is read on past `to` by what the worker would still have accepted (the window's end plus its
late-data retention, pipeline/partition_windows.py `WindowOptions`), and a span counts in a window only if
it arrived within that bound, as in the worker.

It reads with manual assignment, outside any consumer group, so it commits nothing and moves no running
worker's or sink's offsets, and leaves no group behind. Spans the worker would refuse for their times
(`core/timestamps.py`) are left out alike; records that do not decode are counted, not dead-lettered again
(the worker did that once; `tracehouse replay --dlq`, pipeline/replay_dlq.py, re-admits them once fixed).
What it does not re-derive: alerts, score rollups and spans (the sink keyed them by offset when it stored
them; `tracehouse reprice` brings their costs to new prices).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tracehouse.core import topics
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.pricing import PriceTable, price_span
from tracehouse.core.rollups import Rollup, RollupPartialRecord, encode_rollups
from tracehouse.core.schema import SchemaError, Span, TraceRecord, decode_batch, encode_traces
from tracehouse.core.timestamps import split_by_time, time_window
from tracehouse.core.topic_admin import existing_topics
from tracehouse.pipeline.assembly import TraceAssembler
from tracehouse.pipeline.merger import merge_records
from tracehouse.pipeline.partition_windows import WindowOptions
from tracehouse.pipeline.windows import WindowAggregator

TRACES_PER_MESSAGE = 200
ROLLUPS_PER_MESSAGE = 5_000
Progress = Callable[[str], None]
_NS = 1_000_000_000


class ReplayRangeError(RuntimeError):
    """The range cannot be replayed as asked (before the retained log, or no topic)."""


@dataclass
class ReplayReport:
    messages: int = 0
    spans: int = 0
    refused: int = 0  # spans whose times the worker refuses too
    undecodable: int = 0  # records (or spans in them) that do not decode: already dead-lettered by the worker
    traces: int = 0  # trace records published
    rollups: int = 0  # rollup rows published (windows wholly inside the range)
    rollup_windows: int = 0  # distinct (size, start) windows published
    edge_windows: int = 0  # windows cut by the range's edges: skipped (they would be undercounts)
    late_spans: int = 0  # spans that reached Kafka after their window's acceptance bound: left out, as the worker does


class ReplayOutput(Protocol):
    """Where a replay's re-derived records go: Kafka for the sink (`KafkaOutput`, the default) or a side table."""

    async def start(self) -> None: ...
    async def write_traces(self, records: list[TraceRecord]) -> None: ...
    async def write_rollups(self, rows: list[Rollup]) -> None: ...
    async def finish(self) -> None:
        """Everything written is durable once this returns."""

    async def stop(self) -> None: ...


class KafkaOutput:
    """Publishes on `tracehouse.traces` and `tracehouse.rollups`, where the sink stores them like the worker's."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kafka_client_options())

    async def start(self) -> None:
        try:
            await self.producer.start()
        except Exception as exc:
            await self.producer.stop()
            raise ReplayRangeError(f"Kafka at {self.bootstrap} is unreachable: {exc}") from None

    async def write_traces(self, records: list[TraceRecord]) -> None:
        for i in range(0, len(records), TRACES_PER_MESSAGE):
            await self.producer.send(topics.TRACES, encode_traces(records[i : i + TRACES_PER_MESSAGE]))

    async def write_rollups(self, rows: list[Rollup]) -> None:
        for i in range(0, len(rows), ROLLUPS_PER_MESSAGE):
            await self.producer.send(topics.ROLLUPS, encode_rollups(rows[i : i + ROLLUPS_PER_MESSAGE]))

    async def finish(self) -> None:
        await self.producer.flush()

    async def stop(self) -> None:
        await self.producer.stop()


class _ReplayWindows:
    """One partition's windows for replay: the worker's aggregators, fed only the spans of inner windows."""

    def __init__(self, partition: int, options: WindowOptions, from_s: int, to_s: int, report: ReplayReport) -> None:
        self.report = report
        self.from_s, self.to_s = from_s, to_s
        self.accept_s = {size: options.grace_s + options.retention(size) for size in options.sizes}
        # Grace and retention are the replay's own bounds (checked in `add`); the aggregators keep all.
        self.aggregators = [
            WindowAggregator(size, 0.0, partition=partition, retention_seconds=10**12) for size in options.sizes
        ]
        self.seen: set[tuple[str, str]] = set()  # the worker's assembler dedups; so does replay, for every offset
        self.edge: set[tuple[int, int]] = set()

    def add(self, span: Span, received_s: float, cost: float) -> None:
        key = (span.trace_id, span.span_id)
        if key in self.seen:
            return
        self.seen.add(key)
        end_ns = span.end_time_ns
        for aggregator in self.aggregators:
            size = aggregator.window_seconds
            start = end_ns // (size * _NS) * size
            if start < self.from_s or start + size > self.to_s:
                if start < self.to_s and start + size > self.from_s:  # cut by an edge, not outside
                    self.edge.add((size, start))
                continue
            if received_s > start + size + self.accept_s[size]:
                self.report.late_spans += 1
                continue
            aggregator.add(span, cost)

    def records(self) -> list[RollupPartialRecord]:
        out: list[RollupPartialRecord] = []
        for aggregator in self.aggregators:
            out.extend(aggregator.due(self.to_s + 2 * aggregator.window_seconds))
        return out


async def replay(
    bootstrap: str,
    from_ns: int,
    to_ns: int,
    prices: PriceTable,
    *,
    rollups: bool = True,
    window_options: WindowOptions | None = None,
    progress: Progress | None = None,
    poll_ms: int = 500,
    topic: str = topics.SPANS,
    output: ReplayOutput | None = None,
) -> ReplayReport:
    """Re-derive and publish the traces of the spans Kafka received in [from_ns, to_ns), and (with
    `rollups`) the rollups of the windows wholly inside it. `topic`: another log of span messages (tests);
    `output`: where the records go (default: Kafka, `KafkaOutput`)."""
    say = progress or (lambda line: None)
    options = window_options or WindowOptions()
    report = ReplayReport()
    from_s, to_s = -(-from_ns // _NS), to_ns // _NS  # whole seconds inside the range
    late_ns = int(max(options.grace_s + options.retention(size) for size in options.sizes) * _NS) if rollups else 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kafka_client_options()
    )
    out = output or KafkaOutput(bootstrap)
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        raise ReplayRangeError(f"Kafka at {bootstrap} is unreachable: {exc}") from None
    try:
        await out.start()
    except BaseException:
        await consumer.stop()
        raise
    try:
        ranges = await _offset_ranges(consumer, bootstrap, topic, from_ns, to_ns, late_ns, poll_ms)
        total = sum(end - start for start, _, end in ranges.values())
        say(f"{total} records in {len(ranges)} partitions of {topic}")
        assemblers: dict[int, TraceAssembler] = {}
        windows: dict[int, _ReplayWindows] = {}
        for tp, (start, stop, end) in ranges.items():
            assembler = assemblers[tp.partition] = TraceAssembler(prices, max_open_traces=10**9)
            window = windows[tp.partition] = _ReplayWindows(tp.partition, options, from_s, to_s, report)
            if start >= end:
                continue
            consumer.seek(tp, start)
            done = False
            while not done:
                batches = await consumer.getmany(tp, timeout_ms=poll_ms, max_records=500)
                for message in batches.get(tp, []):
                    if message.offset >= end:
                        done = True
                        break
                    in_range = message.offset < stop
                    _fold(assembler if in_range else None, window if rollups else None, message, prices, report)
                    done = message.offset + 1 >= end
                    if report.messages % 1000 == 0:
                        say(f"{report.messages}/{total} records, {report.spans} spans")
        records: list[TraceRecord] = []
        for assembler in assemblers.values():
            records.extend(assembler.take_forced())
            records.extend(assembler.flush_all(now=time.monotonic()))
        await out.write_traces(records)
        report.traces = len(records)
        if rollups:
            await _publish_rollups(out, list(windows.values()), report)
        await out.finish()
        return report
    finally:
        await out.stop()
        await consumer.stop()


async def _publish_rollups(out: ReplayOutput, windows: list[_ReplayWindows], report: ReplayReport) -> None:
    """Merge every partition's records of a (window, group) into its final row, as the merger does."""
    groups: dict[tuple[int, int, tuple[str, str, str, str]], list[RollupPartialRecord]] = {}
    edge: set[tuple[int, int]] = set()
    for window in windows:
        edge |= window.edge
        for record in window.records():
            groups.setdefault((record.window_seconds, record.window_start, tuple(record.key)), []).append(record)
    rows = [merge_records(parts) for _, parts in sorted(groups.items())]
    await out.write_rollups(rows)
    report.rollups = len(rows)
    report.rollup_windows = len({(size, start) for size, start, _ in groups})
    report.edge_windows = len(edge)


async def _offset_ranges(
    consumer: AIOKafkaConsumer, bootstrap: str, topic: str, from_ns: int, to_ns: int, late_ns: int, poll_ms: int
) -> dict[TopicPartition, tuple[int, int, int]]:
    """Per partition, the offsets of the first record received at or after `from_ns`, of the first at or
    after `to_ns`, and of the first at or after `to_ns + late_ns` (the end of the log where there is none).
    Refuses a range that begins before the oldest record Kafka still keeps."""
    found = await existing_topics(bootstrap, [topic], security=kafka_client_options())
    if not found.get(topic):
        raise ReplayRangeError(f"topic {topic} does not exist (run `tracehouse migrate`)")
    tps = [TopicPartition(topic, p) for p in range(found[topic])]
    consumer.assign(tps)
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: from_ns // 1_000_000 for tp in tps})
    stops = await consumer.offsets_for_times({tp: to_ns // 1_000_000 for tp in tps})
    lates = await consumer.offsets_for_times({tp: (to_ns + late_ns) // 1_000_000 for tp in tps})
    earliest_ms: int | None = None
    for tp in tps:
        first = starts.get(tp)
        if begins[tp] > 0 and first is not None and first.offset == begins[tp]:
            # Retention has deleted this partition's beginning: records of the range may be gone.
            stamp = await _first_timestamp_ms(consumer, tp, begins[tp], poll_ms)
            if stamp is not None and stamp > from_ns // 1_000_000:
                earliest_ms = stamp if earliest_ms is None else max(earliest_ms, stamp)
    if earliest_ms is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(earliest_ms / 1000))
        raise ReplayRangeError(
            f"--from is before what Kafka still keeps of {topic}: the earliest time retained in every "
            f"partition is {when} ({earliest_ms} ms); replay from then or later"
        )
    ranges = {}
    for tp in tps:
        first, last, late = starts.get(tp), stops.get(tp), lates.get(tp)
        start = ends[tp] if first is None else first.offset
        stop = max(start, ends[tp] if last is None else last.offset)
        end = max(stop, ends[tp] if late is None else late.offset) if late_ns else stop
        ranges[tp] = (start, stop, end)
    return ranges


async def _first_timestamp_ms(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, poll_ms: int) -> int | None:
    consumer.seek(tp, offset)
    for _ in range(10):
        batch = await consumer.getmany(tp, timeout_ms=poll_ms, max_records=1)
        for message in batch.get(tp, []):
            return int(message.timestamp)
    return None


def _fold(
    assembler: TraceAssembler | None,
    windows: _ReplayWindows | None,
    message: ConsumerRecord[bytes, bytes],
    prices: PriceTable,
    report: ReplayReport,
) -> None:
    """One record's spans into the partition's traces (when it lies in [from, to)) and inner windows."""
    report.messages += 1
    value, stamp_ms, offset = message.value, message.timestamp, message.offset
    if value is None:
        return
    try:
        spans, rejected = decode_batch(value)
    except SchemaError:
        if assembler is not None:  # records past `to` are read for the windows only, and counted by the next range
            report.undecodable += 1
        return
    if assembler is not None:
        report.undecodable += len(rejected)
    received_s = time.time()
    if stamp_ms is not None and stamp_ms > 0:
        spans, refused = split_by_time(spans, time_window(stamp_ms * 1_000_000))
        if assembler is not None:
            report.refused += len(refused)
        received_s = stamp_ms / 1000
    now = time.monotonic()
    for span in spans:
        llm = span.llm
        cost, source = price_span(
            prices, llm.model if llm is not None else "", span.usage, span.cost_usd, span.start_time_ns
        )
        if assembler is not None:
            if not assembler.add_priced(span, offset, now, cost, source):
                continue
            report.spans += 1
        if windows is not None:
            windows.add(span, received_s, cost)
