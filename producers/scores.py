"""Scores from the app, after the fact: user feedback (thumbs up/down, a rating, a correction) or an
evaluation job's results, attached to a trace that already happened.

    from tracehouse.producers import configure, current_trace_id, score
    configure(service="support-bot")

    with span("answer", kind="CHAIN"):
        trace_id = current_trace_id()        # hand it to the page, next to the answer
    ...
    score(trace_id=trace_id, name="user_feedback", value=0, label="thumbs_down", comment="wrong date")

Fire-and-forget like spans: `score` validates its arguments (a ValueError names the field: a bad call is a
bug to see), then queues the record on the tracer's transport, whose background thread sends it to
`tracehouse.scores` (the trace's partition) and never makes the app wait. What a crash can lose is what
the transport's queue held, as for spans; `flush()` bounds it. With tracing disabled, nothing is sent.

For a score inside a span that is still open, `span.add_score(...)` is the way: it travels with the span
and lands in the same `scores` table (source `sdk`).
"""

from __future__ import annotations

from tracehouse.core.scores import Score, ScoreSource, validated

from .context import CURRENT_SPAN
from .tracer import Tracer, get_tracer

__all__ = ["current_span_id", "current_trace_id", "score"]


def current_trace_id() -> str | None:
    """The trace id of the span current in this context (32 hex digits), or None outside any span (or
    with tracing disabled): what an app hands to its page so a feedback button can score this answer."""
    live = CURRENT_SPAN.get()
    return live.trace_id if live is not None else None


def current_span_id() -> str | None:
    """The span id of the span current in this context, or None."""
    live = CURRENT_SPAN.get()
    return live.span_id if live is not None else None


def score(
    *,
    trace_id: str | None = None,
    name: str,
    value: float | None = None,
    label: str = "",
    span_id: str = "",
    comment: str = "",
    author: str = "",
    source: ScoreSource = "sdk",
    score_id: str = "",
    created_at_ns: int = 0,
    tracer: Tracer | None = None,
) -> Score | None:
    """Send a score for a trace (default: the current one); returns the record sent (its `score_id` is
    the idempotency key: send the same one again and it is stored once), or None when tracing is
    disabled or the transport's queue is full (counted by the transport).

    Raises ValueError, naming the field, for arguments the record refuses (no trace, an id that is not
    hex, neither value nor label, a value that is not finite, text over its bound)."""
    tracer = tracer or get_tracer()
    if trace_id is None:
        trace_id = current_trace_id()
        if trace_id is None:
            raise ValueError("trace_id: no trace id given and no span is current")
    if value is not None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"value: must be a number, got {value!r}") from None
    record = validated(
        Score(
            trace_id=trace_id.lower(),
            name=name,
            value=value,
            label=label,
            span_id=span_id.lower(),
            comment=comment,
            source=source,
            author=author,
            score_id=score_id,
            created_at=created_at_ns,
        )
    )
    if not tracer.enabled or tracer.transport is None:
        return None
    submit = getattr(tracer.transport, "submit_score", None)
    if submit is None:
        raise TypeError(f"the tracer's transport ({type(tracer.transport).__name__}) has no submit_score")
    return record if submit(record) else None
