"""`tracehouse replay --dlq`: re-admit dead-lettered spans once the code that refused them is fixed.

The worker (stage "validate") and the sink (stages "decode" and "sink") dead-letter what they refuse on
`tracehouse.dlq` as a `core.schema.DeadLetter`: the reason and the original bytes, either one span (a span
refused on its own) or a whole `SpanBatch` message (a message that did not decode at all). Re-admission reads
the letters Kafka received in [from, to) with manual assignment (no consumer group, nothing committed),
decodes their bytes with the current code (a schema or mapping fix, the time rule of `core/timestamps.py`
against the clock now), and publishes the spans that now pass on `tracehouse.spans`, partitioned by trace id
like every producer (`producers/span_messages.py`); the worker and the sink then take them as usual.

The ones still refused are counted with their reasons, not dead-lettered again (they are still on the topic).
Letters that are not spans (a row ClickHouse refused, written as a JSON line; a score) are counted apart.

No duplicates: one span can be dead-lettered twice (by the worker and by the sink, for the same record) and a
letter can be re-admitted by an earlier run, so spans are published once per (trace id, span id) per run,
and `stored` (the CLI asks ClickHouse) leaves out the spans `spans` already holds. Were one re-admitted
anyway, `spans` (a ReplacingMergeTree keyed down to the span id) would keep one row, and the trace the worker
re-assembles from it alone (fewer spans, a lower version) would lose to the stored trace in `traces`; but
the worker's open window for its end time would count it a second time, hence the check.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracehouse.core import topics
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.schema import SchemaError, Span, decode_batch, decode_dead_letter, decode_span
from tracehouse.core.timestamps import TimeWindow, split_by_time, time_window
from tracehouse.core.topic_admin import existing_topics
from tracehouse.producers.span_messages import SpanMessageEncoder

Progress = Callable[[str], None]
StoredSpans = Callable[[list[Span]], Awaitable[set[tuple[str, str]]]]
SPAN_TOPICS = (topics.SPANS, topics.SPANS_KEPT)


@dataclass
class ReadmitReport:
    letters: int = 0
    readmitted: int = 0  # spans published on tracehouse.spans
    duplicates: int = 0  # spans seen twice among the letters (worker and sink both dead-lettered them)
    already_stored: int = 0  # spans `spans` already holds
    not_spans: int = 0  # letters from other topics, or bytes that are not span records (rows ClickHouse refused)
    still_refused: Counter[str] = field(default_factory=Counter)  # reason -> spans still refused

    @property
    def refused(self) -> int:
        return sum(self.still_refused.values())


def decode_letter(payload: bytes) -> tuple[list[Span], list[str]]:
    """A letter's bytes as spans with the current code: one span or a whole `SpanBatch` message. Returns the
    spans that decode and the reasons of those that do not."""
    try:
        shape = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, ValueError):
        shape = None
    if isinstance(shape, dict) and "spans" in shape:
        try:
            spans, rejected = decode_batch(payload)
        except SchemaError as exc:
            return [], [exc.reason]
        return spans, [bad.reason for bad in rejected]
    try:
        return [decode_span(payload)], []
    except SchemaError as exc:
        return [], [exc.reason]


async def readmit_dead_letters(
    bootstrap: str,
    from_ns: int,
    to_ns: int,
    *,
    stored: StoredSpans | None = None,
    progress: Progress | None = None,
    poll_ms: int = 500,
    batch_spans: int = 500,
) -> ReadmitReport:
    """Re-admit the spans of the dead letters Kafka received in [from_ns, to_ns) that now pass."""
    say = progress or (lambda line: None)
    report = ReadmitReport()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kafka_client_options()
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kafka_client_options())
    try:
        await consumer.start()
        await producer.start()
    except Exception as exc:
        await consumer.stop()
        await producer.stop()
        raise RuntimeError(f"Kafka at {bootstrap} is unreachable: {exc}") from None
    try:
        found = await existing_topics(bootstrap, [topics.DLQ, topics.SPANS], security=kafka_client_options())
        if not found.get(topics.DLQ) or not found.get(topics.SPANS):
            raise RuntimeError(f"topics {topics.DLQ} and {topics.SPANS} must exist (run `tracehouse migrate`)")
        spans = await _read_letters(consumer, found[topics.DLQ], from_ns, to_ns, poll_ms, report, say)
        seen: set[tuple[str, str]] = set()
        fresh: list[Span] = []
        for span in spans:
            key = (span.trace_id, span.span_id)
            if key in seen:
                report.duplicates += 1
            else:
                seen.add(key)
                fresh.append(span)
        if stored is not None and fresh:
            known = await stored(fresh)
            report.already_stored = sum((s.trace_id, s.span_id) in known for s in fresh)
            fresh = [s for s in fresh if (s.trace_id, s.span_id) not in known]
        dropped: list[Span] = []
        messages = SpanMessageEncoder(batch_spans).messages(fresh, found[topics.SPANS], dropped)
        if dropped:
            report.still_refused["span above the message size limit"] += len(dropped)
        for message in messages:
            await producer.send(topics.SPANS, message.value, partition=message.partition)
            report.readmitted += len(message.spans)
        await producer.flush()
        return report
    finally:
        await producer.stop()
        await consumer.stop()


async def _read_letters(
    consumer: AIOKafkaConsumer,
    partitions: int,
    from_ns: int,
    to_ns: int,
    poll_ms: int,
    report: ReadmitReport,
    say: Progress,
) -> list[Span]:
    """The spans that now pass, from the letters of every DLQ partition in the range, in order."""
    tps = [TopicPartition(topics.DLQ, p) for p in range(partitions)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: from_ns // 1_000_000 for tp in tps})
    stops = await consumer.offsets_for_times({tp: to_ns // 1_000_000 for tp in tps})
    window = time_window(time.time_ns())  # the time rule as the worker will apply it to the new record
    out: list[Span] = []
    for tp in tps:
        first, last = starts.get(tp), stops.get(tp)
        start = ends[tp] if first is None else first.offset
        stop = max(start, ends[tp] if last is None else last.offset)
        if start >= stop:
            continue
        consumer.seek(tp, start)
        done = False
        while not done:
            batch = await consumer.getmany(tp, timeout_ms=poll_ms, max_records=500)
            for message in batch.get(tp, []):
                if message.offset >= stop:
                    done = True
                    break
                done = message.offset + 1 >= stop
                if message.value is not None:
                    out.extend(_letter_spans(message.value, window, report))
            if report.letters and report.letters % 1000 == 0:
                say(f"{report.letters} dead letters read")
    return out


def _letter_spans(value: bytes, window: TimeWindow, report: ReadmitReport) -> list[Span]:
    report.letters += 1
    try:
        letter = decode_dead_letter(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        report.not_spans += 1
        return []
    if letter.source_topic not in SPAN_TOPICS:
        report.not_spans += 1
        return []
    if letter.payload[:1] == b"{":  # a row ClickHouse refused, as a JSON line (sinks/writer.py): not a span
        report.not_spans += 1
        return []
    spans, reasons = decode_letter(letter.payload)
    report.still_refused.update(reasons)
    kept, refused = split_by_time(spans, window)
    report.still_refused.update(bad.reason for bad in refused)
    return kept
