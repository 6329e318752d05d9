"""tracehouse SDK: trace an LLM app in three lines, at a few microseconds per span.

    from tracehouse.producers import configure, trace, span
    configure(service="support-bot")            # TRACEHOUSE_KAFKA_BOOTSTRAP etc. from the environment

    @trace(kind="LLM")
    def answer(question: str) -> str: ...

    with span("retrieve", kind="RETRIEVER") as s:
        s.set_documents(docs)

    score(trace_id=trace_id, name="user_feedback", value=0, label="thumbs_down")   # feedback, later

Spans nest through contextvars (across awaits and asyncio tasks; threads need `wrap_context`), continue
incoming W3C `traceparent` headers, record exceptions (rate limits recognised), and leave the app through
a bounded background queue to Kafka: the app thread never waits for the network.
"""

from tracehouse.core.schema import Document, Message, Span, ToolCall

from .context import wrap_context
from .decorators import trace
from .errors import error_type, is_rate_limit
from .guards import Guard, GuardTripped, guards
from .live_span import NOOP_SPAN, LiveSpan, NoopSpan
from .memory import InMemoryTransport
from .payload import DEFAULT_MAX_PAYLOAD_BYTES
from .propagation import (
    SpanContext,
    current_traceparent,
    extract_traceparent,
    format_traceparent,
    inject_traceparent,
    parse_traceparent,
)
from .scores import current_span_id, current_trace_id, score
from .tracer import (
    SpanSink,
    Tracer,
    configure,
    current_span,
    flush,
    get_tracer,
    set_tracer,
    shutdown,
    span,
    start_span,
    stats,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "NOOP_SPAN",
    "Document",
    "Guard",
    "GuardTripped",
    "InMemoryTransport",
    "LiveSpan",
    "Message",
    "NoopSpan",
    "Span",
    "SpanContext",
    "SpanSink",
    "ToolCall",
    "Tracer",
    "configure",
    "current_span",
    "current_span_id",
    "current_trace_id",
    "current_traceparent",
    "error_type",
    "extract_traceparent",
    "flush",
    "format_traceparent",
    "get_tracer",
    "guards",
    "inject_traceparent",
    "is_rate_limit",
    "parse_traceparent",
    "score",
    "set_tracer",
    "shutdown",
    "span",
    "start_span",
    "stats",
    "trace",
    "wrap_context",
]
