"""A worker's tumbling windows: per (service, kind, name, model), one partition's running aggregates.

Public API:
    rollup_key(span) -> RollupKey
    is_rate_limited(span) -> bool                   by the one rule of core/error_types.py
    WindowPartial()                                 one group's aggregates in one window, on one partition
      .add_span(span, cost_usd) / .merge(other) / .to_record(...) / WindowPartial.from_record(record)
    WindowAggregator(window_seconds, grace_seconds, *, partition=0, max_groups=1000,
                     retention_seconds=600, max_future_seconds=3600, clock=time.time)
      .add(span, cost_usd)                          hot path, once per span
      .due(now_s) -> list[RollupPartialRecord]      closed windows + revisions of late data
      .event_time_s -> int | None                   end of the newest window with data (for catch-up)
      .to_state() -> bytes / WindowAggregator.from_state(data, clock=time.time)
      .stats -> AggregatorStats

The records it emits (RollupPartialRecord, on topics.PARTIALS_TOPIC) are in core/rollups.py; the merger
that turns every partition's partials into final `Rollup` rows is pipeline/merger.py; all window sizes of
a partition behind one interface is pipeline/partition_windows.py.

Event time is the span's end time, floored to the window. A worker keeps one aggregator per Kafka
partition it owns (and per window size); open windows live in memory, never in a per-span Faust Table
(that costs ~1 ms a span). A window closes `grace_seconds` after its end, by the caller's clock.

Late data and exactly-once without coordination: every partial record is *cumulative* — it carries
everything its partition has seen for that (window, group), and a later revision supersedes an earlier
one. A worker therefore keeps each closed window (as compact records) for `retention_seconds`; a span
that arrives for a closed window is added to that window's total and the group is re-emitted as the
next revision at the following `due()`. Because a partition's total for a window only grows, the
merger keeps, per (window, group, partition), the record with the largest count: a partial delivered
twice, or re-emitted after a crash and replay from a snapshot, is ignored or replaces its older self, and
is never added twice. Spans for windows older than the retention are dropped and counted: the merger
has forgotten those windows, and a row built from the late part alone would replace the full row.
(Hence the merger's retention, 12 minutes by default, exceeds the workers' 10 plus the merge delay.)

Bounded memory: `max_groups` groups per window (more go to the group "__other__" in all four key
fields), windows no further than `max_future_seconds` ahead of the wall clock (`clock`; spans from
further ahead — a producer with a broken clock — are counted into the current window), closed windows for
`retention_seconds`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from tracehouse.core import error_types
from tracehouse.core.rollups import OTHER_KEY, RollupKey, RollupPartialRecord
from tracehouse.core.sketch import LatencySketch
from tracehouse.pipeline.span_view import AnySpan

_NS = 1_000_000_000
_STATE_VERSION = 1
_rate_limited = error_types.is_rate_limited


def rollup_key(span: AnySpan) -> RollupKey:
    llm = span.llm
    return RollupKey(span.service, span.kind, span.name, llm.model if llm is not None else "")


def is_rate_limited(span: AnySpan) -> bool:
    """Whether the span counts in `rate_limit_count`: exactly when `spans.error_type` is "rate_limit"."""
    attributes = span.attributes
    explicit = attributes.get("error.type") if attributes else None
    return _rate_limited(explicit, span.events, span.status, span.status_message)


class WindowPartial:
    """Aggregates of one group in one window. Mutable and slotted: it is updated once per span."""

    __slots__ = (
        "cached_tokens",
        "cost_usd",
        "count",
        "error_count",
        "input_tokens",
        "output_tokens",
        "rate_limit_count",
        "reasoning_tokens",
        "sketch",
    )

    def __init__(self) -> None:
        self.count = 0
        self.error_count = 0
        self.rate_limit_count = 0
        self.sketch = LatencySketch()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.cost_usd = 0.0

    @property
    def latency_max_ms(self) -> float:
        return self.sketch.max

    def add_span(self, span: AnySpan, cost_usd: float) -> None:
        self.count += 1
        self.sketch.add((span.end_time_ns - span.start_time_ns) / 1e6)
        status = span.status
        failed = status == "ERROR"
        if failed:
            self.error_count += 1
        # The common span (no error.type, no events, no error) pays two lookups here, not a call.
        attributes = span.attributes
        explicit = attributes.get("error.type") if attributes else None
        events = span.events
        if (explicit or events or failed) and _rate_limited(explicit, events, status, span.status_message):
            self.rate_limit_count += 1
        usage = span.usage
        if usage is not None:
            self.input_tokens += usage.input
            self.output_tokens += usage.output
            self.cached_tokens += usage.cached
            self.reasoning_tokens += usage.reasoning
        self.cost_usd += cost_usd

    def merge(self, other: WindowPartial) -> None:
        self.count += other.count
        self.error_count += other.error_count
        self.rate_limit_count += other.rate_limit_count
        self.sketch.merge(other.sketch)
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_usd += other.cost_usd

    def to_record(
        self,
        key: RollupKey | tuple[str, str, str, str],
        window_start: int,
        window_seconds: int,
        partition: int,
        revision: int,
    ) -> RollupPartialRecord:
        service, kind, name, model = key
        return RollupPartialRecord(
            window_start=window_start,
            window_seconds=window_seconds,
            service=service,
            kind=kind,
            name=name,
            model=model,
            partition=partition,
            revision=revision,
            count=self.count,
            error_count=self.error_count,
            rate_limit_count=self.rate_limit_count,
            latency_max_ms=self.sketch.max,
            latency_sketch=self.sketch.to_bytes(),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cost_usd=self.cost_usd,
        )

    @classmethod
    def from_record(cls, record: RollupPartialRecord) -> WindowPartial:
        partial = cls()
        partial.count = record.count
        partial.error_count = record.error_count
        partial.rate_limit_count = record.rate_limit_count
        partial.sketch = LatencySketch.from_bytes(record.latency_sketch)
        partial.input_tokens = record.input_tokens
        partial.output_tokens = record.output_tokens
        partial.cached_tokens = record.cached_tokens
        partial.reasoning_tokens = record.reasoning_tokens
        partial.cost_usd = record.cost_usd
        return partial


@dataclass
class AggregatorStats:
    late_spans: int = 0  # arrived for a closed window; folded into a revision (or dropped, below)
    dropped_late_spans: int = 0  # for a window older than the retention: nobody can fold them in
    overflow_spans: int = 0  # counted in the "__other__" group because a window had max_groups
    future_spans: int = 0  # ended more than max_future_seconds ahead: counted in the current window
    windows_closed: int = 0
    revisions: int = 0


class _ClosedWindow(msgspec.Struct):
    """A closed window kept for late data: its last revision and its records by group."""

    window_start: int
    revision: int
    records: list[RollupPartialRecord]


class _AggregatorState(msgspec.Struct):
    v: int
    window_seconds: int
    grace_seconds: float
    partition: int
    max_groups: int
    retention_seconds: float
    max_future_seconds: float
    closed_through: float
    last_now: float | None
    newest_start: int
    open: list[RollupPartialRecord]
    closed: list[_ClosedWindow]
    late: list[RollupPartialRecord]
    stats: dict[str, int]


_state_encoder = msgspec.msgpack.Encoder()
_aggregator_state_decoder = msgspec.msgpack.Decoder(_AggregatorState)


class WindowAggregator:
    """A worker's open tumbling windows for one partition and one window size."""

    def __init__(
        self,
        window_seconds: int,
        grace_seconds: float,
        *,
        partition: int = 0,
        max_groups: int = 1000,
        retention_seconds: float = 600.0,
        max_future_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_seconds <= 0 or int(window_seconds) != window_seconds:
            raise ValueError(f"window_seconds must be a positive integer, got {window_seconds!r}")
        if grace_seconds < 0 or max_groups < 1 or retention_seconds < 0 or max_future_seconds < 0:
            raise ValueError("grace, retention and max_future must be >= 0 and max_groups >= 1")
        self.window_seconds = int(window_seconds)
        self.grace_seconds = float(grace_seconds)
        self.partition = partition
        self.max_groups = max_groups
        self.retention_seconds = float(retention_seconds)
        self.max_future_seconds = float(max_future_seconds)
        self._clock = clock
        self.stats = AggregatorStats()
        self._window_ns = self.window_seconds * _NS
        self._open: dict[int, dict[tuple[str, str, str, str], WindowPartial]] = {}
        self._closed: dict[int, _ClosedWindow] = {}
        self._late: dict[int, dict[tuple[str, str, str, str], WindowPartial]] = {}
        self._closed_through = -math.inf  # windows starting at or before this are closed
        self._last_now: float | None = None
        self._future_limit = math.inf  # window starts beyond this are "from the future"
        self._cur_start = -1
        self._cur_groups: dict[tuple[str, str, str, str], WindowPartial] = {}
        self._newest_start = -1  # the newest window that ever received a span

    # --- hot path -------------------------------------------------------------------------------------

    def add(self, span: AnySpan, cost_usd: float) -> None:
        """Count one span in its window (by end time). ~1 µs; late spans take a slower path."""
        start = span.end_time_ns // self._window_ns * self.window_seconds
        if start == self._cur_start:
            groups = self._cur_groups
        else:
            groups = self._open.get(start)
            if groups is None:
                found = self._window_for(start)
                if found is None:
                    self._add_late(start, span, cost_usd)
                    return
                groups = found
            self._cur_start = start
            self._cur_groups = groups
        llm = span.llm
        key = (span.service, span.kind, span.name, llm.model if llm is not None else "")
        partial = groups.get(key)
        if partial is None:
            partial = self._new_group(groups, key)
        partial.add_span(span, cost_usd)

    def _window_for(self, start: int) -> dict[tuple[str, str, str, str], WindowPartial] | None:
        """The open window for `start`, created if needed; None when that window is already closed."""
        if start <= self._closed_through:
            return None
        if start > self._future_limit:
            self.stats.future_spans += 1
            start = self._current_start()
        return self._open_window(start)

    def _open_window(self, start: int) -> dict[tuple[str, str, str, str], WindowPartial]:
        groups = self._open.get(start)
        if groups is None:
            groups = self._open[start] = {}
            if start > self._newest_start:
                self._newest_start = start
        return groups

    def _current_start(self) -> int:
        """The window of the clock's now (the next one when a zero grace has closed it already)."""
        assert self._last_now is not None
        start = int(self._last_now // self.window_seconds) * self.window_seconds
        return start + self.window_seconds if start <= self._closed_through else start

    def _fold_into_current(self, groups: dict[tuple[str, str, str, str], WindowPartial]) -> None:
        """Move a far-future window's groups into the current window (see max_future_seconds)."""
        current = self._open_window(self._current_start())
        for key, partial in groups.items():
            self.stats.future_spans += partial.count
            target = current.get(key)
            if target is None:
                target = self._new_group(current, key)
            target.merge(partial)

    def _new_group(
        self, groups: dict[tuple[str, str, str, str], WindowPartial], key: tuple[str, str, str, str]
    ) -> WindowPartial:
        if len(groups) >= self.max_groups:
            self.stats.overflow_spans += 1
            key = OTHER_KEY
            partial = groups.get(key)
            if partial is not None:
                return partial
        partial = groups[key] = WindowPartial()
        return partial

    def _add_late(self, start: int, span: AnySpan, cost_usd: float) -> None:
        self.stats.late_spans += 1
        closed = self._closed.get(start)
        if closed is None:
            assert self._last_now is not None
            if start + self.window_seconds < self._last_now - self.retention_seconds:
                self.stats.dropped_late_spans += 1
                return
            closed = self._closed[start] = _ClosedWindow(window_start=start, revision=-1, records=[])
        late = self._late.get(start)
        if late is None:
            late = self._late[start] = {}
        key = rollup_key(span)
        partial = late.get(key)
        if partial is None:  # first late span of this group since the last due(): resume its total
            previous = {r.key: r for r in closed.records}
            if key not in previous and len(previous.keys() | late.keys()) >= self.max_groups:
                self.stats.overflow_spans += 1
                key = OTHER_KEY
                partial = late.get(key)
            if partial is None:
                record = previous.get(key)
                partial = late[key] = WindowPartial.from_record(record) if record else WindowPartial()
        partial.add_span(span, cost_usd)

    # --- closing --------------------------------------------------------------------------------------

    def due(self, now_s: float) -> list[RollupPartialRecord]:
        """Close the windows whose end + grace <= now_s, re-emit groups that received late spans, and
        forget closed windows older than the retention. Returns the records to send to the merger."""
        now_s = float(now_s)
        if self._last_now is not None and now_s < self._last_now:
            now_s = self._last_now  # the clock went back: keep the watermark where it was
        self._last_now = now_s
        self._closed_through = max(self._closed_through, now_s - self.window_seconds - self.grace_seconds)
        # the wall clock, not now_s: a caller closing windows by event time (catching up) may pass an
        # old now_s, and spans after a quiet gap in the backlog are not "from the future"
        self._future_limit = self._clock() + self.max_future_seconds
        self._cur_start = -1
        self._cur_groups = {}
        out: list[RollupPartialRecord] = []
        ws, partition = self.window_seconds, self.partition
        for start in [s for s in self._open if s > self._future_limit]:  # opened before the clock was known
            self._fold_into_current(self._open.pop(start))
        for start in sorted(s for s in self._open if s <= self._closed_through):
            groups = self._open.pop(start)
            records = [p.to_record(k, start, ws, partition, 0) for k, p in groups.items()]
            self._closed[start] = _ClosedWindow(window_start=start, revision=0, records=records)
            self.stats.windows_closed += 1
            out.extend(records)
        for start in sorted(self._late):
            late = self._late[start]
            closed = self._closed[start]
            closed.revision += 1
            revised = [p.to_record(k, start, ws, partition, closed.revision) for k, p in late.items()]
            by_key = {r.key: r for r in closed.records}
            by_key.update((r.key, r) for r in revised)
            closed.records = list(by_key.values())
            self.stats.revisions += 1
            out.extend(revised)
        self._late.clear()
        horizon = now_s - self.retention_seconds
        for start in [s for s in self._closed if s + ws < horizon]:
            del self._closed[start]
        return out

    def newest_closed(self, count: int) -> list[tuple[int, list[RollupPartialRecord]]]:
        """The `count` newest closed windows still kept (oldest first), each group at its latest revision:
        what this partition has seen of them (tail sampling's group quantile, pipeline/sampling.py)."""
        return [(start, self._closed[start].records) for start in sorted(self._closed)[-count:]]

    @property
    def open_windows(self) -> list[int]:
        return sorted(self._open)

    @property
    def event_time_s(self) -> int | None:
        """The end of the newest window that received a span (event time, to the window), or None.

        For catching up on a backlog, close windows by event time: call `due(min(time.time(),
        event_time_s))` while the partition is receiving spans, and `due(time.time())` once it has been
        quiet for longer than window + grace (so its last window closes too). With the wall clock
        alone, every old window closes at the first tick and its replayed spans all arrive "late" (as
        revisions, or dropped past the retention).
        """
        return self._newest_start + self.window_seconds if self._newest_start >= 0 else None

    # --- snapshots ------------------------------------------------------------------------------------

    def to_state(self) -> bytes:
        """Everything needed to resume after a crash (open windows, closed ones kept for late data)."""
        ws, partition = self.window_seconds, self.partition
        state = _AggregatorState(
            v=_STATE_VERSION,
            window_seconds=ws,
            grace_seconds=self.grace_seconds,
            partition=partition,
            max_groups=self.max_groups,
            retention_seconds=self.retention_seconds,
            max_future_seconds=self.max_future_seconds,
            closed_through=self._closed_through,
            last_now=self._last_now,
            newest_start=self._newest_start,
            open=[p.to_record(k, s, ws, partition, -1) for s, g in self._open.items() for k, p in g.items()],
            closed=list(self._closed.values()),
            late=[p.to_record(k, s, ws, partition, -1) for s, g in self._late.items() for k, p in g.items()],
            stats=dict(vars(self.stats)),
        )
        return _state_encoder.encode(state)

    @classmethod
    def from_state(cls, data: bytes, clock: Callable[[], float] = time.time) -> WindowAggregator:
        state = _aggregator_state_decoder.decode(data)
        if state.v != _STATE_VERSION:
            raise ValueError(f"aggregator state version {state.v} is not {_STATE_VERSION}")
        agg = cls(
            state.window_seconds,
            state.grace_seconds,
            partition=state.partition,
            max_groups=state.max_groups,
            retention_seconds=state.retention_seconds,
            max_future_seconds=state.max_future_seconds,
            clock=clock,
        )
        agg._closed_through = state.closed_through
        agg._last_now = state.last_now
        agg._newest_start = state.newest_start
        if state.last_now is not None:
            agg._future_limit = clock() + state.max_future_seconds
        for record in state.open:
            agg._open.setdefault(record.window_start, {})[record.key] = WindowPartial.from_record(record)
        agg._closed = {c.window_start: c for c in state.closed}
        for record in state.late:
            agg._late.setdefault(record.window_start, {})[record.key] = WindowPartial.from_record(record)
        agg.stats = AggregatorStats(**state.stats)
        return agg
