"""The worker's view of a span: the same wire bytes as `core.schema.Span`, decoded at less cost per span.

Why not decode `Span` itself: the worker reads a dozen fields, but a full `Span` makes a fresh empty list
for every absent list field (events, documents, scores, tags; stop and the messages of every LLM call; the
tool calls of every message). Lists are tracked by the garbage collector, so every batch of 500 spans fed
it thousands of objects to chase, and kept it scanning the worker's whole heap (its open traces).

Why not decode only the fields the worker reads: the rule is that a span the full decoder rejects goes to
the dead-letter topic with its reason and never reaches a trace or a window. A decoder that skips fields
cannot see that `documents[3].score` is a string. So `WorkSpan` declares every field of `Span` with the
same type and constraints, and differs only where that saves work without letting anything more through:
- arrays decode to tuples (`tuple[X, ...]` accepts exactly what `list[X]` accepts), and an absent or
  empty one is the shared empty tuple: no allocation, nothing for the collector;
- ids are checked for their length per span, and for being lowercase hex once per batch (msgspec checks a
  `pattern` with a Python regex call per field and span: that was 40 % of the decoding);
- `Span.__post_init__`'s checks (end before start, a span its own parent) run once per batch too, and the
  token total's default (`input + output` when 0) is left to the reader (`usage_total`), instead of a
  Python call per span and per usage.
`WorkSpan` may refuse more than `Span` (an id that `$` lets end in a newline), never less. Any refusal at
all (the batch does not decode, or a batch check fails) sends that message to `core.schema.decode_batch`,
which finds the bad spans and words their reasons, so what is dead-lettered, and why, is exactly what it
was. tests/unit/test_span_view.py holds both decoders to the same verdicts, and `WorkSpan` to the same fields
as `Span`.
"""

from __future__ import annotations

import operator
import re
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from tracehouse.core import schema
from tracehouse.core.schema import (
    SCHEMA_VERSION,
    Attributes,
    Count,
    Name,
    RejectedSpan,
    SchemaError,
    ShortText,
    Span,
    SpanKind,
    Status,
    TimeNs,
    decode_batch,
)


class WorkEvent(Struct, gc=False):
    name: Name
    time_ns: TimeNs
    attributes: Attributes = {}


class WorkToolCall(Struct, gc=False):
    id: str = ""
    name: str = ""
    arguments: str = ""


class WorkMessage(Struct, gc=False):
    role: ShortText = ""
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: tuple[WorkToolCall, ...] = ()


class WorkLLMCall(Struct, gc=False):
    model: ShortText = ""
    provider: ShortText = ""
    temperature: float | None = None
    max_tokens: Count | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    system_prompt: str = ""
    input_messages: tuple[WorkMessage, ...] = ()
    output_messages: tuple[WorkMessage, ...] = ()
    finish_reason: ShortText = ""
    invocation_parameters: str = ""


class WorkTokenUsage(Struct, gc=False):
    """`TokenUsage` without its `__post_init__`: read the total with `usage_total`."""

    input: Count = 0
    output: Count = 0
    cached: Count = 0
    reasoning: Count = 0
    total: Count = 0
    cache_write: Count = 0


class WorkPromptTemplate(Struct, gc=False):
    name: ShortText = ""
    version: ShortText = ""
    template: str = ""
    variables: Attributes = {}


class WorkDocument(Struct, gc=False):
    id: str = ""
    content: str = ""
    score: float | None = None
    position: Count = 0
    metadata: Attributes = {}


class WorkScore(Struct, gc=False):
    name: Name
    value: float | None = None
    label: ShortText = ""
    source: ShortText = ""
    comment: str = ""


# The ids' lengths, checked per span by msgspec; that they are lowercase hex (the patterns of `TraceId`,
# `SpanId`, `ParentSpanId`) is checked once per batch in `decode_work_batch`: msgspec calls a Python regex
# per field and span, which cost as much as the rest of the decoding together.
_TraceIdLength = Annotated[str, Meta(min_length=32, max_length=32)]
_SpanIdLength = Annotated[str, Meta(min_length=16, max_length=16)]
_ParentIdLength = Annotated[str, Meta(max_length=16)]
_HEX = re.compile("[0-9a-f]*")
_trace_ids = operator.attrgetter("trace_id")
_span_ids = operator.attrgetter("span_id")
_parent_ids = operator.attrgetter("parent_span_id")
_starts = operator.attrgetter("start_time_ns")
_ends = operator.attrgetter("end_time_ns")


class WorkSpan(Struct, gc=False):
    """`Span`, field for field (see the module docstring for the only differences)."""

    trace_id: _TraceIdLength
    span_id: _SpanIdLength
    name: Name
    start_time_ns: TimeNs
    end_time_ns: TimeNs
    parent_span_id: _ParentIdLength = ""
    kind: SpanKind = "UNKNOWN"
    service: ShortText = "unknown_service"
    status: Status = "UNSET"
    status_message: str = ""
    input: str = ""
    output: str = ""
    attributes: Attributes = {}
    resource: Attributes = {}
    events: tuple[WorkEvent, ...] = ()
    llm: WorkLLMCall | None = None
    usage: WorkTokenUsage | None = None
    cost_usd: float | None = None
    prompt: WorkPromptTemplate | None = None
    documents: tuple[WorkDocument, ...] = ()
    scores: tuple[WorkScore, ...] = ()
    session_id: ShortText = ""
    user_id: ShortText = ""
    tags: tuple[str, ...] = ()


class _WorkSpanBatch(Struct):
    spans: list[WorkSpan]
    v: int = SCHEMA_VERSION


_work_batch_decoder = msgspec.msgpack.Decoder(_WorkSpanBatch)

AnySpan = Span | WorkSpan


def usage_total(usage: WorkTokenUsage) -> int:
    """The total as `TokenUsage` reads it: `input + output` when the sender gave none (also right for a
    decoded `TokenUsage`, whose total is already that)."""
    return usage.total or usage.input + usage.output


def decode_work_batch(data: bytes) -> tuple[list[WorkSpan] | list[Span], list[RejectedSpan]]:
    """`core.schema.decode_batch` for the worker: the same spans accepted, the same rejected with the same
    reasons (rejections come from it), as `WorkSpan`s when the whole message is good."""
    if len(data) > schema.MAX_BATCH_BYTES:
        raise SchemaError(f"message is {len(data)} bytes, above the limit of {schema.MAX_BATCH_BYTES}")
    try:
        spans = _work_batch_decoder.decode(data).spans
    except (msgspec.DecodeError, msgspec.ValidationError):
        return decode_batch(data)
    if len(spans) > schema.MAX_SPANS_PER_BATCH:
        raise SchemaError(f"message has {len(spans)} spans, above {schema.MAX_SPANS_PER_BATCH}")
    if not _ids_and_times_hold(spans):
        return decode_batch(data)
    return spans, []


def _ids_and_times_hold(spans: list[WorkSpan]) -> bool:
    """What `Span` checks and `WorkSpan` leaves out, for a whole batch at once (C loops, no Python loop per
    span): every id lowercase hex (their lengths are checked already), a parent id empty or 16 digits long,
    no span ending before it starts or its own parent (`Span.__post_init__`)."""
    parents = list(map(_parent_ids, spans))
    return (
        _HEX.fullmatch("".join(map(_trace_ids, spans))) is not None
        and _HEX.fullmatch("".join(map(_span_ids, spans))) is not None
        and _HEX.fullmatch("".join(parents)) is not None
        and set(map(len, parents)) <= {0, 16}
        and not any(map(operator.lt, map(_ends, spans), map(_starts, spans)))
        and not any(map(operator.eq, parents, map(_span_ids, spans)))
    )
