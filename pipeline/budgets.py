"""Budgets per user and per session, on one partition: each span's cost, LLM call or tokens summed per key
(user_id or session_id) in each budget rule's window, in bounded memory.

Public API:
    SpaceSaving(capacity)                 the bounded per-key summary of one (rule, window)
      .add(key, weight) / .floor / .values / .errors / .updates
    BUDGET_GRACE_S                        how long after its end a window still takes late spans (10 s)
    PartitionBudgets(rules, partition, *, grace_s=BUDGET_GRACE_S, emit_interval_s=1.0, state=None)
      .add(span, cost_usd, user_id, session_id)    hot path, once per priced span (only with rules)
      .due(now_s, quiet_for_s) -> list[BudgetPartialRecord]   running sums to send to the merger
      .to_state() -> bytes                         in the partition's window checkpoint
      .stats -> BudgetStats

Why per partition and then merged: spans are partitioned by trace id, so one user's traces are spread
over every partition. Each partition sums what it sees; the one merger adds the partitions' sums per key
and evaluates the rules (pipeline/budgets_merge.py). The records (core/rollups.py BudgetPartialRecord)
are cumulative, like the windows' partials: a record re-sent after a restart replaces its older self and
is never added twice.

Memory bound (space-saving, Metwally et al. 2005, with weights): each (rule, window) keeps at most
`capacity` (K) counters. A key already counted adds to its counter; a new key takes a free counter, or,
when all K are taken, the smallest counter (its old key is forgotten) and starts from that counter's
value (O(log K), see SpaceSaving). So a partition holds at most K keys per rule and open window:
K x rules, twice that during the `grace_s` after a window boundary when the old window still takes
late spans. Accuracy: a counter
overstates its key's true sum by at most its `errors` entry, which is at most the smallest counter
(`floor`); a key that lost its counter summed at most `floor` on that partition. With fewer than K
distinct keys in a window the sums are exact. The merged sum of a key is therefore within the sum of
the partitions' floors of the truth (below by at most the floors of the partitions that evicted it,
above by at most its errors).

Windows are tumbling, aligned to the epoch, by span end time. A window closes on the partition `grace_s`
after its end (by event time while a backlog is replayed, by the wall clock when quiet, as
pipeline/partition_windows.py does); its final sums are sent and it is forgotten. A span that ends in a
window already closed is counted in `stats.late_spans` and left out (budgets alert; they store nothing).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from tracehouse.core.rollups import BudgetPartialRecord
from tracehouse.pipeline.budgets_rules import BudgetRule
from tracehouse.pipeline.span_view import AnySpan, usage_total

_NS = 1_000_000_000
_STATE_VERSION = 1
# How long after its end a window still takes spans on a partition (a trace's last spans may arrive a
# few seconds after its first): the merger resolves a window this long plus its merge delay after its end.
BUDGET_GRACE_S = 10.0


class SpaceSaving:
    """At most `capacity` counters of key -> summed weight; see the module docstring for the bounds.

    The smallest counter is found with a lazy min-heap of (value, key), one entry per key: a counter that
    grew since its entry was pushed is re-pushed with its value when it reaches the top, so an eviction
    costs O(log K) amortized (each add makes at most one entry stale). Weights must be > 0."""

    __slots__ = ("_heap", "capacity", "errors", "updates", "values")

    def __init__(self, capacity: int, values: dict[str, float] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self.values: dict[str, float] = dict(values) if values else {}
        self.errors: dict[str, float] = {}  # only keys that took over an evicted counter
        self.updates = 0  # weights added: grows with every add, for the merger's "newest record wins"
        self._heap = [(value, key) for key, value in self.values.items()]
        heapq.heapify(self._heap)

    def add(self, key: str, weight: float) -> None:
        self.updates += 1
        values = self.values
        current = values.get(key)
        if current is not None:
            values[key] = current + weight
            return
        heap = self._heap
        if len(values) < self.capacity:
            values[key] = weight
            heapq.heappush(heap, (weight, key))
            return
        # Full: the smallest counter goes to the new key, which inherits its value as its possible overcount.
        while True:
            floor, victim = heap[0]
            actual = values[victim]
            if actual == floor:
                break
            heapq.heapreplace(heap, (actual, victim))  # stale: it grew since
        del values[victim]
        self.errors.pop(victim, None)
        values[key] = floor + weight
        self.errors[key] = floor
        heapq.heapreplace(heap, (floor + weight, key))

    @property
    def floor(self) -> float:
        """The most a key without a counter can have summed (0 while the summary has room)."""
        values = self.values
        return min(values.values()) if len(values) >= self.capacity else 0.0


@dataclass
class BudgetStats:
    no_key: int = 0  # (span, rule) pairs without the rule's key (no user_id / session_id known yet)
    late_spans: int = 0  # ended in a window already closed on this partition: left out
    windows_closed: int = 0
    records: int = 0


class _RuleWindows:
    __slots__ = (
        "by_user",
        "closed_before",
        "cur_start",
        "cur_summary",
        "dirty",
        "metric",
        "rule",
        "window_ns",
        "window_seconds",
        "windows",
    )

    def __init__(self, rule: BudgetRule) -> None:
        self.rule = rule
        self.by_user = rule.key == "user"  # the rule's fields as the hot path reads them
        self.metric = rule.metric
        self.window_seconds = rule.window_seconds
        self.window_ns = rule.window_seconds * _NS
        self.windows: dict[int, SpaceSaving] = {}  # window_start (s) -> its summary
        self.dirty: set[int] = set()
        self.closed_before = -1  # windows starting before this are closed here
        # the window of the last span, marked dirty since the last due() (which resets it)
        self.cur_start = -1
        self.cur_summary: SpaceSaving | None = None


class _BudgetsState(msgspec.Struct):
    v: int
    fingerprints: dict[str, bytes]  # rule name -> the rule as it was (a changed rule starts afresh)
    closed_before: dict[str, int]
    windows: list[BudgetPartialRecord]
    newest_end_ns: int
    stats: dict[str, int]


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(_BudgetsState)


class PartitionBudgets:
    """One partition's per-key sums of every budget rule, by window."""

    def __init__(
        self,
        rules: Sequence[BudgetRule],
        partition: int,
        *,
        grace_s: float = BUDGET_GRACE_S,
        emit_interval_s: float = 1.0,
        state: bytes | None = None,
    ) -> None:
        self.partition = partition
        self.grace_s = float(grace_s)
        self.emit_interval_s = float(emit_interval_s)
        self.stats = BudgetStats()
        self._rules = [_RuleWindows(rule) for rule in rules]
        self._newest_end_ns = -1
        self._last_emit = -1e18
        if state:
            self._restore(state)

    # --- hot path -------------------------------------------------------------------------------------

    def add(self, span: AnySpan, cost_usd: float, user_id: str, session_id: str) -> None:
        """Fold one priced span into every rule; `user_id`/`session_id` are the span's or its trace's."""
        end_ns = span.end_time_ns
        if end_ns > self._newest_end_ns:
            self._newest_end_ns = end_ns
        for rw in self._rules:
            key = user_id if rw.by_user else session_id
            if not key:
                self.stats.no_key += 1
                continue
            metric = rw.metric
            if metric == "cost_usd":
                weight: float = cost_usd
            elif metric == "llm_calls":
                if span.kind != "LLM":
                    continue
                weight = 1
            else:
                usage = span.usage
                weight = usage_total(usage) if usage is not None else 0
            if weight <= 0:
                continue  # nothing to add: the key takes no counter
            start = end_ns // rw.window_ns * rw.window_seconds
            if start == rw.cur_start:  # the common case: the window of the previous span, already dirty
                summary = rw.cur_summary
                values = summary.values
                current = values.get(key)
                if current is not None:
                    values[key] = current + weight
                    summary.updates += 1
                    continue
            else:
                summary = rw.windows.get(start)
                if summary is None:
                    if start < rw.closed_before:
                        self.stats.late_spans += 1
                        continue
                    summary = rw.windows[start] = SpaceSaving(rw.rule.capacity)
                rw.dirty.add(start)
                rw.cur_start, rw.cur_summary = start, summary
            summary.add(key, weight)

    # --- per tick -------------------------------------------------------------------------------------

    def due(self, now_s: float, quiet_for_s: float) -> list[BudgetPartialRecord]:
        """The running sums of windows that changed (at most every `emit_interval_s`), and the final sums
        of windows that close now. While spans keep arriving, windows close by event time (the newest
        span's end), so a backlog replayed after a restart lands in its own windows."""
        live = quiet_for_s > self.grace_s or self._newest_end_ns < 0
        close_now = now_s if live else min(now_s, self._newest_end_ns / _NS)
        emit_all = now_s - self._last_emit >= self.emit_interval_s
        if emit_all:
            self._last_emit = now_s
        out: list[BudgetPartialRecord] = []
        for rw in self._rules:
            rw.cur_start, rw.cur_summary = -1, None  # the next span marks its window dirty again
            ws = rw.rule.window_seconds
            closing = [s for s in rw.windows if s + ws + self.grace_s <= close_now]
            for start in closing:
                out.append(self._record(rw, start))
                del rw.windows[start]
                rw.dirty.discard(start)
                rw.closed_before = max(rw.closed_before, start + ws)
                self.stats.windows_closed += 1
            if emit_all and rw.dirty:
                out.extend(self._record(rw, start) for start in sorted(rw.dirty))
                rw.dirty.clear()
        self.stats.records += len(out)
        return out

    def _record(self, rw: _RuleWindows, start: int) -> BudgetPartialRecord:
        summary = rw.windows[start]
        return BudgetPartialRecord(
            rule=rw.rule.name,
            window_start=start,
            window_seconds=rw.rule.window_seconds,
            partition=self.partition,
            updates=summary.updates,
            values=dict(summary.values),
            errors=dict(summary.errors),
            floor=summary.floor,
        )

    @property
    def keys_held(self) -> int:
        """Counters held now, over every rule and open window (at most capacity x rules x open windows)."""
        return sum(len(s.values) for rw in self._rules for s in rw.windows.values())

    # --- snapshots ------------------------------------------------------------------------------------

    def to_state(self) -> bytes:
        return _encoder.encode(
            _BudgetsState(
                v=_STATE_VERSION,
                fingerprints={rw.rule.name: _encoder.encode(rw.rule) for rw in self._rules},
                closed_before={rw.rule.name: rw.closed_before for rw in self._rules},
                windows=[self._record(rw, start) for rw in self._rules for start in rw.windows],
                newest_end_ns=self._newest_end_ns,
                stats=dict(vars(self.stats)),
            )
        )

    def _restore(self, data: bytes) -> None:
        state = _state_decoder.decode(data)
        if state.v != _STATE_VERSION:
            raise ValueError(f"budget state version {state.v} is not {_STATE_VERSION}")
        by_name = {
            rw.rule.name: rw for rw in self._rules if state.fingerprints.get(rw.rule.name) == _encoder.encode(rw.rule)
        }
        for name, rw in by_name.items():
            rw.closed_before = state.closed_before.get(name, -1)
        for record in state.windows:
            rw = by_name.get(record.rule)
            if rw is None:
                continue  # the rule was removed or changed: its sums start afresh
            summary = SpaceSaving(rw.rule.capacity, record.values)
            summary.errors = dict(record.errors)
            summary.updates = record.updates
            rw.windows[record.window_start] = summary
            rw.dirty.add(record.window_start)  # re-sent: the merger keeps whichever is newest
        self._newest_end_ns = state.newest_end_ns
        self.stats = BudgetStats(**state.stats)
