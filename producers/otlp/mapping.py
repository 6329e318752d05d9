"""OpenTelemetry spans onto tracehouse's `Span`: OpenInference and GenAI vocabularies, as pure functions.

Two attribute vocabularies describe LLM work over OTLP, and instrumentations mix them:

- OpenInference (Arize; Phoenix's instrumentors): `openinference.span.kind`, `input.value`,
  `llm.model_name`, flattened lists such as `llm.input_messages.0.message.role` and
  `retrieval.documents.3.document.score`, `llm.token_count.*`, `llm.prompt_template.*`.
- OpenTelemetry GenAI semantic conventions (and OpenLLMetry's older dialect of them):
  `gen_ai.operation.name`, `gen_ai.request.*`, `gen_ai.usage.*`, `gen_ai.input.messages` as JSON with
  typed parts, or `gen_ai.prompt.0.role` / `gen_ai.completion.0.content` in OpenLLMetry.

`map_span` reads both into typed fields (kind, model, tokens, parameters, messages, documents, template,
session, scores). The rule that keeps it honest: every attribute is either *consumed* into a typed field
or kept in `Span.attributes` as text (lists and maps as JSON). Nothing is dropped silently; the few
deliberate exceptions leave a visible marker (embedding vectors are replaced by their length). Attributes
that classify rather than carry data stay even when used (`gen_ai.operation.name`, `llm.request.type`,
`traceloop.span.kind`, `error.type`), and when two attributes compete for one field (a request and a
response model), the loser stays in `attributes`.

A span that cannot be stored (bad ids, missing or inverted times) raises `SpanRejected` with a reason the
receiver reports in `partial_success`; anything else degrades to a smaller, still-valid span, because
one odd attribute must not cost a user the span. Every text is cut at `limit` bytes with the SDK's
visible truncation marker, and every bounded field is clamped to what the schema and ClickHouse accept,
so a mapped span always passes the pipeline's validation.

Where each part lives: payload.py coerces values (shared with the SDK); vocabulary.py holds every key
the mapping reads; attributes.py sorts a span's attributes in one pass; genai.py, openinference.py and
openllmetry.py read each vocabulary's structured attributes; llm_call.py and fields.py read the typed
fields across them; this module checks the span and puts the `Span` together.
"""

from __future__ import annotations

import re
from typing import Any

from tracehouse.core.schema import Event, Score, Span

from ..payload import DEFAULT_MAX_PAYLOAD_BYTES, attr_text, finite, fit, short, to_json_text
from ..span_limits import (
    DROPPED_LINKS,
    SpanLimits,
    default_span_limits,
    dropped_events_marker,
    kept_attributes,
    kept_events,
)
from .attributes import ROUTED_KEY_CHARS as _ROUTED_KEY_CHARS
from .attributes import ROUTES as _ROUTES
from .attributes import ROUTES_MAX as _ROUTES_MAX
from .attributes import SpanAttributes, typed
from .fields import (
    drop_embedding_vectors,
    read_documents,
    read_error_type,
    read_grouping,
    read_kind,
    read_payloads,
    read_prompt_template,
    read_scores,
    read_usage,
)
from .genai import score_genai
from .llm_call import read_llm
from .records import OTEL_SPAN_KINDS, OTEL_STATUS, Origin, OtlpEvent, OtlpLink, OtlpSpan
from .vocabulary import (
    ANNOTATIONS,
    COST,
    COST_BIT,
    DOCS_BIT,
    DOCUMENTS,
    EMBEDDINGS,
    EVALUATIONS,
    GENAI_OUTPUT,
    IO_BIT,
    LLM_BIT,
    LLM_GROUPS,
    MISC_BIT,
    RERANKED,
    SCORES_BIT,
    TEMPLATE_BIT,
    USAGE_BIT,
)
from .vocabulary import KNOWN as _KNOWN
from .vocabulary import indexed_key as _indexed_key

# `attribute_text` is this module's public name for the one value coercion (payload.attr_text); the
# routing table and cache are re-exported under their old names for the tests that look into them.
attribute_text = attr_text

__all__ = [
    "_KNOWN",
    "_ROUTED_KEY_CHARS",
    "_ROUTES",
    "_ROUTES_MAX",
    "SpanRejected",
    "_indexed_key",
    "attribute_text",
    "map_span",
    "origin_for",
]

MIN_TIME_NS = 946_684_800_000_000_000  # the schema's TimeNs lower bound (2000-01-01)
MAX_TIME_NS = 9_223_372_036_854_775_807

_is_trace_id = re.compile(r"[0-9a-f]{32}").fullmatch
_is_span_id = re.compile(r"[0-9a-f]{16}").fullmatch
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class SpanRejected(ValueError):
    """A span that cannot be stored; `reason` says why, in words a sender can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _events(events: list[OtlpEvent], start_ns: int, limit: int) -> list[Event]:
    out = []
    for event in events:
        time_ns = event.time_ns
        if not MIN_TIME_NS <= time_ns <= MAX_TIME_NS:
            time_ns = start_ns  # a missing or impossible time: the span's start keeps it in the row
        attributes = {k: attr_text(v, limit) for k, v in event.attributes.items()}
        if event.dropped_attributes_count:
            attributes["otel.dropped_attributes_count"] = str(event.dropped_attributes_count)
        out.append(Event(name=short(event.name) or "event", time_ns=time_ns, attributes=attributes))
    return out


def _link(link: OtlpLink, limit: int) -> dict[str, Any]:
    out = {"trace_id": link.trace_id, "span_id": link.span_id, "trace_state": link.trace_state,
           "attributes": {k: attr_text(v, limit) for k, v in link.attributes.items()}}  # fmt: skip
    if link.dropped_attributes_count:
        out["dropped_attributes_count"] = link.dropped_attributes_count
    return out


def _links(links: list[OtlpLink], limit: int) -> str:
    return fit(to_json_text([_link(link, limit) for link in links]), limit)[0]


def _check_ids(span: OtlpSpan) -> str:
    """Validate the ids; returns the parent span id to store ("" for a root).

    The usual span (right lengths, lowercase hex, nothing zero) passes with one C round trip over the
    three ids joined: `bytes.fromhex` refuses what is not hex, and `hex()` gives back the same text only
    when it had no capitals or spaces (~0.3 µs, where a regex over them cost ~0.7 and three ~1.2).
    Anything else goes to `_checked_ids` for its reason."""
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) == 32 and len(span_id) == 16 and (len(parent) == 16 or not parent):
        ids = trace_id + span_id + parent
        try:
            lowercase_hex = bytes.fromhex(ids).hex() == ids
        except ValueError:
            lowercase_hex = False
        if lowercase_hex and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN and parent != span_id:
            return "" if parent == _ZERO_SPAN else parent
    return _checked_ids(trace_id, span_id, parent)


def _checked_ids(trace_id: str, span_id: str, parent: str) -> str:
    """`_check_ids` the long way, raising SpanRejected with what is wrong."""
    if not _is_trace_id(trace_id) or trace_id == _ZERO_TRACE:
        raise SpanRejected(f"invalid trace id {trace_id[:64]!r}: need 16 bytes, not all zero")
    if not _is_span_id(span_id) or span_id == _ZERO_SPAN:
        raise SpanRejected(f"invalid span id {span_id[:64]!r} in trace {trace_id}: need 8 bytes, not all zero")
    if not parent or parent == _ZERO_SPAN:
        return ""
    if not _is_span_id(parent):
        raise SpanRejected(f"invalid parent span id {parent[:64]!r} of span {span_id}: need 8 bytes")
    if parent == span_id:
        raise SpanRejected(f"span {span_id} names itself as its parent")
    return parent


def _check_times(span: OtlpSpan) -> None:
    start, end = span.start_time_ns, span.end_time_ns
    if not MIN_TIME_NS <= start <= MAX_TIME_NS:
        raise SpanRejected(f"span {span.span_id}: start_time_unix_nano {start} is missing or outside 2000..2262")
    if not MIN_TIME_NS <= end <= MAX_TIME_NS:
        raise SpanRejected(f"span {span.span_id}: end_time_unix_nano {end} is missing or outside 2000..2262")
    if end < start:
        raise SpanRejected(f"span {span.span_id}: end_time_unix_nano {end} is before its start {start}")


def origin_for(
    resource_attributes: dict[str, Any],
    scope_name: str = "",
    scope_version: str = "",
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
    scope_attributes: dict[str, Any] | None = None,
    limits: SpanLimits | None = None,
) -> Origin:
    """What the spans of one resource and scope share: the service and the stringified resource, each
    held to the attribute count limit (once here, not once per span)."""
    most = (limits or default_span_limits()).attributes
    resource = {str(k): attr_text(v, limit) for k, v in resource_attributes.items()}
    service = resource.get("service.name") or "unknown_service"
    if len(resource) > most:
        resource = kept_attributes(resource, most)[0]
    scope = {f"otel.scope.attributes.{k}": attr_text(v, limit) for k, v in (scope_attributes or {}).items()}
    if len(scope) > most:
        scope = dict(list(scope.items())[:most])
    return Origin(
        service=short(service) or "unknown_service",
        resource=resource,
        scope_name=short(scope_name),
        scope_version=short(scope_version),
        scope_attributes=scope,
    )


def map_span(
    span: OtlpSpan, origin: Origin, limit: int = DEFAULT_MAX_PAYLOAD_BYTES, limits: SpanLimits | None = None
) -> Span:
    """Map one decoded OTLP span onto tracehouse's `Span`; raises SpanRejected when it cannot be stored.

    Of the span limits, the link and event counts apply here (links become one JSON text, and mapping
    100,000 events to drop most of them would be wasted); the others are applied to the mapped span by
    `span_limits.fit_span`, which the receiver calls next."""
    if limits is None:
        limits = default_span_limits()
    parent = _check_ids(span)
    _check_times(span)

    attrs = SpanAttributes(span.attributes, limit)
    flags, groups = attrs.flags, attrs.groups
    kind = read_kind(attrs)
    span_input, span_output = read_payloads(attrs, kind) if flags & IO_BIT else ("", "")
    if EMBEDDINGS in groups:
        drop_embedding_vectors(attrs)
    llm = None
    if flags & LLM_BIT or kind == "LLM" or (groups and any(g in groups for g in LLM_GROUPS)):
        llm, messages_input = read_llm(attrs, kind, span_input)
        if messages_input and not span_input:
            span_input = messages_input
        if not span_output and llm is not None and llm.output_messages:
            raw = attrs.peek(GENAI_OUTPUT)
            if raw is not None:
                attrs.take(GENAI_OUTPUT)
                span_output = attr_text(raw, limit)
    usage = read_usage(attrs) if flags & USAGE_BIT else None
    cost = typed(attrs, COST, finite) if flags & COST_BIT else None
    prompt = read_prompt_template(attrs) if flags & TEMPLATE_BIT else None
    documents = read_documents(attrs) if flags & DOCS_BIT or DOCUMENTS in groups or RERANKED in groups else []
    scores: list[Score] = (
        read_scores(attrs) if flags & SCORES_BIT or EVALUATIONS in groups or ANNOTATIONS in groups else []
    )
    session = user = explicit_error = None
    tags: list[str] = []
    if flags & MISC_BIT:
        session, user, tags, explicit_error = read_grouping(attrs)

    status_code = span.status_code
    status = OTEL_STATUS[status_code] if 0 <= status_code < len(OTEL_STATUS) else "UNSET"
    status_message = attr_text(span.status_message, limit) if span.status_message else ""
    events: list[Event] = []
    dropped_events = 0
    if span.events:
        otlp_events, dropped_events = kept_events(span.events, limits.events)
        events = _events(otlp_events, span.start_time_ns, limit)
        for event in otlp_events:
            if event.name == "gen_ai.evaluation.result":
                score = score_genai(event.attributes, limit)
                if score is not None:
                    scores.append(score)

    attributes = attrs.finish()
    if explicit_error is not None or events or status == "ERROR":
        error_type = read_error_type(explicit_error, events, status, status_message)
        if error_type is not None:
            attributes["error.type"] = error_type
    if origin.scope_name:
        attributes["otel.scope.name"] = origin.scope_name
        if origin.scope_version:
            attributes["otel.scope.version"] = origin.scope_version
    if origin.scope_attributes:
        attributes.update(origin.scope_attributes)
    if span.kind > 1:
        attributes["otel.span_kind"] = (
            OTEL_SPAN_KINDS[span.kind] if span.kind < len(OTEL_SPAN_KINDS) else str(span.kind)
        )
    if span.links:
        links = span.links
        most = limits.links
        if len(links) > most:
            attributes[DROPPED_LINKS] = str(len(links) - most)
            links = links[:most]
        attributes["otel.links"] = _links(links, limit)
    if span.trace_state:
        attributes["otel.trace_state"] = short(span.trace_state)
    if span.dropped_attributes_count:
        attributes["otel.dropped_attributes_count"] = str(span.dropped_attributes_count)
    if span.dropped_events_count:
        attributes["otel.dropped_events_count"] = str(span.dropped_events_count)
    if span.dropped_links_count:
        attributes["otel.dropped_links_count"] = str(span.dropped_links_count)
    if dropped_events:
        attributes = dropped_events_marker(attributes, dropped_events)

    # Positional: msgspec builds a Struct from 25 keywords ~3x slower than from positions (3.5 µs
    # against 1.2); the order is `Span`'s field order, which only ever grows at the end.
    return Span(
        span.trace_id,
        span.span_id,
        short(span.name) or "unnamed",
        span.start_time_ns,
        span.end_time_ns,
        parent,
        kind,
        origin.service,
        status,
        status_message,
        span_input,
        span_output,
        attributes,
        origin.resource,
        events,
        llm,
        usage,
        cost,
        prompt,
        documents,
        scores,
        short(session) if session is not None else "",
        short(user) if user is not None else "",
        tags,
    )
