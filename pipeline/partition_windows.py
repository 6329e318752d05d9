"""All window sizes of one partition behind one add/due/snapshot interface, as the span processor uses them.

- `WindowOptions`: the window sizes (core/rollups.py's WINDOW_SIZES: 10 s for alerting, 60 s for
  dashboards) and how long each accepts late data.
- `PartitionWindows`: one partition's aggregators (pipeline/windows.py), one per size, closed by event
  time while a backlog is replayed and by the wall clock when live, snapshot-able as one blob; and, when
  budget rules are configured, the partition's per-user/per-session sums (pipeline/budgets.py), in the
  same blob, so a restarted worker restores both from one checkpoint and replays the same offsets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from tracehouse.core.rollups import WINDOW_SIZES, BudgetPartialRecord, RollupPartialRecord
from tracehouse.pipeline.budgets import PartitionBudgets
from tracehouse.pipeline.budgets_rules import BudgetRule, load_budget_rules
from tracehouse.pipeline.span_view import AnySpan
from tracehouse.pipeline.windows import WindowAggregator


@dataclass(frozen=True)
class WindowOptions:
    """Window sizes and how long each accepts late data."""

    sizes: tuple[int, ...] = WINDOW_SIZES
    grace_s: float = 0.5  # a window closes this long after its end (late spans then make revisions)
    retention_s: dict[int, int] | None = None  # closed windows kept for revisions; default below
    merge_delay_s: float = 1.2  # the merger waits this long after a window's end for every partition

    def retention(self, size: int) -> int:
        if self.retention_s and size in self.retention_s:
            return self.retention_s[size]
        return 120 if size < 60 else 600


class _WindowsState(msgspec.Struct):
    aggregators: list[bytes]
    budgets: bytes = b""  # PartitionBudgets.to_state(); absent in snapshots written before budgets


class PartitionWindows:
    """All window sizes of one partition behind one add/due/snapshot interface."""

    def __init__(
        self,
        partition: int,
        options: WindowOptions,
        state: bytes | None = None,
        budget_rules: Sequence[BudgetRule] = (),
    ) -> None:
        self.options = options
        saved = msgspec.msgpack.decode(state, type=_WindowsState) if state else None
        # None without budget rules: the span path then pays one `is None` test per span
        self.budgets = (
            PartitionBudgets(budget_rules, partition, state=saved.budgets if saved else None) if budget_rules else None
        )
        if saved is not None:
            self.aggregators = [WindowAggregator.from_state(blob) for blob in saved.aggregators]
        else:
            self.aggregators = [
                WindowAggregator(size, options.grace_s, partition=partition, retention_seconds=options.retention(size))
                for size in options.sizes
            ]
        self._last_arrival = time.time()

    def add(self, span: AnySpan, cost: float) -> None:
        for aggregator in self.aggregators:
            aggregator.add(span, cost)
        self._last_arrival = time.time()

    def due(self, now_s: float) -> list[RollupPartialRecord]:
        out: list[RollupPartialRecord] = []
        quiet_for = now_s - self._last_arrival
        for aggregator in self.aggregators:
            event_time = aggregator.event_time_s
            live = event_time is None or quiet_for > aggregator.window_seconds + aggregator.grace_seconds
            # Catching up on a backlog: close windows by event time, not all at once by the clock.
            out.extend(aggregator.due(now_s if live else min(now_s, event_time)))
        return out

    def due_budgets(self, now_s: float) -> list[BudgetPartialRecord]:
        """The budgets' running sums to send to the merger ([] without budget rules)."""
        if self.budgets is None:
            return []
        return self.budgets.due(now_s, now_s - self._last_arrival)

    def newest_closed(self, count: int) -> tuple[int, list[tuple[int, list[RollupPartialRecord]]]]:
        """The longest window size and its `count` newest closed windows (for pipeline/sampling.py's keep
        rule on a group's latency quantile: the most spans per window, and restored with the checkpoint)."""
        longest = max(self.aggregators, key=lambda a: a.window_seconds)
        return longest.window_seconds, longest.newest_closed(count)

    def to_state(self) -> bytes:
        budgets = self.budgets.to_state() if self.budgets is not None else b""
        return msgspec.msgpack.encode(_WindowsState([a.to_state() for a in self.aggregators], budgets))


def windows_factory(
    options: WindowOptions | None = None, budget_rules: Sequence[BudgetRule] | None = None
) -> Callable[[int, bytes | None], PartitionWindows]:
    """Each partition's windows; budget rules default to those of `TRACEHOUSE_ALERT_RULES` (none without it)."""
    opts = options or WindowOptions()
    rules = tuple(load_budget_rules() if budget_rules is None else budget_rules)
    return lambda partition, state: PartitionWindows(partition, opts, state, rules)
