"""The merger: every partition's partial records of a (window, group) into one final `Rollup` row.

Public API:
    merge_records(records) -> Rollup                one row from the partitions' records of one group
    RollupMerger(merge_delay_seconds=10, retention_seconds=720)
      .add(record) -> bool                          False: a duplicate, stale or too old partial
      .due(now_s) -> list[Rollup]                   final rows, and revised rows after late partials
      .to_state() -> bytes / RollupMerger.from_state(data)
      .stats -> MergerStats
    merge_score_records(records) -> ScoreRollup     the same for scores' partials
    ScoreRollupMerger(...)                          RollupMerger for ScorePartialRecord -> ScoreRollup

The records (RollupPartialRecord in, Rollup out) are in core/rollups.py; the workers' windows that
emit the partials are pipeline/windows.py, which also explains why partials are cumulative: per
(window, group, partition) the merger keeps the record with the largest count, so a partial delivered
twice or re-emitted after a replay is never added twice. The Faust-facing stage that feeds it, publishes
its rows and checkpoints it is pipeline/merge_stage.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from tracehouse.core.rollups import Rollup, RollupPartialRecord, ScorePartialRecord, ScoreRollup
from tracehouse.core.sketch import LatencySketch
from tracehouse.pipeline.score_windows import ScorePartial
from tracehouse.pipeline.windows import WindowPartial

R = TypeVar("R", RollupPartialRecord, ScorePartialRecord)

_STATE_VERSION = 1
_state_encoder = msgspec.msgpack.Encoder()


def merge_records(records: list[RollupPartialRecord]) -> Rollup:
    """One row from the partitions' records of the same (window, group)."""
    first = records[0]
    sketch = LatencySketch()
    total = WindowPartial()
    total.sketch = sketch
    for record in sorted(records, key=lambda r: r.partition):
        total.merge(WindowPartial.from_record(record))
    p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
    return Rollup(
        window_start=first.window_start,
        window_seconds=first.window_seconds,
        service=first.service,
        kind=first.kind,
        name=first.name,
        model=first.model,
        count=total.count,
        error_count=total.error_count,
        rate_limit_count=total.rate_limit_count,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        latency_max_ms=sketch.max,
        latency_sketch=base64.b64encode(sketch.to_bytes()).decode("ascii"),
        input_tokens=total.input_tokens,
        output_tokens=total.output_tokens,
        cached_tokens=total.cached_tokens,
        reasoning_tokens=total.reasoning_tokens,
        cost_usd=total.cost_usd,
    )


def merge_score_records(records: list[ScorePartialRecord]) -> ScoreRollup:
    """One score row from the partitions' records of the same (window, group)."""
    first = records[0]
    total = ScorePartial()
    for record in sorted(records, key=lambda r: r.partition):
        total.merge(ScorePartial.from_record(record))
    row = total.to_record(first.key, first.window_start, first.window_seconds, 0, 0)
    return ScoreRollup(
        window_start=row.window_start,
        window_seconds=row.window_seconds,
        name=row.name,
        service=row.service,
        model=row.model,
        count=row.count,
        value_count=row.value_count,
        value_sum=row.value_sum,
        value_avg=row.value_sum / row.value_count if row.value_count else 0.0,
        value_min=row.value_min,
        value_max=row.value_max,
        label_counts=row.label_counts,
        value_counts=row.value_counts,
    )


@dataclass
class MergerStats:
    accepted: int = 0
    duplicates: int = 0  # same or older cumulative record of a (window, group, partition): ignored
    too_old: int = 0  # for a window older than the retention: dropped
    rollups: int = 0
    revisions: int = 0


class _MergeWindow(msgspec.Struct):
    window_start: int
    window_seconds: int
    emitted: bool = False
    # group -> partition -> that partition's latest cumulative record
    groups: dict[tuple[str, ...], dict[int, Any]] = {}
    dirty: set[tuple[str, ...]] = set()


class _MergeWindowState(msgspec.Struct, Generic[R]):
    emitted: bool
    dirty: list[tuple[str, ...]]
    records: list[R]


class _MergerState(msgspec.Struct, Generic[R]):
    v: int
    merge_delay_seconds: float
    retention_seconds: float
    last_now: float | None
    windows: list[_MergeWindowState[R]]
    stats: dict[str, int]


class RollupMerger:
    """Merges the partitions' partial records into final `Rollup` rows, and revises them."""

    _merge: ClassVar[Callable[[list[Any]], Any]] = staticmethod(merge_records)
    _state_decoder: ClassVar[msgspec.msgpack.Decoder] = msgspec.msgpack.Decoder(_MergerState[RollupPartialRecord])

    def __init__(self, merge_delay_seconds: float = 10.0, retention_seconds: float = 720.0) -> None:
        self.merge_delay_seconds = float(merge_delay_seconds)
        self.retention_seconds = float(retention_seconds)
        self.stats = MergerStats()
        self._windows: dict[tuple[int, int], _MergeWindow] = {}
        self._last_now: float | None = None

    def add(self, record: Any) -> bool:
        """Take one partial record; False when it changes nothing (duplicate, stale or too old)."""
        wkey = (record.window_seconds, record.window_start)
        window = self._windows.get(wkey)
        if window is None:
            end = record.window_start + record.window_seconds
            if self._last_now is not None and end < self._last_now - self.retention_seconds:
                self.stats.too_old += 1
                return False
            window = self._windows[wkey] = _MergeWindow(
                window_start=record.window_start, window_seconds=record.window_seconds, groups={}, dirty=set()
            )
        gkey = record.key
        by_partition = window.groups.get(gkey)
        if by_partition is None:
            by_partition = window.groups[gkey] = {}
        previous = by_partition.get(record.partition)
        # Cumulative records only grow, so the larger count is the newer (or the same) one.
        if previous is not None and record.count <= previous.count:
            self.stats.duplicates += 1
            return False
        by_partition[record.partition] = record
        self.stats.accepted += 1
        if window.emitted:
            window.dirty.add(gkey)
        return True

    def due(self, now_s: float) -> list[Any]:
        """Rows of the windows whose end + merge_delay <= now_s, and revised rows (merged totals) of
        emitted windows that received partials since; forgets emitted windows past the retention."""
        now_s = float(now_s)
        if self._last_now is not None and now_s < self._last_now:
            now_s = self._last_now
        self._last_now = now_s
        out: list[Any] = []
        for wkey in sorted(self._windows):
            window = self._windows[wkey]
            if not window.emitted:
                if window.window_start + window.window_seconds + self.merge_delay_seconds > now_s:
                    continue
                window.emitted = True
                groups = sorted(window.groups)
            elif window.dirty:
                groups = sorted(window.dirty)
                self.stats.revisions += len(groups)
            else:
                continue
            window.dirty = set()
            for gkey in groups:
                out.append(self._merge(list(window.groups[gkey].values())))
        self.stats.rollups += len(out)
        horizon = now_s - self.retention_seconds
        for wkey in [k for k, w in self._windows.items() if w.emitted and w.window_start + w.window_seconds < horizon]:
            del self._windows[wkey]
        return out

    def to_state(self) -> bytes:
        windows = [
            _MergeWindowState(
                emitted=w.emitted,
                dirty=sorted(w.dirty),
                records=[r for by_partition in w.groups.values() for r in by_partition.values()],
            )
            for w in self._windows.values()
        ]
        return _state_encoder.encode(
            _MergerState(
                v=_STATE_VERSION,
                merge_delay_seconds=self.merge_delay_seconds,
                retention_seconds=self.retention_seconds,
                last_now=self._last_now,
                windows=windows,
                stats=dict(vars(self.stats)),
            )
        )

    @classmethod
    def from_state(cls, data: bytes) -> RollupMerger:
        state = cls._state_decoder.decode(data)
        if state.v != _STATE_VERSION:
            raise ValueError(f"merger state version {state.v} is not {_STATE_VERSION}")
        merger = cls(state.merge_delay_seconds, state.retention_seconds)
        for saved in state.windows:
            for record in saved.records:
                merger.add(record)
            if saved.records:
                first = saved.records[0]
                window = merger._windows[(first.window_seconds, first.window_start)]
                window.emitted = saved.emitted
                window.dirty = set(saved.dirty)
        merger._last_now = state.last_now
        merger.stats = MergerStats(**state.stats)
        return merger


class ScoreRollupMerger(RollupMerger):
    """The scores' partials (ScorePartialRecord) into final `ScoreRollup` rows, by the same rules."""

    _merge = staticmethod(merge_score_records)
    _state_decoder = msgspec.msgpack.Decoder(_MergerState[ScorePartialRecord])
