"""Which Kafka topic lands in which ClickHouse table, and how a message becomes rows.

A route turns one Kafka message into rows (msgspec Structs whose fields are the table's columns) plus
the records it could not read. Only the spans route is exactly-once by stored offsets (its rows carry
their partition and offset); traces, rollups and alerts land in ReplacingMergeTree tables keyed so that a
redelivered record replaces its twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from tracehouse.core import topics
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import SchemaError, decode_batch, decode_traces
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, TRACE_COLUMNS, span_row, trace_row

Rejected = tuple[str, bytes]  # reason, original bytes
Decoded = tuple[list[msgspec.Struct], list[Rejected]]


@dataclass(frozen=True)
class Route:
    topic: str
    table: str
    columns: tuple[str, ...]
    decode: Callable[[bytes, int, int], Decoded]  # value, partition, offset
    offsets_in_rows: bool = False  # rows carry ingest_partition/ingest_offset (exactly-once seek)
    fmt: str = "JSONEachRow"  # how encode_rows writes this route's rows


def spans_route(prices: PriceTable) -> Route:
    def decode(value: bytes, partition: int, offset: int) -> Decoded:
        try:
            spans, rejected = decode_batch(value)
        except SchemaError as exc:
            return [], [(exc.reason, value)]
        rows = [span_row(span, prices, partition, offset) for span in spans]
        return rows, [(bad.reason, bad.payload) for bad in rejected]

    return Route(topics.SPANS, "spans", SPAN_COLUMNS, decode, offsets_in_rows=True, fmt=SPAN_FORMAT)


def traces_route() -> Route:
    def decode(value: bytes, partition: int, offset: int) -> Decoded:
        try:
            return [trace_row(t) for t in decode_traces(value)], []
        except SchemaError as exc:
            return [], [(exc.reason, value)]

    return Route(topics.TRACES, "traces", TRACE_COLUMNS, decode)


def default_routes(prices: PriceTable | None = None) -> list[Route]:
    routes = [spans_route(prices or PriceTable()), traces_route()]
    try:
        from tracehouse.sinks.record_routes import alerts_route, rollups_route
    except ImportError:  # pragma: no cover - rollups arrive with the pipeline's rollup records
        return routes
    return [*routes, rollups_route(), alerts_route()]
