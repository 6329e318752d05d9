"""The wire schema: every record that crosses a process boundary, as msgspec Structs.

Spans travel through Kafka as msgpack, many per message (`SpanBatch`), because Kafka and Faust cost per
message, not per byte. Producers encode a whole batch in one call; consumers decode the envelope with each
span left as `msgspec.Raw`, so one malformed span is rejected on its own (to the dead-letter topic, with
its reason and bytes) and never takes the good spans of its batch down with it.

Every Struct is `gc=False`: records never form reference cycles, and untracked objects keep the garbage
collector from rescanning thousands of queued spans inside the instrumented application.

Versioning: `SpanBatch.v` is the envelope version. Fields are only ever added with defaults, so an old
consumer reads a new producer's records (unknown fields are ignored) and a new consumer reads old ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta, Raw, Struct

T = TypeVar("T")

SCHEMA_VERSION = 1

# Limits that keep one record from hurting a worker. Producers truncate payloads well below them.
MAX_SPAN_BYTES = 4 * 1024 * 1024
MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_SPANS_PER_BATCH = 100_000

SpanKind = Literal[
    "CHAIN",
    "EMBEDDING",
    "RETRIEVER",
    "RERANKER",
    "LLM",
    "TOOL",
    "AGENT",
    "GUARDRAIL",
    "EVALUATOR",
    "PROMPT",
    "UNKNOWN",
]
SPAN_KINDS: tuple[str, ...] = SpanKind.__args__  # type: ignore[attr-defined]

Status = Literal["OK", "ERROR", "UNSET"]

TraceId = Annotated[str, Meta(pattern="^[0-9a-f]{32}$", description="32 lowercase hex digits")]
SpanId = Annotated[str, Meta(pattern="^[0-9a-f]{16}$", description="16 lowercase hex digits")]
ParentSpanId = Annotated[str, Meta(pattern="^([0-9a-f]{16})?$")]
Name = Annotated[str, Meta(min_length=1, max_length=1024)]
ShortText = Annotated[str, Meta(max_length=1024)]
# Nanoseconds since the epoch: after 2000-01-01 and before 2262 (the int64 nanosecond limit).
TimeNs = Annotated[int, Meta(ge=946_684_800_000_000_000, le=9_223_372_036_854_775_807)]
# Token counts are UInt32 columns in ClickHouse, which would silently wrap a larger value: reject it here.
Count = Annotated[int, Meta(ge=0, le=4_294_967_295)]
Attributes = dict[str, str]


class Event(Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """A point in time inside a span; exceptions are events named `exception`
    with `exception.type`, `exception.message` and `exception.stacktrace` attributes."""

    name: Name
    time_ns: TimeNs
    attributes: Attributes = {}


class ToolCall(Struct, omit_defaults=True, gc=False):
    """A tool call requested by an LLM in one of its messages."""

    id: str = ""
    name: str = ""
    arguments: str = ""


class Message(Struct, omit_defaults=True, gc=False):
    """One chat message sent to or received from an LLM."""

    role: ShortText = ""
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: list[ToolCall] = []


class LLMCall(Struct, omit_defaults=True, gc=False):
    """What an LLM span asked for and got: the parameters and messages of question 5."""

    model: ShortText = ""
    provider: ShortText = ""
    temperature: float | None = None
    max_tokens: Count | None = None
    top_p: float | None = None
    stop: list[str] = []
    system_prompt: str = ""
    input_messages: list[Message] = []
    output_messages: list[Message] = []
    finish_reason: ShortText = ""
    invocation_parameters: str = ""  # the call's full parameters as JSON, as the SDK or OTel gave them


class TokenUsage(Struct, omit_defaults=True, gc=False):
    """Token counts by class; cached and reasoning tokens are priced differently (question 2).

    `input` includes `cached` (cache reads) and `cache_write` (tokens written to the prompt cache, billed
    at a premium by Anthropic), `output` includes `reasoning`, as the providers report them.
    """

    input: Count = 0
    output: Count = 0
    cached: Count = 0
    reasoning: Count = 0
    total: Count = 0
    cache_write: Count = 0  # last: Structs are built positionally

    def __post_init__(self) -> None:
        if self.total == 0:
            self.total = self.input + self.output


class PromptTemplate(Struct, omit_defaults=True, gc=False):
    """Which prompt template (and version) produced an LLM call, with its variables (question 6)."""

    name: ShortText = ""
    version: ShortText = ""
    template: str = ""
    variables: Attributes = {}


class Document(Struct, omit_defaults=True, gc=False):
    """A document a retriever or reranker returned; `position` keeps its rank (question 4)."""

    id: str = ""
    content: str = ""
    score: float | None = None
    position: Count = 0
    metadata: Attributes = {}


class Score(Struct, omit_defaults=True, gc=False):
    """An evaluation attached to a span: a number, a label, or both."""

    name: Name
    value: float | None = None
    label: ShortText = ""
    source: ShortText = ""  # e.g. "human", "llm_judge", "heuristic"
    comment: str = ""


class Span(Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """One unit of work in a trace. Everything the `spans` table holds travels here."""

    trace_id: TraceId
    span_id: SpanId
    name: Name
    start_time_ns: TimeNs
    end_time_ns: TimeNs
    parent_span_id: ParentSpanId = ""
    kind: SpanKind = "UNKNOWN"
    service: ShortText = "unknown_service"
    status: Status = "UNSET"
    status_message: str = ""
    input: str = ""  # JSON text of any JSON-able value, possibly truncated (see attributes)
    output: str = ""
    attributes: Attributes = {}
    resource: Attributes = {}
    events: list[Event] = []
    llm: LLMCall | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = None  # None: the pipeline prices it from its price table
    prompt: PromptTemplate | None = None
    documents: list[Document] = []
    scores: list[Score] = []
    session_id: ShortText = ""
    user_id: ShortText = ""
    tags: list[str] = []

    def __post_init__(self) -> None:
        if self.end_time_ns < self.start_time_ns:
            raise ValueError(f"end_time_ns ({self.end_time_ns}) is before start_time_ns ({self.start_time_ns})")
        if self.parent_span_id == self.span_id:
            raise ValueError("span is its own parent")

    @property
    def duration_ns(self) -> int:
        return self.end_time_ns - self.start_time_ns

    @property
    def is_root(self) -> bool:
        return not self.parent_span_id


class SpanBatch(Struct, omit_defaults=True, gc=False):
    """What one Kafka message on `tracehouse.spans` carries: many spans, all in one partition."""

    spans: list[Span]
    v: int = SCHEMA_VERSION


class _RawSpanBatch(Struct):
    """The same envelope with spans undecoded, so each one is validated on its own."""

    spans: list[Raw]
    v: int = SCHEMA_VERSION


class DeadLetter(Struct, omit_defaults=True, gc=False):
    """A rejected record on `tracehouse.dlq`: why, where it came from, and its original bytes."""

    reason: str
    stage: str  # "decode", "validate", "sink", ...
    payload: bytes
    source_topic: str = ""
    partition: int = -1
    offset: int = -1
    time_ns: int = 0


class RejectedRecord(Struct, gc=False):
    """A record (span, score) that failed decoding or validation, with its original bytes."""

    reason: str
    payload: bytes


RejectedSpan = RejectedRecord


class SchemaError(ValueError):
    """A whole record could not be decoded; `reason` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_batch_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(SpanBatch)
_raw_batch_decoder = msgspec.msgpack.Decoder(_RawSpanBatch)
_span_decoder = msgspec.msgpack.Decoder(Span)


def encode_batch(spans: list[Span]) -> bytes:
    """Encode spans into one Kafka message value."""
    return _batch_encoder.encode(SpanBatch(spans=spans))


def encode_span(span: Span) -> bytes:
    return _batch_encoder.encode(span)


def decode_span(data: bytes) -> Span:
    """Decode and validate one span; raises SchemaError with the reason."""
    if len(data) > MAX_SPAN_BYTES:
        raise SchemaError(f"span is {len(data)} bytes, above the limit of {MAX_SPAN_BYTES}")
    try:
        return _span_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"invalid span: {exc}") from None


def decode_records(
    data: bytes,
    *,
    kind: str,
    item: str,
    batch: msgspec.msgpack.Decoder,
    raw: msgspec.msgpack.Decoder,
    version: int,
    max_items: int,
    decode_item: Callable[[bytes], T],
) -> tuple[list[T], list[RejectedRecord]]:
    """Decode one Kafka message of many records (`kind`, the envelope's field: "spans", "scores"; `item`, one
    of them in words: "span", "score") into the valid ones and the rejected ones.

    `batch` decodes the whole envelope at once (the fast path); only when that fails does `raw` (the same
    envelope with its records undecoded) hand each record to `decode_item` alone, which raises SchemaError
    with the reason: a bad record costs its message a second pass and nothing else. Raises SchemaError when
    the envelope itself is unreadable (the whole message then goes to the DLQ).
    """
    if len(data) > MAX_BATCH_BYTES:
        raise SchemaError(f"message is {len(data)} bytes, above the limit of {MAX_BATCH_BYTES}")
    try:
        items = getattr(batch.decode(data), kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    else:
        if len(items) > max_items:
            raise SchemaError(f"message has {len(items)} {kind}, above {max_items}")
        return items, []
    try:
        envelope = raw.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not a {item} batch: {exc}") from None
    if envelope.v > version:
        raise SchemaError(f"{item} batch version {envelope.v} is newer than this reader ({version})")
    raw_items = getattr(envelope, kind)
    if len(raw_items) > max_items:
        raise SchemaError(f"message has {len(raw_items)} {kind}, above {max_items}")
    good: list[T] = []
    bad: list[RejectedRecord] = []
    for item in raw_items:
        payload = bytes(item)
        try:
            good.append(decode_item(payload))
        except SchemaError as exc:
            bad.append(RejectedRecord(reason=exc.reason, payload=payload))
    return good, bad


def decode_batch(data: bytes) -> tuple[list[Span], list[RejectedSpan]]:
    """Decode one Kafka message of `tracehouse.spans` into its valid spans and its rejected ones
    (`decode_records`)."""
    return decode_records(
        data,
        kind="spans",
        item="span",
        batch=_batch_decoder,
        raw=_raw_batch_decoder,
        version=SCHEMA_VERSION,
        max_items=MAX_SPANS_PER_BATCH,
        decode_item=decode_span,
    )


_dead_letter_encoder = msgspec.msgpack.Encoder()
_dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return _dead_letter_encoder.encode(letter)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)


class TraceRecord(Struct, omit_defaults=True, gc=False):
    """One assembled trace on `tracehouse.traces`; field names are the `traces` table's columns.

    `version` is the number of spans the record covers, so a revision (a late span arrived) always has a
    higher version than what it replaces, and a partial re-assembly after a worker restart (fewer spans)
    never wins in ClickHouse's ReplacingMergeTree(version).
    """

    trace_id: str
    version: int
    root_name: str
    root_span_id: str
    service: str
    services: list[str]
    start_time_ns: int
    end_time_ns: int
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
    price_version: str = ""  # the price table the worker priced the spans with (core/pricing.py)
    # Tail sampling (pipeline/sampling.py): whether the trace's spans are stored, and the rule that kept it
    # ("" when dropped or sampling is off). The defaults are what records from before sampling mean.
    sampled: bool = True
    sampled_by: str = ""


class TraceBatch(Struct, omit_defaults=True, gc=False):
    """What one Kafka message on `tracehouse.traces` carries."""

    traces: list[TraceRecord]
    v: int = SCHEMA_VERSION


_trace_batch_encoder = msgspec.msgpack.Encoder()
_trace_batch_decoder = msgspec.msgpack.Decoder(TraceBatch)


def encode_traces(traces: list[TraceRecord]) -> bytes:
    return _trace_batch_encoder.encode(TraceBatch(traces=traces))


def decode_traces(data: bytes) -> list[TraceRecord]:
    try:
        return _trace_batch_decoder.decode(data).traces
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not a trace batch: {exc}") from None
