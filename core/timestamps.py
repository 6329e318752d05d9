"""Which span times tracehouse stores: one rule, so the worker and the sink decide alike.

`spans` and `traces` are partitioned by day. A span from the year 2250 fits DateTime64(9) but opens a
partition of its own two centuries ahead, and a span older than the table's TTL is stored only to be
deleted at the next merge: both are almost always a client bug (a clock, or microseconds sent as
nanoseconds), and storing them silently helps nobody. Such spans are refused, with the reason, and their
original bytes go to the dead-letter topic (the sink writes it: it knows the table's retention), so they
can be replayed once the clock is fixed. Clamping was the alternative; it was not chosen because a clamped
time is a time that never happened, and it would bend the trace's timeline and its windows.

The reference time is the Kafka record's timestamp, not the clock of whoever reads it: the worker and the
sink read the same record, so they reach the same verdict, also on a replay.
"""

from __future__ import annotations

import operator
from datetime import datetime, timezone
from typing import NamedTuple

from tracehouse.core.schema import RejectedSpan, Span, encode_span

SECOND_NS = 1_000_000_000
DAY_NS = 86_400 * SECOND_NS
# How far ahead of the record's time a span may start or end: generous for skewed clocks, small enough
# that a unit error (µs as ns, s as ms) never passes.
MAX_AHEAD_NS = DAY_NS

_start = operator.attrgetter("start_time_ns")
_end = operator.attrgetter("end_time_ns")


class TimeWindow(NamedTuple):
    """The span times stored for one Kafka record: [earliest_ns, latest_ns]."""

    earliest_ns: int
    latest_ns: int
    retention_days: int | None


def time_window(received_ns: int, retention_days: int | None = None, now_ns: int | None = None) -> TimeWindow:
    """The window for a record received at `received_ns`, under a TTL of `retention_days` (None: none).

    The future bound is relative to the record's time only. The past bound is the TTL's own rule:
    `TTL toDate(start_time) + INTERVAL N DAY` deletes a row once its day plus N days has begun, at once if
    that is already so when it is inserted; so a span is kept from the start of the UTC day N - 1 days
    before the later of the record's time and `now_ns` (the storing process's clock: the TTL runs on it)."""
    if not retention_days:
        return TimeWindow(0, received_ns + MAX_AHEAD_NS, None)
    reference = max(received_ns, now_ns or 0)
    earliest = reference - reference % DAY_NS - (retention_days - 1) * DAY_NS
    return TimeWindow(earliest, received_ns + MAX_AHEAD_NS, retention_days)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // SECOND_NS, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_refusal(start_ns: int, end_ns: int, window: TimeWindow) -> str | None:
    """Why a span (or a trace) with these times is not stored, or None when it is."""
    if end_ns > window.latest_ns or start_ns > window.latest_ns:
        return (
            f"time refused: the span ends at {_iso(end_ns)}, more than "
            f"{MAX_AHEAD_NS // 3_600_000_000_000} h after it was received ({_iso(window.latest_ns - MAX_AHEAD_NS)});"
            " check the sender's clock and time unit (nanoseconds since the epoch)"
        )
    if start_ns < window.earliest_ns:
        return (
            f"time refused: the span starts at {_iso(start_ns)}, older than the retention of"
            f" {window.retention_days} days (the table's TTL would delete it)"
        )
    return None


def split_by_time(spans: list[Span], window: TimeWindow) -> tuple[list[Span], list[RejectedSpan]]:
    """The spans whose times are stored, and the others with their reason and bytes.

    Cheap when every span is in the window (a min and a max, the list returned as it is)."""
    if not spans or (min(map(_start, spans)) >= window.earliest_ns and max(map(_end, spans)) <= window.latest_ns):
        return spans, []
    kept: list[Span] = []
    refused: list[RejectedSpan] = []
    for span in spans:
        reason = time_refusal(span.start_time_ns, span.end_time_ns, window)
        if reason is None:
            kept.append(span)
        else:
            refused.append(RejectedSpan(reason=reason, payload=encode_span(span)))
    return kept, refused
