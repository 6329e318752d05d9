"""The neutral form of an OTLP span, between the two wire decoders and the mapping.

Protobuf and OTLP/JSON carry the same data with different spellings (bytes vs hex ids, `string_value`
vs `stringValue`, int64 as numbers vs strings). Each decoder turns its encoding into these records, with
attribute values as plain Python values (str, int, float, bool, bytes, list, dict, None), so the mapping
onto tracehouse's `Span` is written, tested and fuzzed once, independent of the encoding.

The records are msgspec Structs (cheap to build positionally, comparable in tests) without GC tracking:
they never form cycles and live only for the length of one request.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

# OpenTelemetry's SpanKind enum, by number (proto `Span.SpanKind`).
OTEL_SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
# OpenTelemetry's status codes, by number (proto `Status.StatusCode`), in tracehouse's words.
OTEL_STATUS = ("UNSET", "OK", "ERROR")


class OtlpEvent(Struct, gc=False):
    """A span event as sent: `time_ns` 0 means the sender left it out."""

    name: str
    time_ns: int
    attributes: dict[str, Any]
    dropped_attributes_count: int = 0  # what the sender's SDK dropped (OTLP's own field)


class OtlpLink(Struct, gc=False):
    """A link to another span (ids as lowercase hex, possibly invalid: links are kept, not checked)."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any]
    trace_state: str = ""
    dropped_attributes_count: int = 0


class OtlpSpan(Struct, gc=False):
    """One span as decoded, not yet validated: ids are lowercase hex of whatever length was sent."""

    trace_id: str
    span_id: str
    name: str
    start_time_ns: int
    end_time_ns: int
    attributes: dict[str, Any]
    parent_span_id: str = ""
    kind: int = 0  # OTel SpanKind number; see OTEL_SPAN_KINDS
    status_code: int = 0  # OTel StatusCode number; see OTEL_STATUS
    status_message: str = ""
    events: list[OtlpEvent] = []
    links: list[OtlpLink] = []
    trace_state: str = ""
    dropped_attributes_count: int = 0
    dropped_events_count: int = 0
    dropped_links_count: int = 0


class Origin(Struct, gc=False):
    """What every span of one ResourceSpans/ScopeSpans pair shares, prepared once for all of them.

    `resource` is the resource's attributes already stringified; the same dict object is handed to
    every span of the resource (spans never mutate it), so a request of 500 spans builds it once.
    """

    service: str
    resource: dict[str, str]
    scope_name: str = ""
    scope_version: str = ""
    scope_attributes: dict[str, str] = {}  # rare; stored as `otel.scope.attributes.<key>`


class ScopeBatch(Struct, gc=False):
    """The spans of one (resource, scope) pair as a decoder found them.

    `rejected` holds the reasons for spans the decoder could not even read (a JSON span that is not an
    object, a time that is not a number); they count in the response's `partial_success`.
    """

    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    spans: list[OtlpSpan]
    rejected: list[str] = []
    scope_attributes: dict[str, Any] = {}
