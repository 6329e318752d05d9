"""W3C Trace Context (`traceparent`) in and out, so one trace crosses process and service boundaries.

An incoming request carries `traceparent: 00-<trace id>-<parent span id>-<flags>`; spans opened with
`span(..., parent=headers_or_value)` continue that trace, and `current_traceparent()` /
`inject_traceparent(headers)` produce the header for outgoing calls. Any OpenTelemetry-instrumented
service speaks the same header, so mixed fleets keep one trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from .context import CURRENT_SPAN

HEADER = "traceparent"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class SpanContext:
    """A parent known only by its ids (from another process); carries no data of its own."""

    __slots__ = ("sampled", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, sampled: bool = True) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.sampled)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpanContext) and (self.trace_id, self.span_id, self.sampled) == (
            other.trace_id,
            other.span_id,
            other.sampled,
        )

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id))

    def __repr__(self) -> str:
        return f"SpanContext({self.traceparent!r})"


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """Parse one `traceparent` value; None when absent or invalid (an invalid header starts a new trace,
    as the W3C spec asks, instead of failing the request)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return SpanContext(trace_id, span_id, bool(int(flags, 16) & 1))


def _header_value(headers: Any) -> Any:
    if isinstance(headers, (str, bytes)):
        return headers
    if isinstance(headers, Mapping):
        for key in (HEADER, "Traceparent", "TRACEPARENT", HEADER.encode()):
            if key in headers:
                return headers[key]
        items: Iterable[Any] = headers.items()
    else:
        items = headers  # ASGI-style [(b"traceparent", b"00-..."), ...] or WSGI-ish pairs
    for key, value in items:
        name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if name.lower() in (HEADER, "http_traceparent"):
            return value
    return None


def extract_traceparent(headers: Any) -> SpanContext | None:
    """The parent carried by `headers`: a mapping (any key case; WSGI's `HTTP_TRACEPARENT` works), a list of
    (name, value) pairs as ASGI gives them (bytes or str), or the header value itself. None if absent or
    invalid."""
    if headers is None:
        return None
    try:
        return parse_traceparent(_header_value(headers))
    except Exception:
        return None


def current_traceparent() -> str | None:
    """The `traceparent` value naming the current span as parent, or None outside any span."""
    live = CURRENT_SPAN.get()
    return None if live is None else format_traceparent(live.trace_id, live.span_id)


def inject_traceparent(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add `traceparent` for the current span to outgoing `headers` (unchanged outside any span)."""
    value = current_traceparent()
    if value is not None:
        headers[HEADER] = value
    return headers
