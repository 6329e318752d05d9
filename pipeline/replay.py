"""`tracehouse replay`: re-derive the traces of a time range from the span log Kafka keeps.

After a mapping fix, a new price file or a worker bug, the spans are still in `tracehouse.spans` for as long
as the topic's retention: replay reads the records Kafka received between two times (each partition from
`offsets_for_times(from)` to `offsets_for_times(to)`), assembles their traces with the worker's own
assembler and the current prices (`core.pricing.configured_prices`), and publishes the records on
`tracehouse.traces`, where the sink writes them like the worker's. Nothing is doubled: `traces` is a
ReplacingMergeTree(version) whose version is the number of spans a record covers, so a trace whose spans all
lie in the range replaces its stored row (same version, later insert), and a trace cut by the range's edges
(fewer spans) loses to the stored one.

It reads with manual assignment, outside any consumer group, so it commits nothing and moves no running
worker's or sink's offsets, and leaves no group behind. Spans the worker would refuse for their times
(`core/timestamps.py`) are left out alike; records that do not decode are counted, not dead-lettered again
(the worker did that once). What it does not re-derive: rollups (a window needs every span of its range,
sampled or not, and the worker's late-span rules) and spans (the sink keyed them by offset when it stored
them; `tracehouse reprice` brings their costs to new prices).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracehouse.core import topics
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import SchemaError, TraceRecord, decode_batch, encode_traces
from tracehouse.core.timestamps import split_by_time, time_window
from tracehouse.core.topic_admin import existing_topics
from tracehouse.pipeline.assembly import TraceAssembler

TRACES_PER_MESSAGE = 200
Progress = Callable[[str], None]


@dataclass
class ReplayReport:
    messages: int = 0
    spans: int = 0
    refused: int = 0  # spans whose times the worker refuses too
    undecodable: int = 0  # records (or spans in them) that do not decode: already dead-lettered by the worker
    traces: int = 0  # trace records published


async def replay(
    bootstrap: str,
    from_ns: int,
    to_ns: int,
    prices: PriceTable,
    *,
    progress: Progress | None = None,
    poll_ms: int = 500,
) -> ReplayReport:
    """Re-derive and publish the traces of the spans Kafka received in [from_ns, to_ns)."""
    say = progress or (lambda line: None)
    report = ReplayReport()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kafka_client_options()
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kafka_client_options())
    await consumer.start()
    await producer.start()
    try:
        ranges = await _offset_ranges(consumer, bootstrap, from_ns, to_ns)
        total = sum(end - start for start, end in ranges.values())
        say(f"{total} records in {len(ranges)} partitions of {topics.SPANS}")
        assemblers: dict[int, TraceAssembler] = {}
        for tp, (start, end) in ranges.items():
            assembler = assemblers[tp.partition] = TraceAssembler(prices, max_open_traces=10**9)
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
                    _fold(assembler, message.offset, message.value, message.timestamp, report)
                    done = message.offset + 1 >= end
                if report.messages and report.messages % 1000 == 0:
                    say(f"{report.messages}/{total} records, {report.spans} spans")
        records: list[TraceRecord] = []
        for assembler in assemblers.values():
            records.extend(assembler.take_forced())
            records.extend(assembler.flush_all(now=time.monotonic()))
        for i in range(0, len(records), TRACES_PER_MESSAGE):
            await producer.send(topics.TRACES, encode_traces(records[i : i + TRACES_PER_MESSAGE]))
        await producer.flush()
        report.traces = len(records)
        return report
    finally:
        await producer.stop()
        await consumer.stop()


async def _offset_ranges(
    consumer: AIOKafkaConsumer, bootstrap: str, from_ns: int, to_ns: int
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition, the offsets of the first record received at or after `from_ns` and of the first at or
    after `to_ns` (the end of the log where there is none)."""
    found = await existing_topics(bootstrap, [topics.SPANS], security=kafka_client_options())
    if not found.get(topics.SPANS):
        raise RuntimeError(f"topic {topics.SPANS} does not exist (run `tracehouse migrate`)")
    tps = [TopicPartition(topics.SPANS, p) for p in range(found[topics.SPANS])]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: from_ns // 1_000_000 for tp in tps})
    stops = await consumer.offsets_for_times({tp: to_ns // 1_000_000 for tp in tps})
    ranges = {}
    for tp in tps:
        first = starts.get(tp)
        last = stops.get(tp)
        start = ends[tp] if first is None else first.offset
        stop = ends[tp] if last is None else last.offset
        ranges[tp] = (start, max(start, stop))
    return ranges


def _fold(assembler: TraceAssembler, offset: int, value: bytes | None, stamp_ms: int, report: ReplayReport) -> None:
    report.messages += 1
    if value is None:
        return
    try:
        spans, rejected = decode_batch(value)
    except SchemaError:
        report.undecodable += 1
        return
    report.undecodable += len(rejected)
    if stamp_ms is not None and stamp_ms > 0:
        spans, refused = split_by_time(spans, time_window(stamp_ms * 1_000_000))
        report.refused += len(refused)
    now = time.monotonic()
    for span in spans:
        if assembler.add(span, offset, now):
            report.spans += 1
