"""Turns wire records into the ClickHouse rows of the `spans` table, already encoded.

Encoding rows value by value through a database driver is the slow part of a Python sink. Here each span
becomes a `SpanRow` Struct whose fields are the table's columns, and msgspec encodes a whole batch in one C
call; the bytes go to ClickHouse as they are (`raw_insert`). Span rows are JSON arrays in column order
(`JSONCompactEachRow`, the column names given once in the INSERT): no key names to write and none for
ClickHouse to match, which takes ~13 % off the engine's CPU per span and a fifth off the encoding
(measured). Nanosecond times travel as `"seconds.nanoseconds"` strings, the text form DateTime64(9) parses
without loss.

Cheap on purpose (tests/benchmarks/sink_throughput.py measures it): rows are built positionally, are not
tracked by the garbage collector, and share the span's own nested Structs (documents, messages, scores)
instead of copying them. Those Structs omit default values when encoded, and ClickHouse fills a named
tuple's missing elements with their defaults (`input_format_json_defaults_for_missing_elements_in_named_tuple`,
on by default), so their field names must stay the element names of the tuple columns in sinks/ddl.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from tracehouse.core.error_types import span_error_type
from tracehouse.core.pricing import PriceTable, price_span, priced_version
from tracehouse.core.schema import Document, LLMCall, Message, PromptTemplate, Score, Span, TraceRecord


def ns_text(ns: int) -> str:
    """Nanoseconds since the epoch as DateTime64(9) text: the decimal digits with a point before the last
    nine. Cutting the digit string costs half as much as `divmod` and a zero-padded format (it runs twice
    a span); a time before 1970-01-01 00:00:01 (never valid in a span: core.schema's TimeNs) takes the
    long way."""
    if ns >= 1_000_000_000:
        digits = str(ns)
        return f"{digits[:-9]}.{digits[-9:]}"
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


class EventRow(msgspec.Struct, gc=False):
    """An event as the `events` tuple wants it: `time`, not the wire's `time_ns`."""

    name: str
    time: str
    attributes: dict[str, str]


class SpanRow(msgspec.Struct, gc=False, array_like=True):
    """One row of `tracehouse.spans`; fields are the columns, in order (encoded as a JSON array). Rows never
    form reference cycles, so the garbage collector need not track them (a batch holds many)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_time: str
    end_time: str
    duration_ns: int
    status: str
    status_message: str
    error_type: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    cost_source: str
    price_version: str
    cache_write_tokens: int
    input: str
    output: str
    attributes: dict[str, str]
    resource_attributes: dict[str, str]
    events: Sequence[EventRow]
    documents: Sequence[Document]
    prompt_template: str
    prompt_version: str
    prompt_text: str
    prompt_variables: dict[str, str]
    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    stop: Sequence[str]
    system_prompt: str
    invocation_parameters: str
    input_messages: Sequence[Message]
    output_messages: Sequence[Message]
    finish_reason: str
    scores: Sequence[Score]
    session_id: str
    user_id: str
    tags: Sequence[str]
    ingest_partition: int
    ingest_offset: int


SPAN_COLUMNS: tuple[str, ...] = SpanRow.__struct_fields__
SPAN_FORMAT = "JSONCompactEachRow"  # what encode_rows makes of SpanRows; insert with SPAN_COLUMNS

_EMPTY_LLM = LLMCall()
_EMPTY_PROMPT = PromptTemplate()
_NONE: tuple[()] = ()  # for empty list columns: one shared object instead of a new list per row


def error_type_of(span: Span) -> str:
    """The span's error class by the one rule the SDK, the receiver and the worker's rollups apply too
    (core/error_types.py): "rate_limit", else `error.type` when set, else the exception's type."""
    return span_error_type(span.attributes.get("error.type"), span.events, span.status, span.status_message)


def span_row(span: Span, prices: PriceTable, partition: int = 0, offset: int = 0) -> SpanRow:
    """The `spans` row for one span, priced from the price table (the entry in effect at its start) when
    the span carries no cost, with the table's version."""
    llm = span.llm or _EMPTY_LLM
    usage = span.usage
    cost, cost_source = price_span(prices, llm.model, usage, span.cost_usd, span.start_time_ns)
    prompt = span.prompt or _EMPTY_PROMPT
    start, end = span.start_time_ns, span.end_time_ns
    # `ns_text` inlined (it runs twice a span); a span's times are always past 1970-01-01 00:00:01 (TimeNs)
    start_digits, end_digits = str(start), str(end)
    status = span.status
    events = span.events
    if usage is None:
        input_tokens = output_tokens = total_tokens = cached_tokens = reasoning_tokens = cache_write_tokens = 0
    else:
        input_tokens, output_tokens, total_tokens = usage.input, usage.output, usage.total
        cached_tokens, reasoning_tokens, cache_write_tokens = usage.cached, usage.reasoning, usage.cache_write
    # Positional, in SpanRow's field order (cheaper than matching 46 keyword names).
    return SpanRow(
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.name,
        span.kind,
        span.service,
        f"{start_digits[:-9]}.{start_digits[-9:]}",
        f"{end_digits[:-9]}.{end_digits[-9:]}",
        end - start,
        status,
        span.status_message,
        error_type_of(span) if (status == "ERROR" or events) else "",
        llm.model,
        llm.provider,
        input_tokens,
        output_tokens,
        total_tokens,
        cached_tokens,
        reasoning_tokens,
        cost,
        cost_source,
        priced_version(prices, cost_source),
        cache_write_tokens,
        span.input,
        span.output,
        span.attributes,
        span.resource,
        [EventRow(e.name, ns_text(e.time_ns), e.attributes) for e in events] if events else _NONE,
        span.documents or _NONE,
        prompt.name,
        prompt.version,
        prompt.template,
        prompt.variables,
        llm.temperature,
        llm.max_tokens,
        llm.top_p,
        llm.stop or _NONE,
        llm.system_prompt,
        llm.invocation_parameters,
        llm.input_messages or _NONE,
        llm.output_messages or _NONE,
        llm.finish_reason,
        span.scores or _NONE,
        span.session_id,
        span.user_id,
        span.tags or _NONE,
        partition,
        offset,
    )


_json = msgspec.json.Encoder()


def encode_rows(rows: list[msgspec.Struct]) -> bytes:
    """One JSON line per row Struct: JSONEachRow, or JSONCompactEachRow for array-like rows (SpanRow)."""
    return _json.encode_lines(rows)


def readable_row(line: bytes, columns: tuple[str, ...]) -> bytes:
    """A JSONCompactEachRow line as a JSON object line with its column names (for dead letters, which
    people read); any other line as it is."""
    try:
        values = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return line
    if not isinstance(values, list) or len(values) != len(columns):
        return line
    return _json.encode(dict(zip(columns, values, strict=True))) + b"\n"


class TraceRow(msgspec.Struct):
    """One row of `tracehouse.traces`; field names are column names."""

    trace_id: str
    version: int
    root_name: str
    root_span_id: str
    service: str
    services: list[str]
    start_time: str
    end_time: str
    duration_ns: int
    span_count: int
    error_count: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    unpriced_models: list[str]
    session_id: str
    user_id: str
    status: str
    complete: bool
    orphan_spans: int
    slowest_span_id: str
    slowest_span_name: str
    slowest_span_duration_ns: int
    price_version: str
    sampled: bool  # tail sampling (migration 8)
    sampled_by: str


TRACE_COLUMNS: tuple[str, ...] = TraceRow.__struct_fields__


def trace_row(t: TraceRecord) -> TraceRow:
    return TraceRow(
        t.trace_id,
        t.version,
        t.root_name,
        t.root_span_id,
        t.service,
        t.services,
        ns_text(t.start_time_ns),
        ns_text(t.end_time_ns),
        t.duration_ns,
        t.span_count,
        t.error_count,
        t.input_tokens,
        t.output_tokens,
        t.cached_tokens,
        t.reasoning_tokens,
        t.total_tokens,
        t.cost_usd,
        t.unpriced_models,
        t.session_id,
        t.user_id,
        t.status,
        t.complete,
        t.orphan_spans,
        t.slowest_span_id,
        t.slowest_span_name,
        t.slowest_span_duration_ns,
        t.price_version,
        t.sampled,
        t.sampled_by,
    )
