"""A worker's windows of scores (core/scores.py) for one partition: count and average per score name and the
service and model of the scored trace.

Public API:
    ScorePartial()                                  one group's score aggregates in one window
      .add(score) / .merge(other) / .to_record(...) / ScorePartial.from_record(record)
    TraceGroups(max_traces=100_000)                 recent trace id -> (service, model), bounded
      .remember(trace_id, service, model) / .get(trace_id)
    remember_emitted(groups, assembler, records)    fill TraceGroups from the traces just emitted
    ScoreWindows(partition, sizes, grace_s, retention, *, max_groups=1000, max_score_ids=50_000,
                 max_future_seconds=3600, clock=time.time)
      .add(score, service, model) -> bool           False: a duplicate score_id, or too late to count
      .pending(now_s) -> bool                       whether due(now_s) would return records
      .due(now_s) -> list[ScorePartialRecord]       closed windows, and revisions after late scores
      .to_state() -> bytes / ScoreWindows.from_state(data, clock=time.time)
      .stats -> ScoreWindowStats

Scores are few (a feedback click, an evaluation job's verdicts) next to spans, so this is simpler than
pipeline/windows.py and shares none of its hot path: every window, open or closed, keeps its groups as
live aggregates until the retention has passed. The records follow the spans' rules, so the merger
(pipeline/merger.py) treats both alike: cumulative per (window, group, partition), a `revision` for each
re-emission after late scores, the larger count wins. A score lands in the window of its `created_at`
(one from more than `max_future_seconds` ahead of the wall clock in the current window; one for a
window older than the retention is dropped and counted, as late spans are).

Exactly once: a score is counted once per `score_id` among the last `max_score_ids` this partition
counted (a client's retry, a redelivered message: the same id); ids are kept in the snapshot, so a
restarted worker remembers them too. A retry that comes after that many newer scores counts again.

The group of a score is its trace's service and model, looked up by the caller where the trace's spans
are (the same partition: scores are keyed by trace id like spans): the open or just emitted trace in
the assembler, then `TraceGroups`, the traces emitted lately. A score whose trace is not known there
(older than the map's bound, spans not arrived yet, or scored on another worker before a rebalance)
counts under service and model OTHER ("__other__"). `TraceGroups` is not snapshotted (its size would
make every checkpoint large): after a restart it refills from the traces emitted since.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from tracehouse.core.rollups import (
    MAX_SCORE_DISTINCT,
    OTHER,
    ScorePartialRecord,
    ScoreRollupKey,
    score_value_key,
)
from tracehouse.core.schema import TraceRecord
from tracehouse.core.scores import Score

_NS = 1_000_000_000
_STATE_VERSION = 1


class ScorePartial:
    """Score aggregates of one (name, service, model) group in one window."""

    __slots__ = ("count", "labels", "value_count", "value_max", "value_min", "value_sum", "values")

    def __init__(self) -> None:
        self.count = 0
        self.value_count = 0
        self.value_sum = 0.0
        self.value_min = math.inf
        self.value_max = -math.inf
        self.labels: dict[str, int] = {}
        self.values: dict[str, int] = {}

    def add(self, score: Score) -> None:
        self.count += 1
        value = score.value
        if value is not None:
            self.value_count += 1
            self.value_sum += value
            self.value_min = min(self.value_min, value)
            self.value_max = max(self.value_max, value)
            _count_distinct(self.values, score_value_key(value), 1)
        if score.label:
            _count_distinct(self.labels, score.label, 1)

    def merge(self, other: ScorePartial) -> None:
        self.count += other.count
        self.value_count += other.value_count
        self.value_sum += other.value_sum
        self.value_min = min(self.value_min, other.value_min)
        self.value_max = max(self.value_max, other.value_max)
        for key, n in other.values.items():
            _count_distinct(self.values, key, n)
        for key, n in other.labels.items():
            _count_distinct(self.labels, key, n)

    def to_record(
        self, key: ScoreRollupKey, window_start: int, window_seconds: int, partition: int, revision: int
    ) -> ScorePartialRecord:
        has_values = self.value_count > 0
        return ScorePartialRecord(
            window_start=window_start,
            window_seconds=window_seconds,
            name=key.name,
            service=key.service,
            model=key.model,
            partition=partition,
            revision=revision,
            count=self.count,
            value_count=self.value_count,
            value_sum=self.value_sum,
            value_min=self.value_min if has_values else 0.0,
            value_max=self.value_max if has_values else 0.0,
            label_counts=dict(self.labels),
            value_counts=dict(self.values),
        )

    @classmethod
    def from_record(cls, record: ScorePartialRecord) -> ScorePartial:
        partial = cls()
        partial.count = record.count
        partial.value_count = record.value_count
        partial.value_sum = record.value_sum
        if record.value_count:
            partial.value_min = record.value_min
            partial.value_max = record.value_max
        partial.labels = dict(record.label_counts)
        partial.values = dict(record.value_counts)
        return partial


def _count_distinct(counts: dict[str, int], key: str, n: int) -> None:
    """counts[key] += n, with at most MAX_SCORE_DISTINCT keys besides OTHER (the rest counted there)."""
    if key not in counts and len(counts) >= MAX_SCORE_DISTINCT:
        key = OTHER
    counts[key] = counts.get(key, 0) + n


class TraceGroups:
    """Recently emitted traces' (service, model), newest last; the oldest are forgotten past `max_traces`.

    The bound: `max_traces` entries per partition (100,000 by default, ~10 MB: the pairs are shared, so
    an entry costs its key and a dict slot). At 1,000 traces a second on a partition that is 100 s of
    traces; scores that come later than that count under OTHER.
    """

    def __init__(self, max_traces: int = 100_000) -> None:
        self.max_traces = max_traces
        self._groups: dict[str, tuple[str, str]] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}  # one shared tuple per (service, model)

    def remember(self, trace_id: str, service: str, model: str) -> None:
        pair = (service, model)
        shared = self._pairs.get(pair)
        if shared is None:
            if len(self._pairs) > 10_000:
                self._pairs.clear()
            shared = self._pairs[pair] = pair
        groups = self._groups
        groups.pop(trace_id, None)
        groups[trace_id] = shared
        if len(groups) > self.max_traces:
            del groups[next(iter(groups))]

    def get(self, trace_id: str) -> tuple[str, str] | None:
        return self._groups.get(trace_id)

    def __len__(self) -> int:
        return len(self._groups)


@dataclass
class ScoreWindowStats:
    scores: int = 0  # counted in the windows
    duplicates: int = 0  # a score_id counted before: not counted again
    late_scores: int = 0  # for a window already emitted: folded into a revision
    dropped_late_scores: int = 0  # for a window older than the retention: not counted
    future_scores: int = 0  # created more than max_future_seconds ahead: counted in the current window
    overflow_scores: int = 0  # counted in the OTHER group because the window had max_groups
    unknown_traces: int = 0  # the trace's service and model were not known: counted under OTHER
    windows_closed: int = 0
    revisions: int = 0


class _Window:
    __slots__ = ("dirty", "groups", "revision", "seconds", "start")

    def __init__(self, seconds: int, start: int, revision: int = -1) -> None:
        self.seconds = seconds
        self.start = start
        self.revision = revision  # -1: not emitted yet
        self.groups: dict[ScoreRollupKey, ScorePartial] = {}
        self.dirty: set[ScoreRollupKey] = set()  # groups changed since the last emission


class _WindowWire(msgspec.Struct, array_like=True):
    seconds: int
    start: int
    revision: int
    records: list[ScorePartialRecord]
    dirty: list[tuple[str, str, str]]


class _State(msgspec.Struct):
    v: int
    partition: int
    sizes: list[int]
    grace_seconds: float
    retention: dict[int, float]
    max_groups: int
    max_score_ids: int
    max_future_seconds: float
    last_now: float | None
    windows: list[_WindowWire]
    score_ids: list[str]
    stats: dict[str, int]


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(_State)


class ScoreWindows:
    """One partition's score windows, every size at once (a score is counted in each)."""

    def __init__(
        self,
        partition: int,
        sizes: Sequence[int],
        grace_seconds: float,
        retention: Callable[[int], float] | dict[int, float],
        *,
        max_groups: int = 1000,
        max_score_ids: int = 50_000,
        max_future_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.partition = partition
        self.sizes = tuple(int(s) for s in sizes)
        self.grace_seconds = float(grace_seconds)
        self.retention = {s: float(retention[s] if isinstance(retention, dict) else retention(s)) for s in self.sizes}
        self.max_groups = max_groups
        self.max_score_ids = max_score_ids
        self.max_future_seconds = float(max_future_seconds)
        self._clock = clock
        self.stats = ScoreWindowStats()
        self._windows: dict[tuple[int, int], _Window] = {}
        self._score_ids: dict[str, None] = {}  # insertion order: the oldest first
        self._last_now: float | None = None

    def add(self, score: Score, service: str, model: str) -> bool:
        """Count one score in its windows under (name, service, model); False when it is not counted (a
        duplicate score_id, or too late for every window size)."""
        ids = self._score_ids
        if score.score_id in ids:
            self.stats.duplicates += 1
            return False
        created_s = score.created_at / _NS
        now = self._clock()
        if created_s > now + self.max_future_seconds:
            self.stats.future_scores += 1
            created_s = now
        key = ScoreRollupKey(score.name, service, model)
        counted = False
        for size in self.sizes:
            start = int(created_s // size) * size
            window = self._windows.get((size, start))
            if window is None:
                last_now = self._last_now
                if last_now is not None and start + size + self.grace_seconds <= last_now:
                    if start + size < last_now - self.retention[size]:
                        self.stats.dropped_late_scores += 1
                        continue
                window = self._windows[(size, start)] = _Window(size, start)
            if window.revision >= 0:
                self.stats.late_scores += 1
            group_key = key
            partial = window.groups.get(group_key)
            if partial is None:
                if len(window.groups) >= self.max_groups:
                    self.stats.overflow_scores += 1
                    group_key = ScoreRollupKey(OTHER, OTHER, OTHER)
                    partial = window.groups.get(group_key)
                if partial is None:
                    partial = window.groups[group_key] = ScorePartial()
            partial.add(score)
            window.dirty.add(group_key)
            counted = True
        if counted:
            self.stats.scores += 1
            ids[score.score_id] = None
            if len(ids) > self.max_score_ids:
                del ids[next(iter(ids))]
        return counted

    def due(self, now_s: float) -> list[ScorePartialRecord]:
        """Records of the windows whose end + grace <= now_s (every group, revision 0), revisions of the
        groups that received late scores since, and forget windows older than their retention."""
        now_s = float(now_s)
        if self._last_now is not None and now_s < self._last_now:
            now_s = self._last_now
        self._last_now = now_s
        out: list[ScorePartialRecord] = []
        partition = self.partition
        for wkey in sorted(self._windows):
            window = self._windows[wkey]
            if window.start + window.seconds + self.grace_seconds > now_s:
                continue
            if window.revision < 0:
                keys = list(window.groups)
                self.stats.windows_closed += 1
            elif window.dirty:
                keys = sorted(window.dirty)
                self.stats.revisions += 1
            else:
                if window.start + window.seconds < now_s - self.retention[window.seconds]:
                    del self._windows[wkey]
                continue
            window.revision += 1
            window.dirty = set()
            out.extend(
                window.groups[k].to_record(k, window.start, window.seconds, partition, window.revision) for k in keys
            )
        return out

    def pending(self, now_s: float) -> bool:
        """Whether `due(now_s)` would return records (cheap: the caller snapshots before emitting)."""
        last_now = self._last_now if self._last_now is not None else now_s
        now_s = max(float(now_s), last_now)
        return any(
            w.start + w.seconds + self.grace_seconds <= now_s and (w.revision < 0 or w.dirty)
            for w in self._windows.values()
        )

    @property
    def open_windows(self) -> list[tuple[int, int]]:
        return sorted(self._windows)

    def to_state(self) -> bytes:
        windows = [
            _WindowWire(
                w.seconds,
                w.start,
                w.revision,
                [p.to_record(k, w.start, w.seconds, self.partition, w.revision) for k, p in w.groups.items()],
                [tuple(k) for k in w.dirty],
            )
            for w in self._windows.values()
        ]
        state = _State(
            v=_STATE_VERSION,
            partition=self.partition,
            sizes=list(self.sizes),
            grace_seconds=self.grace_seconds,
            retention=self.retention,
            max_groups=self.max_groups,
            max_score_ids=self.max_score_ids,
            max_future_seconds=self.max_future_seconds,
            last_now=self._last_now,
            windows=windows,
            score_ids=list(self._score_ids),
            stats=dict(vars(self.stats)),
        )
        return _encoder.encode(state)

    @classmethod
    def from_state(cls, data: bytes, clock: Callable[[], float] = time.time) -> ScoreWindows:
        state = _state_decoder.decode(data)
        if state.v != _STATE_VERSION:
            raise ValueError(f"score window state version {state.v} is not {_STATE_VERSION}")
        windows = cls(
            state.partition,
            state.sizes,
            state.grace_seconds,
            state.retention,
            max_groups=state.max_groups,
            max_score_ids=state.max_score_ids,
            max_future_seconds=state.max_future_seconds,
            clock=clock,
        )
        windows._last_now = state.last_now
        for wire in state.windows:
            window = windows._windows[(wire.seconds, wire.start)] = _Window(wire.seconds, wire.start, wire.revision)
            window.groups = {r.key: ScorePartial.from_record(r) for r in wire.records}
            window.dirty = {ScoreRollupKey(*k) for k in wire.dirty}
        windows._score_ids = dict.fromkeys(state.score_ids)
        windows.stats = ScoreWindowStats(**state.stats)
        return windows


class _GroupSource(Protocol):
    def trace_group(self, trace_id: str) -> tuple[str, str] | None: ...


def remember_emitted(groups: TraceGroups, assembler: _GroupSource, records: Iterable[TraceRecord]) -> None:
    """Remember the (service, model) of traces just emitted (once per trace, off the spans' hot path)."""
    for record in records:
        group = assembler.trace_group(record.trace_id)
        if group is not None:
            groups.remember(record.trace_id, *group)
