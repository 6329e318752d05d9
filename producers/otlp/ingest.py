"""One request's CPU work, start to finish: decompress, decode, map; no I/O, no event loop.

Kept apart from the HTTP handler so the handler can run it inline for small bodies or on a worker
thread for large ones (see `ReceiverOptions.offload_bytes`), and so tests and the benchmark can drive
exactly what a request costs. Spans are accepted or rejected one by one: a bad span is counted with its
reason for `partial_success`, and the good spans of the same request go through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracehouse.core.schema import Span

from ..payload import DEFAULT_MAX_PAYLOAD_BYTES
from .body import decompress
from .mapping import SpanRejected, map_span, origin_for
from .records import Origin, ScopeBatch
from .responses import JSON
from .wire_json import decode_json
from .wire_protobuf import decode_protobuf

__all__ = ["IngestResult", "decode_request", "ingest"]

_MAX_REASONS = 5  # distinct reasons quoted in `error_message`; the count covers all


@dataclass
class IngestResult:
    """The spans to forward, and how many were rejected and why (the `partial_success` fields)."""

    spans: list[Span] = field(default_factory=list)
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> how many spans

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if reason in self.reasons or len(self.reasons) < _MAX_REASONS:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        parts = [f"{reason} ({count}x)" if count > 1 else reason for reason, count in self.reasons.items()]
        shown = sum(self.reasons.values())
        if shown < self.rejected:
            parts.append(f"and {self.rejected - shown} more")
        return f"{self.rejected} span(s) rejected: " + "; ".join(parts)


def decode_request(body: bytes, media_type: str) -> list[ScopeBatch]:
    """Decode a (decompressed) body of the given media type; raises BadRequest."""
    return decode_json(body) if media_type == JSON else decode_protobuf(body)


def map_batches(batches: list[ScopeBatch], limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> IngestResult:
    """Map decoded spans onto tracehouse spans; resource attributes are stringified once per resource."""
    result = IngestResult()
    spans = result.spans
    origins: dict[tuple[int, str, str], Origin] = {}
    by_resource: dict[int, Origin] = {}  # resource dict id -> an origin holding it stringified
    for batch in batches:
        key = (id(batch.resource), batch.scope_name, batch.scope_version)
        origin = origins.get(key)
        if origin is None or batch.scope_attributes:
            shared = by_resource.get(key[0])
            if shared is None:
                origin = origin_for(
                    batch.resource, batch.scope_name, batch.scope_version, limit, batch.scope_attributes
                )
                by_resource[key[0]] = origin
            else:  # same resource, another scope: share its stringified attributes
                scope = origin_for({}, batch.scope_name, batch.scope_version, limit, batch.scope_attributes)
                origin = Origin(
                    shared.service, shared.resource, scope.scope_name, scope.scope_version, scope.scope_attributes
                )
            origins[key] = origin
        for reason in batch.rejected:
            result.reject(reason)
        for otlp_span in batch.spans:
            try:
                spans.append(map_span(otlp_span, origin, limit))
            except SpanRejected as exc:
                result.reject(exc.reason)
            except (ValueError, TypeError, RecursionError) as exc:  # a mapping bug must cost one span only
                result.reject(f"span {otlp_span.span_id[:32]} could not be mapped: {exc}")
    return result


def ingest(
    body: bytes,
    media_type: str,
    content_encoding: str = "",
    max_decompressed_bytes: int = 64 * 1024 * 1024,
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> IngestResult:
    """Decompress, decode and map one request body; raises the request errors of `.errors`."""
    data = decompress(body, content_encoding, max_decompressed_bytes)
    return map_batches(decode_request(data, media_type), limit)
