"""The tracer: opens spans, turns ended ones into wire `Span`s and hands them to a transport.

One global tracer serves the usual app (`configure(...)` once at start-up; `span`, `trace`,
`current_span` use it), and explicit `Tracer` objects serve tests and multi-tenant code. Until
`configure` is called, or with `TRACEHOUSE_DISABLED=1`, the global tracer is disabled: every call returns
a shared no-op span, so instrumented libraries cost nothing in apps that do not trace.

The transport is anything with `submit(span) -> bool`: the Kafka `SpanTransport` in production,
`InMemoryTransport` (or a list's collector) in tests. Nothing a tracer does may raise into the app or
block it: build, redaction and submit failures are counted in `stats()`, not propagated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Protocol

from tracehouse.core import settings as env
from tracehouse.core.config import Settings
from tracehouse.core.schema import SPAN_KINDS, Span

from .context import CURRENT_SPAN
from .ids import new_span_id, new_trace_id
from .live_span import NOOP_SPAN, LiveSpan, NoopSpan, normalize_kind
from .payload import DEFAULT_MAX_PAYLOAD_BYTES
from .propagation import SpanContext, extract_traceparent, parse_traceparent
from .span_limits import SpanLimits, default_span_limits, limit_counts

log = logging.getLogger("tracehouse.producers")

Redactor = Callable[[Span], "Span | None"]


class SpanSink(Protocol):
    """What a tracer needs from a transport; `flush`, `shutdown` and `stats` are used when present."""

    def submit(self, span: Span) -> bool: ...


def _sdk_version() -> str:
    try:
        return metadata.version("tracehouse")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class Tracer:
    """Opens spans for one service and ships them through one transport.

    `max_payload_bytes` caps each input/output/message/document text (a visible marker replaces the rest);
    `redact(span)` runs before submit and may return a changed span, or None to drop it (counted). It may
    assign fields or change `attributes` in place (not `resource`: the tracer shares it); empty list fields
    are one shared read-only list, so assign a new list (`span.tags = [...]`) rather than appending (see
    `convert.EMPTY_LIST`).
    `capture_io` is the default for `@trace`'s argument and return-value capture.
    `span_limits` bounds the attributes and events of one span (default: `TRACEHOUSE_SPAN_*_LIMIT`
    from the environment); what a span loses is counted on it (`tracehouse.dropped_*_count`).
    """

    def __init__(
        self,
        service: str = "unknown_service",
        transport: SpanSink | None = None,
        *,
        enabled: bool = True,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        redact: Redactor | None = None,
        resource: Mapping[str, str] | None = None,
        capture_io: bool = True,
        owns_transport: bool = False,
        span_limits: SpanLimits | None = None,
    ) -> None:
        if enabled and transport is None:
            raise ValueError("an enabled Tracer needs a transport (anything with submit(span))")
        self.service = service
        self.transport = transport
        self.enabled = enabled
        self.max_payload_bytes = max(int(max_payload_bytes), 64)
        self.redact = redact
        self.capture_io = capture_io
        self.owns_transport = owns_transport
        self.span_limits = span_limits or default_span_limits()
        self._max_attributes = self.span_limits.attributes
        self.resource: dict[str, str] = {
            "telemetry.sdk.name": "tracehouse",
            "telemetry.sdk.version": _sdk_version(),
        }
        self.resource.update({str(k): str(v) for k, v in (resource or {}).items()})
        self._submit = transport.submit if transport is not None else None
        self.ended = 0  # spans ended while enabled
        self.redacted = 0  # dropped by the redact hook
        self.rejected = 0  # submit() returned False (queue full)
        self.errors = 0  # build, redact or submit raised; the span is lost, the app is not

    # ---- opening spans ----------------------------------------------------------------------

    def start_span(
        self,
        name: str,
        kind: str = "CHAIN",
        *,
        parent: Any = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> LiveSpan | NoopSpan:
        """Open a span without making it current; call `.end()` (or use it as a context manager).

        `parent`: None for the current span (or a new trace), a LiveSpan, a SpanContext, a `traceparent`
        string, or incoming headers (see `extract_traceparent`). An invalid header starts a new trace.
        """
        if not self.enabled:
            return NOOP_SPAN
        if kind not in _FAST_KINDS:
            kind = normalize_kind(kind)
        if parent is None:
            parent = CURRENT_SPAN.get()
        elif not isinstance(parent, (LiveSpan, SpanContext)):
            parent = _resolve_parent(parent)
        if parent is None:
            live = LiveSpan(self, name, kind, new_trace_id(), new_span_id(), "", None)
        elif type(parent) is LiveSpan:
            live = LiveSpan(self, name, kind, parent.trace_id, new_span_id(), parent.span_id, parent)
        else:
            live = LiveSpan(self, name, kind, parent.trace_id, new_span_id(), parent.span_id, None)
        if attributes:
            live.set_attributes(attributes)
        return live

    # `with tracer.span(...) as s:` — the same call: a span becomes current when its `with` block is
    # entered and ends when the block is left (an alias, to spare every span one function call).
    span = start_span

    def trace(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """`@tracer.trace(kind=..., name=...)`: like the module-level `trace`, bound to this tracer."""
        from .decorators import trace

        return trace(fn, tracer=self, **options)

    # ---- shipping ---------------------------------------------------------------------------

    def _emit(self, live: LiveSpan, end_time_ns: int) -> None:
        self.ended += 1
        try:
            span = live._build(end_time_ns)
            if self.redact is not None:
                span = self.redact(span)
                if span is None:
                    self.redacted += 1
                    return
            if span.events or len(span.attributes) > self._max_attributes:
                span = limit_counts(span, self.span_limits)[0]
            if self._submit(span) is False:  # type: ignore[misc]
                self.rejected += 1
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 10_000 == 0:
                log.exception("tracehouse could not ship span %r (%d such errors so far)", live.name, self.errors)

    def stats(self) -> dict[str, int]:
        """Counters: the transport's (enqueued, sent, dropped, failed, ...) plus the tracer's own (ended,
        redacted, rejected, errors). Read them to know whether tracing keeps up."""
        out = {"enqueued": 0, "sent": 0, "dropped": 0, "failed": 0}
        transport_stats = getattr(self.transport, "stats", None)
        if callable(transport_stats):
            transport_stats = transport_stats()
        if transport_stats is not None:
            snapshot = getattr(transport_stats, "snapshot", None)
            out.update(snapshot() if callable(snapshot) else dict(transport_stats))
        out.update(ended=self.ended, redacted=self.redacted, rejected=self.rejected, errors=self.errors)
        return out

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until the transport has shipped what was submitted; True if it did within `timeout`."""
        flush = getattr(self.transport, "flush", None)
        return bool(flush(timeout)) if callable(flush) else True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Flush and stop the transport (if it has `shutdown`); the tracer is disabled afterwards."""
        self.enabled = False
        stop = getattr(self.transport, "shutdown", None)
        if callable(stop):
            stop(timeout)


_FAST_KINDS = frozenset(SPAN_KINDS)


def _resolve_parent(parent: Any) -> LiveSpan | SpanContext | None:
    if isinstance(parent, NoopSpan):
        return CURRENT_SPAN.get()
    if isinstance(parent, (str, bytes)):
        return parse_traceparent(parent)
    return extract_traceparent(parent)


# ---- the global tracer ----------------------------------------------------------------------

_tracer: Tracer = Tracer(enabled=False)


def get_tracer() -> Tracer:
    """The global tracer (disabled until `configure` is called)."""
    return _tracer


def set_tracer(tracer: Tracer) -> Tracer:
    """Replace the global tracer; returns the previous one (its transport is left running)."""
    global _tracer
    previous, _tracer = _tracer, tracer
    return previous


def configure(
    service: str | None = None,
    bootstrap: str | None = None,
    *,
    transport: SpanSink | None = None,
    disabled: bool | None = None,
    max_payload_bytes: int | None = None,
    redact: Redactor | None = None,
    resource: Mapping[str, str] | None = None,
    capture_io: bool | None = None,
    transport_options: Mapping[str, Any] | None = None,
    set_global: bool = True,
) -> Tracer:
    """Set up tracing for this process and return the tracer (also made the global one).

    Defaults come from the environment: `TRACEHOUSE_SERVICE` (or `OTEL_SERVICE_NAME`),
    `TRACEHOUSE_KAFKA_BOOTSTRAP`, `TRACEHOUSE_DISABLED=1` (no-op mode), `TRACEHOUSE_MAX_PAYLOAD_BYTES`
    (default 32 KiB), `TRACEHOUSE_CAPTURE_IO=0` (don't record `@trace` arguments and return values).
    `transport=` replaces the Kafka transport with any object having `submit(span)` (tests, custom
    sinks); `transport_options` go to `SpanTransport` (e.g. `max_queue`). Calling `configure` again
    replaces the global tracer and shuts down the transport the previous one created.
    """
    settings = Settings.from_env(service=service, kafka_bootstrap=bootstrap)
    if disabled is None:
        disabled = bool(env.get(env.DISABLED))
    if capture_io is None:
        capture_io = bool(env.get(env.CAPTURE_IO))
    if max_payload_bytes is None:
        max_payload_bytes = env.get(env.MAX_PAYLOAD_BYTES) or DEFAULT_MAX_PAYLOAD_BYTES
    owns = False
    if disabled:
        transport = None
    elif transport is None:
        from .transport import SpanTransport  # imported here: aiokafka is only needed when shipping to Kafka

        transport = SpanTransport(settings.kafka_bootstrap, **dict(transport_options or {}))  # type: ignore[arg-type]
        owns = True
    tracer = Tracer(
        settings.service,
        transport,
        enabled=not disabled,
        max_payload_bytes=max_payload_bytes,
        redact=redact,
        resource=resource,
        capture_io=capture_io,
        owns_transport=owns,
    )
    if set_global:
        previous = set_tracer(tracer)
        if previous.owns_transport and previous.transport is not transport:
            previous.shutdown(timeout=5.0)
    return tracer


# ---- module-level shortcuts on the global tracer -------------------------------------------


def span(
    name: str,
    kind: str = "CHAIN",
    *,
    parent: Any = None,
    attributes: Mapping[str, Any] | None = None,
) -> LiveSpan | NoopSpan:
    """`with span("retrieve", kind="RETRIEVER") as s:` — a span, current inside the block, on the global
    tracer. Works in sync and async code (`with` or `async with`)."""
    return _tracer.start_span(name, kind, parent=parent, attributes=attributes)


def start_span(
    name: str,
    kind: str = "CHAIN",
    *,
    parent: Any = None,
    attributes: Mapping[str, Any] | None = None,
) -> LiveSpan | NoopSpan:
    """A span that is not made current; end it with `.end()`. For callback-style integrations."""
    return _tracer.start_span(name, kind, parent=parent, attributes=attributes)


def current_span() -> LiveSpan | NoopSpan:
    """The span current in this context, or the no-op span (so setters can always be called)."""
    live = CURRENT_SPAN.get()
    return NOOP_SPAN if live is None else live


def flush(timeout: float | None = 30.0) -> bool:
    return _tracer.flush(timeout)


def shutdown(timeout: float = 30.0) -> None:
    _tracer.shutdown(timeout)


def stats() -> dict[str, int]:
    return _tracer.stats()
