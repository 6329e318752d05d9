"""How much one span may hold: counts of attributes, events and links, and its encoded size.

Why it exists: a span travels in one Kafka message of at most `MAX_MESSAGE_BYTES`. Texts are already
cut at `max_payload_bytes` each, but a span can still outgrow a message by the number of its parts
(100,000 short attributes, a stream of 100,000 events). Found only when the sender encodes it, such a
span could only be dropped after the receiver had answered 200. So the limits are applied where a span
is made, before anyone is told it was accepted: by the receiver right after mapping (`fit_span`, whose
notes go into the answer's `partial_success`), and by the SDK when a span ends (`limit_counts`).

What happens to a span over a limit, in this order:
1. Counts (OpenTelemetry's span limits are the model): attributes beyond `attributes` are dropped, the
   first ones kept in the order they were set, plus the few tracehouse itself sets or reads (`error.type`,
   `otel.*`, `tracehouse.*`); the span records how many it lost in `tracehouse.dropped_attributes_count`.
   Events beyond `events` are dropped from the middle (the first half and the last half are kept: the
   start of a stream, and how it ended, where an exception event usually is), counted in
   `tracehouse.dropped_events_count`; an event's own attributes likewise, counted on the event.
2. Size: unless a cheap bound says it cannot (`bounded_by_source`: a small request body cannot hold a
   big span), the span is encoded to measure it; if it does not fit, its long texts are cut with a
   marker (`oversize.shrink_to_fit`); if even that is not enough, the span is refused with the reason
   (`SpanTooLarge`).

The defaults are OpenTelemetry's (128) for what LLM spans keep small (links, attributes of one event),
and eight times that for what they do not: OpenInference flattens every message, tool definition and
document into attributes (`llm.input_messages.12.message.content`, `llm.tools.40.tool.json_schema`),
LangChain metadata becomes `metadata.*` keys, and a streamed answer can carry one event per chunk;
OpenTelemetry's 128 would cut such spans. These still bound a span to about what fits one message.

Cost on the hot path: a few length checks per span (~0.2 µs); for a request body above ~90 KB
(decompressed, default limits) also one msgpack encode per span to measure it (1-2 µs of the ~35-40 µs
a span costs to decode and map). A per-span size bound written in Python measured slower than that
encode (2.2 µs), so the encode is the cheap way, and its bytes are not thrown away: `fit_span_encoded`
returns them, and the receiver's sender puts them into the Kafka message as they are
(`span_messages`), instead of encoding the span a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

from tracehouse.core import settings
from tracehouse.core.schema import Event, Span

from .oversize import TRUNCATED_FROM, shrink_to_fit

log = logging.getLogger("tracehouse.producers")

__all__ = [
    "DROPPED_ATTRIBUTES",
    "DROPPED_EVENTS",
    "DROPPED_LINKS",
    "ENVELOPE_BYTES",
    "MAX_MESSAGE_BYTES",
    "SpanLimits",
    "SpanTooLarge",
    "bounded_by_source",
    "default_span_limits",
    "dropped_events_marker",
    "fit_span",
    "fit_span_encoded",
    "kept_attributes",
    "kept_events",
    "limit_counts",
]

MAX_MESSAGE_BYTES = 900_000  # one Kafka message on tracehouse.spans (the topics allow 1 MiB)
ENVELOPE_BYTES = 16  # what the `SpanBatch` envelope adds around one span

# The settings, one environment variable each (OpenTelemetry's names, with TRACEHOUSE_ in front), declared
# with their defaults in core/settings.py.
ATTRIBUTE_COUNT_ENV = settings.SPAN_ATTRIBUTE_COUNT_LIMIT.name
EVENT_COUNT_ENV = settings.SPAN_EVENT_COUNT_LIMIT.name
EVENT_ATTRIBUTE_COUNT_ENV = settings.EVENT_ATTRIBUTE_COUNT_LIMIT.name
LINK_COUNT_ENV = settings.SPAN_LINK_COUNT_LIMIT.name

# The markers, mirroring OTLP's own `dropped_*_count` fields (which the receiver keeps as `otel.*`).
DROPPED_ATTRIBUTES = "tracehouse.dropped_attributes_count"
DROPPED_EVENTS = "tracehouse.dropped_events_count"
DROPPED_LINKS = "tracehouse.dropped_links_count"

T = TypeVar("T")
_RESERVED = 64  # attributes past the limit still kept because tracehouse sets or reads them
_RESERVED_PREFIXES = ("otel.", "tracehouse.")


class SpanTooLarge(ValueError):
    """A span that cannot be made to fit one Kafka message; `reason` says why, for `partial_success`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpanLimits:
    """The limits one span is held to; `from_env()` reads the `TRACEHOUSE_*_COUNT_LIMIT` variables."""

    attributes: int = 1024  # Span.attributes entries (after the receiver's mapping)
    events: int = 1024
    event_attributes: int = 128
    links: int = 128  # OTLP links, kept as JSON in `otel.links`
    max_span_bytes: int = MAX_MESSAGE_BYTES - ENVELOPE_BYTES  # one span, msgpack-encoded

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpanLimits:
        """Limits from the environment; raises ValueError for a value that is not a positive integer."""
        values: dict[str, int] = {}
        for name, setting in (
            ("attributes", settings.SPAN_ATTRIBUTE_COUNT_LIMIT),
            ("events", settings.SPAN_EVENT_COUNT_LIMIT),
            ("event_attributes", settings.EVENT_ATTRIBUTE_COUNT_LIMIT),
            ("links", settings.SPAN_LINK_COUNT_LIMIT),
        ):
            if settings.is_set(setting, env):
                values[name] = settings.get(setting, env)  # type: ignore[assignment]
        return cls(**values)


@cache
def default_span_limits() -> SpanLimits:
    """The process's limits, read from the environment once. An invalid setting is logged and the
    defaults are used: this runs on the first request or span, where raising would fail every one."""
    try:
        return SpanLimits.from_env()
    except ValueError as exc:
        log.error("%s; using the default span limits", exc)
        return SpanLimits()


# ---- counts -------------------------------------------------------------------------------------


def kept_attributes(attributes: dict[str, str], limit: int) -> tuple[dict[str, str], int]:
    """The first `limit` attributes, then up to `_RESERVED` of tracehouse's own, then the marker; and how
    many were dropped."""
    kept: dict[str, str] = {}
    reserved = 0
    for key, value in attributes.items():
        if len(kept) < limit:
            kept[key] = value
        elif reserved < _RESERVED and (key == "error.type" or key.startswith(_RESERVED_PREFIXES)):
            kept[key] = value
            reserved += 1
    dropped = len(attributes) - len(kept)
    kept[DROPPED_ATTRIBUTES] = str(dropped + _count(kept.get(DROPPED_ATTRIBUTES)))
    return kept, dropped


def _count(marker: str | None) -> int:
    """A marker's count from an earlier trim (the SDK's, then a relay's), so counts add up."""
    return int(marker) if marker is not None and marker.isascii() and marker.isdigit() else 0


def _limited_event(event: Event, limit: int) -> Event:
    if len(event.attributes) <= limit:
        return event
    return Event(name=event.name, time_ns=event.time_ns, attributes=kept_attributes(event.attributes, limit)[0])


def kept_events(events: list[T], limit: int) -> tuple[list[T], int]:
    """The first and the last halves of `events` when there are more than `limit`, and how many were
    dropped from the middle. Generic, so the receiver applies it before mapping 100,000 events."""
    if len(events) <= limit:
        return events, 0
    tail = limit // 2
    head = limit - tail
    return events[:head] + (events[-tail:] if tail else []), len(events) - limit


def dropped_events_marker(attributes: dict[str, str], dropped: int) -> dict[str, str]:
    """`attributes` (copied, never changed) with `dropped` added to the span's dropped-events count."""
    return {**attributes, DROPPED_EVENTS: str(dropped + _count(attributes.get(DROPPED_EVENTS)))}


def limit_counts(span: Span, limits: SpanLimits) -> tuple[Span, str]:
    """Apply the count limits; returns the span (changed in place: callers own it) and what was dropped,
    in words ("" when nothing was). Dicts and lists are replaced, never changed, and the resource is
    left alone: the tracer and the receiver share those between spans."""
    notes = []
    if len(span.attributes) > limits.attributes:
        span.attributes, dropped = kept_attributes(span.attributes, limits.attributes)
        notes.append(f"{dropped:,} attributes dropped (limit {limits.attributes})")
    events = span.events
    if events:
        events, dropped = kept_events(events, limits.events)
        if dropped:
            notes.append(f"{dropped:,} events dropped (limit {limits.events})")
            span.attributes = dropped_events_marker(span.attributes, dropped)
        limit = limits.event_attributes
        if any(len(e.attributes) > limit for e in events):
            events = [_limited_event(e, limit) for e in events]
            notes.append(f"event attributes dropped (limit {limit} per event)")
        span.events = events
    return span, ", ".join(notes)


# ---- size ---------------------------------------------------------------------------------------

# How much bigger than its source a mapped span can be, encoded: the worst cases are texts of control
# characters inside arrays (1 byte in protobuf, `\u0000` as JSON text: ~6x) and doubles inside arrays
# (9 bytes, up to 25 as text); everything else is at most ~2.5x (tests/integration/test_span_limits.py checks it).
EXPANSION = 8
_PER_EVENT = 128  # an empty 2-byte OTLP event becomes a named, timed Event with its markers
_PER_ATTRIBUTE = 48  # prefixes the mapping adds to a key (`otel.scope.attributes.`), headers
_FIXED = 16 * 1024  # the span's own fields, ids, times, token counts, markers


def bounded_by_source(source_bytes: int, limits: SpanLimits, max_text_bytes: int) -> bool:
    """True when no span mapped from an OTLP body of `source_bytes` (decompressed) can exceed
    `limits.max_span_bytes` once its counts are limited: then the receiver need not measure any span of
    that body. A span and its resource are part of the body, and every mapped text is either derived
    from its own bytes (at most `EXPANSION` times bigger) or a bounded constant (one links text of at
    most `max_text_bytes`, a few markers per event and attribute)."""
    constant = max_text_bytes + _PER_EVENT * limits.events + _PER_ATTRIBUTE * limits.attributes + _FIXED
    return EXPANSION * source_bytes + constant <= limits.max_span_bytes


def fit_span(span: Span, limits: SpanLimits, measure: bool = True) -> tuple[Span, str]:
    """`fit_span_encoded` without the bytes."""
    fitted, note, _ = fit_span_encoded(span, limits, measure)
    return fitted, note


def fit_span_encoded(span: Span, limits: SpanLimits, measure: bool = True) -> tuple[Span, str, bytes | None]:
    """The span within every limit, and a note saying what was trimmed ("" when nothing was); raises
    SpanTooLarge when even a trimmed span cannot fit one message. The receiver calls this on every
    mapped span before answering, so a span it accepts is a span the sender can always send.

    `measure=False` skips the size check, for a caller that knows the span fits (`bounded_by_source`);
    otherwise the span is encoded once to measure it: msgspec's encoder (about 1 µs for a 2 KB span)
    is cheaper than any walk over the span in Python that could bound its size. The third value is that
    encoding (msgpack, as `schema.encode_span` makes it) of the span returned, or None when not measured:
    a sender may use it instead of encoding the span again, as long as it does not change the span."""
    note = ""
    if len(span.attributes) > limits.attributes or span.events:
        span, note = limit_counts(span, limits)
    if not measure:
        return span, note, None
    fitted = shrink_to_fit(span, limits.max_span_bytes)
    if fitted is None:
        raise SpanTooLarge(
            f"span {span.span_id} of trace {span.trace_id} cannot fit one {MAX_MESSAGE_BYTES}-byte message "
            f"even with its texts cut ({len(span.attributes)} attributes, {len(span.events)} events, "
            f"{len(span.documents)} documents, {_message_count(span)} messages, {len(span.resource)} "
            "resource attributes)"
        )
    smaller, encoded = fitted
    if smaller is not span and TRUNCATED_FROM in smaller.attributes:
        cut = f"texts cut to fit one message (was {smaller.attributes[TRUNCATED_FROM]} bytes)"
        note = f"{note}, {cut}" if note else cut
    return smaller, note, encoded


def _message_count(span: Span) -> int:
    llm = span.llm
    return 0 if llm is None else len(llm.input_messages) + len(llm.output_messages)
