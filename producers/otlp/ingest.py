"""One request's CPU work, start to finish: decompress, decode, map; no I/O, no event loop.

Kept apart from the HTTP handler so the handler can run it inline for small bodies or on a worker
thread for large ones (see `ReceiverOptions.offload_bytes`), and so tests and the benchmark can drive
exactly what a request costs. Spans are accepted or rejected one by one: a bad span is counted with its
reason for `partial_success`, and the good spans of the same request go through.

Every mapped span then passes `fit_span` (the span limits): a span with too many parts is trimmed with
a marker, or refused when it cannot fit one Kafka message at all. Both are decided here, before the
answer, so a span the receiver accepts is one its sender can always send, and a sender learns of a
trim from the answer's `partial_success` (a warning: `rejected_spans` 0 and an `error_message`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracehouse.core.schema import Span

from ..payload import DEFAULT_MAX_PAYLOAD_BYTES
from ..span_limits import SpanLimits, SpanTooLarge, bounded_by_source, default_span_limits, fit_span_encoded
from .body import decompress
from .mapping import SpanRejected, map_span, origin_for
from .records import Origin, OtlpSpan, ScopeBatch
from .responses import JSON
from .wire_json import decode_json
from .wire_protobuf import decode_protobuf

__all__ = ["IngestResult", "decode_request", "ingest"]

_MAX_REASONS = 5  # distinct reasons quoted in `error_message`; the count covers all


@dataclass
class IngestResult:
    """The spans to forward, how many were rejected and why (the `partial_success` fields), and how many
    were accepted trimmed, and how (said in the same `error_message`)."""

    spans: list[Span] = field(default_factory=list)
    # Each span's msgpack bytes, in the order of `spans`, when the span limits measured them (large
    # bodies); empty otherwise. The sender puts them into Kafka messages instead of encoding again.
    encoded: list[bytes] = field(default_factory=list)
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> how many spans
    trimmed: int = 0
    trims: dict[str, int] = field(default_factory=dict)  # what was trimmed -> how many spans

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if reason in self.reasons or len(self.reasons) < _MAX_REASONS:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def trim(self, note: str) -> None:
        self.trimmed += 1
        if note in self.trims or len(self.trims) < _MAX_REASONS:
            self.trims[note] = self.trims.get(note, 0) + 1

    @property
    def error_message(self) -> str:
        parts = []
        if self.rejected:
            parts.append(f"{self.rejected} span(s) rejected: " + _summary(self.reasons, self.rejected))
        if self.trimmed:
            parts.append(f"{self.trimmed} span(s) accepted trimmed: " + _summary(self.trims, self.trimmed))
        return "; ".join(parts)


def _summary(reasons: dict[str, int], total: int) -> str:
    parts = [f"{reason} ({count}x)" if count > 1 else reason for reason, count in reasons.items()]
    shown = sum(reasons.values())
    if shown < total:
        parts.append(f"and {total - shown} more")
    return "; ".join(parts)


def decode_request(body: bytes, media_type: str) -> list[ScopeBatch]:
    """Decode a (decompressed) body of the given media type; raises BadRequest."""
    return decode_json(body) if media_type == JSON else decode_protobuf(body)


def map_batches(
    batches: list[ScopeBatch],
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
    limits: SpanLimits | None = None,
    source_bytes: int | None = None,
) -> IngestResult:
    """Map decoded spans onto tracehouse spans within the span limits; resource attributes are stringified
    once per resource. `source_bytes` (the decompressed body's size) lets small bodies skip measuring
    each span: none of their spans can be too big."""
    if limits is None:
        limits = default_span_limits()
    measure = source_bytes is None or not bounded_by_source(source_bytes, limits, limit)
    result = IngestResult()
    spans, encoded = result.spans, result.encoded
    origins: dict[tuple[int, str, str], Origin] = {}
    by_resource: dict[int, Origin] = {}  # resource dict id -> an origin holding it stringified
    for batch in batches:
        key = (id(batch.resource), batch.scope_name, batch.scope_version)
        origin = origins.get(key)
        if origin is None or batch.scope_attributes:
            shared = by_resource.get(key[0])
            if shared is None:
                origin = origin_for(
                    batch.resource, batch.scope_name, batch.scope_version, limit, batch.scope_attributes, limits
                )
                by_resource[key[0]] = origin
            else:  # same resource, another scope: share its stringified attributes
                scope = origin_for({}, batch.scope_name, batch.scope_version, limit, batch.scope_attributes, limits)
                origin = Origin(
                    shared.service, shared.resource, scope.scope_name, scope.scope_version, scope.scope_attributes
                )
            origins[key] = origin
        for reason in batch.rejected:
            result.reject(reason)
        for otlp_span in batch.spans:
            try:
                span, note, data = fit_span_encoded(map_span(otlp_span, origin, limit, limits), limits, measure)
            except (SpanRejected, SpanTooLarge) as exc:
                result.reject(exc.reason)
                continue
            except (ValueError, TypeError, RecursionError) as exc:  # a mapping bug must cost one span only
                result.reject(f"span {otlp_span.span_id[:32]} could not be mapped: {str(exc)[:200]}")
                continue
            spans.append(span)
            if data is not None:
                encoded.append(data)
            if len(otlp_span.events) > limits.events or len(otlp_span.links) > limits.links:
                note = ", ".join(filter(None, (_mapping_note(otlp_span, limits), note)))
            if note:
                result.trim(f"span {span.span_id} of trace {span.trace_id}: {note}")
    return result


def _mapping_note(span: OtlpSpan, limits: SpanLimits) -> str:
    """What `map_span` dropped before mapping (events, links), in the words of `fit_span`'s notes."""
    notes = []
    if len(span.events) > limits.events:
        notes.append(f"{len(span.events) - limits.events:,} events dropped (limit {limits.events})")
    if len(span.links) > limits.links:
        notes.append(f"{len(span.links) - limits.links:,} links dropped (limit {limits.links})")
    return ", ".join(notes)


def ingest(
    body: bytes,
    media_type: str,
    content_encoding: str = "",
    max_decompressed_bytes: int = 64 * 1024 * 1024,
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
    limits: SpanLimits | None = None,
) -> IngestResult:
    """Decompress, decode and map one request body; raises the request errors of `.errors`.
    `limits` defaults to the process's span limits (`TRACEHOUSE_SPAN_*_LIMIT`)."""
    data = decompress(body, content_encoding, max_decompressed_bytes)
    return map_batches(decode_request(data, media_type), limit, limits, len(data))
