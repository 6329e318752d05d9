"""The read model: one trace, one span, one session, the traces and sessions lists' rows, rollup series,
alerts, as msgspec Structs built by tracehouse.read.shape from the named queries' rows.

One definition serves every reader, so they cannot drift apart: `tracehouse trace ID --json` and
`tracehouse session ID --json` print these Structs, the web API answers with them (msgspec encodes a
1,000-span trace in about a millisecond), and `msgspec.json.schema_components` turns them into the
OpenAPI document's schemas, against which the tests validate real answers.

Times: nanosecond epochs do not fit a JavaScript number (2^53), so absolute times travel as ISO-8601 text
(and `start_ns` as a decimal string); positions inside a trace are `offset_ns` from the trace's start,
small enough to be exact numbers.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

Kind = Annotated[str, Meta(description="span kind: CHAIN, LLM, RETRIEVER, RERANKER, EMBEDDING, TOOL, AGENT, ...")]
IsoTime = Annotated[str, Meta(description="UTC time, ISO 8601 with a Z suffix")]


# ---- scores -----------------------------------------------------------------------------------------


class LatestScore(Struct):
    """The newest score of one name (on a trace, a span, or over a session's traces), from `scores` FINAL:
    what people look at is the latest value, and `count` says how many were given."""

    name: str
    value: float | None
    label: str
    source: Annotated[str, Meta(description="api, sdk, human or eval")]
    comment: str
    author: str
    created_at: IsoTime
    count: Annotated[int, Meta(description="scores of this name (the latest is shown)")]
    span_id: Annotated[str, Meta(description="the span it is on; empty: the trace as a whole")] = ""


# ---- traces list ------------------------------------------------------------------------------------


class TraceSummary(Struct):
    """One row of the `traces` table (its highest version: the most complete assembly)."""

    trace_id: str
    root_name: str
    root_span_id: str
    service: str
    services: list[str]
    start_time: IsoTime
    start_ms: int
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
    scores: Annotated[list[LatestScore], Meta(description="the latest score per name, by name")]


# ---- one trace --------------------------------------------------------------------------------------


class ToolCallView(Struct):
    id: str
    name: str
    arguments: str


class MessageView(Struct):
    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls: list[ToolCallView]


class LLMView(Struct):
    """Question 5: what the call asked for (parameters, system prompt, messages) and how it ended."""

    provider: str
    model: str
    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    stop: list[str]
    system_prompt: str
    invocation_parameters: str
    finish_reason: str
    input_messages: list[MessageView]
    output_messages: list[MessageView]


class PromptView(Struct):
    """Question 6: which template (name, version) produced the call, and with which variables."""

    template: str
    version: str
    text: str
    variables: dict[str, str]


class DocumentView(Struct):
    """Question 4: a retrieved document, with its score and its rank (`position`)."""

    position: int
    id: str
    content: str
    score: float | None
    metadata: dict[str, str]


class ExceptionView(Struct):
    """Question 3: an exception event (e.g. a rate limit), with its stack."""

    offset_ns: int
    type: str
    message: str
    stacktrace: str


class EventView(Struct):
    name: str
    offset_ns: int
    attributes: dict[str, str]


class ScoreView(Struct):
    name: str
    value: float | None
    label: str
    source: str
    comment: str


class SpanView(Struct):
    """One span with everything the span panel shows.

    Long texts are cut to the response's `max_chars`; `input_chars`/`output_chars` are the full lengths,
    and `GET /api/traces/{trace_id}/spans/{span_id}?max_chars=N` returns more.
    """

    span_id: str
    parent_span_id: str
    name: str
    kind: Kind
    service: str
    start_ns: Annotated[str, Meta(description="start, nanoseconds since the epoch, as a decimal string")]
    offset_ns: Annotated[int, Meta(description="start relative to the trace's start")]
    duration_ns: int
    status: str
    status_message: str
    error_type: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    cost_source: str
    input: str
    input_chars: int
    output: str
    output_chars: int
    llm: LLMView | None
    prompt: PromptView | None
    documents: list[DocumentView]
    exceptions: list[ExceptionView]
    events: Annotated[list[EventView], Meta(description="events other than exceptions")]
    scores: list[ScoreView]
    attributes: dict[str, str]
    resource_attributes: dict[str, str]
    session_id: str
    user_id: str
    tags: list[str]


class TreeSpan(SpanView):
    """A span in the trace's display order (depth first, children by start time)."""

    depth: int
    orphan: Annotated[bool, Meta(description="its parent is not in the trace (late, lost, or a parent loop)")]
    child_count: int


class TraceView(Struct):
    trace_id: str
    root_name: str
    root_span_id: str
    service: str
    services: list[str]
    start_time: IsoTime
    start_ns: str
    duration_ns: int
    span_count: int
    error_count: int
    orphan_count: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    session_id: str
    user_id: str
    max_chars: int
    spans_truncated: Annotated[bool, Meta(description="the trace has more spans than the server returns")]
    spans: list[TreeSpan]
    scores: Annotated[list[LatestScore], Meta(description="the latest score per name over the trace and its spans")]
    span_scores: Annotated[list[LatestScore], Meta(description="the latest score per name of each span (span_id "
                                                   "set), for the span panel")]  # fmt: skip


# ---- sessions ---------------------------------------------------------------------------------------


class SessionSummary(Struct):
    """One conversation: the traces sharing a session id (those that started in the asked range)."""

    session_id: str
    turns: Annotated[int, Meta(description="traces in the session")]
    user_id: Annotated[str, Meta(description="the session's user (the first, when several)")]
    user_ids: list[str]
    services: list[str]
    first_name: Annotated[str, Meta(description="the root span name of the first turn")]
    first_time: IsoTime
    last_time: Annotated[str, Meta(description="when the latest turn started (UTC, ISO 8601)")]
    duration_ns: Annotated[int, Meta(description="from the first turn's start to the last turn's end")]
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    errors: Annotated[int, Meta(description="error spans over every turn")]
    error_turns: Annotated[int, Meta(description="turns whose status is ERROR")]
    scores: Annotated[list[LatestScore], Meta(description="the latest score per name over the session's traces")]


class SessionTurn(Struct):
    """One trace of a conversation, with what went in and what came out."""

    turn: Annotated[int, Meta(description="1 for the first trace of the session")]
    trace_id: str
    root_name: str
    root_span_id: str
    service: str
    start_time: IsoTime
    start_ms: int
    duration_ns: int
    span_count: int
    error_count: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    user_id: str
    status: str
    input: Annotated[str, Meta(description="the root span's input (else the first input a span has), cut to "
                               "max_chars")]  # fmt: skip
    input_chars: int
    output: Annotated[str, Meta(description="the root span's output (else the last output a span has), cut to "
                                "max_chars")]  # fmt: skip
    output_chars: int
    scores: list[LatestScore]


class SessionView(Struct):
    session_id: str
    user_id: str
    turn_count: int
    first_time: IsoTime
    last_time: IsoTime
    duration_ns: int
    total_tokens: int
    cost_usd: float
    errors: int
    max_chars: int
    turns_truncated: Annotated[bool, Meta(description="the session has more traces than the server returns")]
    turns: list[SessionTurn]


# ---- rollups ----------------------------------------------------------------------------------------


class RollupPoint(Struct):
    t: Annotated[int, Meta(description="start of the step, seconds since the epoch")]
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float


class RollupSeries(Struct):
    group: str
    calls: int
    errors: int
    total_tokens: int
    cost_usd: float
    points: Annotated[list[RollupPoint], Meta(description="steps with calls only, in time order")]


# ---- alerts and filters -----------------------------------------------------------------------------


class FiringAlert(Struct):
    rule: str
    service: str
    group: str
    severity: str
    firing_since: IsoTime
    value: float | None
    threshold: float | None
    message: str


class AlertChange(Struct):
    fired_at: IsoTime
    state: str
    severity: str
    rule: str
    service: str
    group: str
    value: float | None
    threshold: float | None
    message: str
    window_start: IsoTime
    window_seconds: int


class NamedCount(Struct):
    name: str
    calls: int
