"""Which Kafka topic lands in which ClickHouse table, and how a message becomes rows.

A route turns one Kafka message into rows (msgspec Structs whose fields are the table's columns) plus
the records it could not read. Only the spans route is exactly-once by stored offsets (its rows carry
their partition and offset); traces, rollups and alerts land in ReplacingMergeTree tables keyed so that a
redelivered record replaces its twin.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from tracehouse.core import topics
from tracehouse.core.pricing import PriceTable, configured_prices
from tracehouse.core.schema import SchemaError, decode_traces
from tracehouse.core.timestamps import split_by_time, time_refusal, time_window
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, TRACE_COLUMNS, span_row, trace_row
from tracehouse.sinks.span_decode import decode_spans


class Rejected(NamedTuple):
    """A record (or one span of it) not turned into rows, with why and its original bytes."""

    reason: str
    payload: bytes
    # False: invalid input, which the worker dead-letters (the sink only with `dead_letter_invalid`).
    # True: valid but refused for storage (a time outside core.timestamps' window): the sink dead-letters.
    refused: bool = False


Decoded = tuple[list[msgspec.Struct], list[Rejected]]


@dataclass
class Retention:
    """The `spans` table's TTL in days (None: none), as the sink last read it from ClickHouse."""

    days: int | None = None


def day_of_text(text: str) -> int:
    """The UTC day of a `"seconds.fraction"` DateTime64 text (what rows hold): a partition key."""
    return int(text.partition(".")[0]) // 86_400


_start_time = operator.attrgetter("start_time")


def start_day(row: msgspec.Struct) -> int:
    return day_of_text(_start_time(row))


def start_days(rows: list[msgspec.Struct]) -> set[int]:
    """The UTC days of the rows' `start_time`, cheaply in the usual case of one: texts of equal length
    compare like the numbers they hold, so when the earliest and the latest share a day, all do (a third of
    the cost of parsing each: ~0.15 µs a span)."""
    lo, hi = min(map(_start_time, rows)), max(map(_start_time, rows))
    if len(lo) == len(hi) and day_of_text(lo) == day_of_text(hi):
        return {day_of_text(lo)}
    return {day_of_text(text) for text in map(_start_time, rows)}


@dataclass(frozen=True)
class Route:
    topic: str
    table: str
    columns: tuple[str, ...]
    # value, Kafka partition, offset, the record's timestamp in ns (the reference for core.timestamps)
    decode: Callable[[bytes, int, int, int], Decoded]
    offsets_in_rows: bool = False  # rows carry ingest_partition/ingest_offset (exactly-once seek)
    fmt: str = "JSONEachRow"  # how encode_rows writes this route's rows
    # The table's partition of a row, as a number (UTC day of `toDate(...)`, month of `toYYYYMM(...)`):
    # the sink keeps each insert block within the server's `max_partitions_per_insert_block`.
    partition_key: Callable[[msgspec.Struct], int] | None = None
    # The distinct partition keys of a message's rows, when a route has a cheaper way than one by one
    partition_keys: Callable[[list[msgspec.Struct]], set[int]] | None = None


def spans_route(prices: PriceTable, retention: Retention | None = None) -> Route:
    kept_for = retention or Retention()

    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Decoded:
        try:
            spans, rejected = decode_spans(value)  # decode_batch, ids checked per message
        except SchemaError as exc:
            return [], [Rejected(exc.reason, value)]
        spans, refused = split_by_time(spans, time_window(received_ns, kept_for.days, time.time_ns()))
        rows = [span_row(span, prices, partition, offset) for span in spans]
        out = [Rejected(bad.reason, bad.payload) for bad in rejected]
        out.extend(Rejected(bad.reason, bad.payload, refused=True) for bad in refused)
        return rows, out

    return Route(
        topics.SPANS,
        "spans",
        SPAN_COLUMNS,
        decode,
        offsets_in_rows=True,
        fmt=SPAN_FORMAT,
        partition_key=start_day,
        partition_keys=start_days,
    )


def traces_route(retention: Retention | None = None) -> Route:
    """Traces are assembled from stored spans; the same time rule keeps a trace the worker built from a
    refused span (a worker that does not apply it yet) out of a far partition."""
    kept_for = retention or Retention()

    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Decoded:
        try:
            records = decode_traces(value)
        except SchemaError as exc:
            return [], [Rejected(exc.reason, value)]
        window = time_window(received_ns, kept_for.days, time.time_ns())
        rows: list[msgspec.Struct] = []
        refused: list[Rejected] = []
        for t in records:
            reason = time_refusal(t.start_time_ns, t.end_time_ns, window)
            if reason is None:
                rows.append(trace_row(t))
            else:
                refused.append(Rejected(reason.replace("span", "trace"), msgspec.json.encode(t), refused=True))
        return rows, refused

    return Route(
        topics.TRACES,
        "traces",
        TRACE_COLUMNS,
        decode,
        partition_key=start_day,
        partition_keys=start_days,
    )


def default_routes(prices: PriceTable | None = None, retention: Retention | None = None) -> list[Route]:
    routes = [spans_route(prices or configured_prices(), retention), traces_route(retention)]
    # Imported here: record_routes builds on this module's Route, so a top-level import would be circular.
    from tracehouse.sinks.record_routes import alerts_route, rollups_route, score_rollups_route, scores_route

    return [*routes, rollups_route(), alerts_route(), scores_route(), score_rollups_route()]
