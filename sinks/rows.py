"""Turns wire records into the ClickHouse rows of the `spans` table, already encoded.

Encoding rows value by value through a database driver is the slow part of a Python sink. Here each span
becomes a `SpanRow` Struct whose fields are the table's columns, and msgspec encodes a whole batch to
JSONEachRow in one C call; the bytes go to ClickHouse as they are (`raw_insert`). Nanosecond times travel
as `"seconds.nanoseconds"` strings, the text form DateTime64(9) parses without loss.
"""

from __future__ import annotations

import msgspec

from tracehouse.core.pricing import PriceTable, price_span
from tracehouse.core.schema import Document, Event, LLMCall, Message, Score, Span, TraceRecord


def ns_text(ns: int) -> str:
    """Nanoseconds since the epoch as DateTime64(9) text."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


class EventRow(msgspec.Struct):
    name: str
    time: str
    attributes: dict[str, str]


class DocumentRow(msgspec.Struct):
    id: str
    content: str
    score: float | None
    position: int
    metadata: dict[str, str]


class ToolCallRow(msgspec.Struct):
    id: str
    name: str
    arguments: str


class MessageRow(msgspec.Struct):
    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls: list[ToolCallRow]


class ScoreRow(msgspec.Struct):
    name: str
    value: float | None
    label: str
    source: str
    comment: str


class SpanRow(msgspec.Struct):
    """One row of `tracehouse.spans`; field names are column names."""

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
    input: str
    output: str
    attributes: dict[str, str]
    resource_attributes: dict[str, str]
    events: list[EventRow]
    documents: list[DocumentRow]
    prompt_template: str
    prompt_version: str
    prompt_text: str
    prompt_variables: dict[str, str]
    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    stop: list[str]
    system_prompt: str
    invocation_parameters: str
    input_messages: list[MessageRow]
    output_messages: list[MessageRow]
    finish_reason: str
    scores: list[ScoreRow]
    session_id: str
    user_id: str
    tags: list[str]
    ingest_partition: int
    ingest_offset: int


SPAN_COLUMNS: tuple[str, ...] = SpanRow.__struct_fields__

_EMPTY_LLM = LLMCall()


def error_type_of(span: Span) -> str:
    """The span's error class: `error.type` when set (e.g. "rate_limit"), else the exception's type."""
    explicit = span.attributes.get("error.type")
    if explicit:
        return explicit
    for event in span.events:
        if event.name == "exception":
            return event.attributes.get("exception.type", "exception")
    return "" if span.status != "ERROR" else "error"


def _messages(messages: list[Message]) -> list[MessageRow]:
    return [
        MessageRow(
            m.role,
            m.content,
            m.name,
            m.tool_call_id,
            [ToolCallRow(t.id, t.name, t.arguments) for t in m.tool_calls],
        )
        for m in messages
    ]


def _events(events: list[Event]) -> list[EventRow]:
    return [EventRow(e.name, ns_text(e.time_ns), e.attributes) for e in events]


def _documents(documents: list[Document]) -> list[DocumentRow]:
    return [DocumentRow(d.id, d.content, d.score, d.position, d.metadata) for d in documents]


def _scores(scores: list[Score]) -> list[ScoreRow]:
    return [ScoreRow(s.name, s.value, s.label, s.source, s.comment) for s in scores]


def span_row(span: Span, prices: PriceTable, partition: int = 0, offset: int = 0) -> SpanRow:
    """The `spans` row for one span, priced from the price table when the span carries no cost."""
    llm = span.llm or _EMPTY_LLM
    usage = span.usage
    cost, cost_source = price_span(prices, llm.model, usage, span.cost_usd)
    prompt = span.prompt
    return SpanRow(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        name=span.name,
        kind=span.kind,
        service=span.service,
        start_time=ns_text(span.start_time_ns),
        end_time=ns_text(span.end_time_ns),
        duration_ns=span.end_time_ns - span.start_time_ns,
        status=span.status,
        status_message=span.status_message,
        error_type=error_type_of(span) if (span.status == "ERROR" or span.events) else "",
        model=llm.model,
        provider=llm.provider,
        input_tokens=usage.input if usage else 0,
        output_tokens=usage.output if usage else 0,
        total_tokens=usage.total if usage else 0,
        cached_tokens=usage.cached if usage else 0,
        reasoning_tokens=usage.reasoning if usage else 0,
        cost_usd=cost,
        cost_source=cost_source,
        input=span.input,
        output=span.output,
        attributes=span.attributes,
        resource_attributes=span.resource,
        events=_events(span.events) if span.events else [],
        documents=_documents(span.documents) if span.documents else [],
        prompt_template=prompt.name if prompt else "",
        prompt_version=prompt.version if prompt else "",
        prompt_text=prompt.template if prompt else "",
        prompt_variables=prompt.variables if prompt else {},
        temperature=llm.temperature,
        max_tokens=llm.max_tokens,
        top_p=llm.top_p,
        stop=llm.stop,
        system_prompt=llm.system_prompt,
        invocation_parameters=llm.invocation_parameters,
        input_messages=_messages(llm.input_messages) if llm.input_messages else [],
        output_messages=_messages(llm.output_messages) if llm.output_messages else [],
        finish_reason=llm.finish_reason,
        scores=_scores(span.scores) if span.scores else [],
        session_id=span.session_id,
        user_id=span.user_id,
        tags=span.tags,
        ingest_partition=partition,
        ingest_offset=offset,
    )


_json = msgspec.json.Encoder()


def encode_rows(rows: list[msgspec.Struct]) -> bytes:
    """JSONEachRow bytes for a batch of row Structs."""
    return _json.encode_lines(rows)


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
    )
