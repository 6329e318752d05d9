"""Budgets at the merger: every partition's per-key sums (pipeline/budgets.py) added up per key, and the
budget rules (pipeline/budgets_rules.py) evaluated on the totals.

Public API:
    BudgetMerger(rules, *, close_delay_s=11.2)
      .add(record) -> bool                 False: a duplicate, stale or finished window's record
      .evaluate(now_s, now_ms=None) -> list[Alert]
      .to_state() -> bytes / BudgetMerger.from_state(rules, data, **options)
      .stats -> BudgetMergerStats

Fire and resolve, as the window rules do (once each, no storm): a key fires once per (rule, window), as
soon as the partitions' sums of that window add up above the threshold (the workers send running sums
about every second, so well before the window ends); it resolves once when its window is over
(`close_delay_s` after the window's end: the partitions' grace plus the merge delay), and the next
window starts from zero. An alert names the key in `user_id` or `session_id`, in its labels and in its
message; `service` is "*" (a user's spans may come from several services).

Per (rule, window, partition) the merger keeps the record with the most `updates` (records are
cumulative), so a record sent twice or re-sent after a worker's restart is never added twice. The
merged value of a key is an estimate within the partitions' space-saving bounds (pipeline/budgets.py);
the alert's labels carry `overcount_bound` (the sum of its counters' errors) and `undercount_bound`
(the floors of the partitions that hold no counter for it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tracehouse.core.alerts import Alert
from tracehouse.core.rollups import BudgetPartialRecord
from tracehouse.pipeline.budgets_rules import BudgetRule

_STATE_VERSION = 1
_SUBJECT = {"cost_usd": "cost", "llm_calls": "LLM calls", "total_tokens": "tokens"}
_encoder = msgspec.msgpack.Encoder()


def _format(metric: str, value: float) -> str:
    return f"${value:,.2f}" if metric == "cost_usd" else f"{value:,.0f}"


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


@dataclass
class BudgetMergerStats:
    accepted: int = 0
    duplicates: int = 0  # same or older cumulative record of a (rule, window, partition): ignored
    finished: int = 0  # for a window already resolved (or a rule no longer configured): ignored
    fired: int = 0
    resolved: int = 0


class _Window(msgspec.Struct):
    rule: str
    window_start: int
    window_seconds: int
    records: dict[int, BudgetPartialRecord] = {}  # partition -> its latest record
    fired: dict[str, float] = {}  # key -> the total it fired at
    dirty: bool = False


class _State(msgspec.Struct):
    v: int
    fingerprints: dict[str, bytes]
    finished_through: dict[str, int]
    windows: list[_Window]
    stats: dict[str, int]


_state_decoder = msgspec.msgpack.Decoder(_State)


class BudgetMerger:
    """The partitions' budget sums per key, and the alerts of the budget rules on them."""

    def __init__(self, rules: Sequence[BudgetRule], *, close_delay_s: float = 11.2) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self.close_delay_s = float(close_delay_s)
        self.stats = BudgetMergerStats()
        self._windows: dict[tuple[str, int], _Window] = {}
        # rule -> the latest window_start resolved: records for it or older ones are too late
        self._finished_through: dict[str, int] = {}

    def add(self, record: BudgetPartialRecord) -> bool:
        rule = self.rules.get(record.rule)
        if rule is None or record.window_start <= self._finished_through.get(record.rule, -1):
            self.stats.finished += 1
            return False
        wkey = (record.rule, record.window_start)
        window = self._windows.get(wkey)
        if window is None:
            window = self._windows[wkey] = _Window(
                rule=record.rule, window_start=record.window_start, window_seconds=record.window_seconds
            )
        previous = window.records.get(record.partition)
        if previous is not None and record.updates <= previous.updates:
            self.stats.duplicates += 1
            return False
        window.records[record.partition] = record
        window.dirty = True
        self.stats.accepted += 1
        return True

    @staticmethod
    def totals(window: _Window) -> dict[str, float]:
        """Each key's sum over the partitions."""
        out: dict[str, float] = {}
        for record in window.records.values():
            for key, value in record.values.items():
                out[key] = out.get(key, 0.0) + value
        return out

    def evaluate(self, now_s: float | None = None, now_ms: int | None = None) -> list[Alert]:
        """Fire the keys that went over in windows that changed; resolve the keys of windows now over."""
        if now_s is None:
            now_s = time.time()
        if now_ms is None:
            now_ms = int(now_s * 1000)
        out: list[Alert] = []
        for wkey in sorted(self._windows):
            window = self._windows[wkey]
            rule = self.rules[window.rule]
            over = window.window_start + window.window_seconds + self.close_delay_s <= now_s
            if not window.dirty and not over:
                continue
            totals = self.totals(window) if window.dirty or (over and window.fired) else {}
            window.dirty = False
            for key in sorted(totals):
                value = totals[key]
                if value > rule.threshold and key not in window.fired:
                    window.fired[key] = value
                    self.stats.fired += 1
                    out.append(self._alert(rule, window, key, value, "firing", now_ms))
            if over:
                for key in sorted(window.fired):
                    self.stats.resolved += 1
                    out.append(self._alert(rule, window, key, totals.get(key, window.fired[key]), "resolved", now_ms))
                del self._windows[wkey]
                self._finished_through[window.rule] = max(
                    self._finished_through.get(window.rule, -1), window.window_start
                )
        return out

    def _alert(self, rule: BudgetRule, window: _Window, key: str, value: float, state: str, now_ms: int) -> Alert:
        over_bound = sum(r.errors.get(key, 0.0) for r in window.records.values())
        under_bound = sum(r.floor for r in window.records.values() if key not in r.values)
        who = f"{rule.key} {key}"
        span = f"{_duration(rule.window_seconds)} window"
        subject = f"{_SUBJECT[rule.metric]} of {who}"
        limit = f"budget {_format(rule.metric, rule.threshold)}"
        if state == "firing":
            message = f"{subject} is {_format(rule.metric, value)} ({limit}) in the {span}"
        else:
            message = f"resolved: {subject} was {_format(rule.metric, value)} ({limit}); its {span} is over"
        labels = {
            "type": "budget",
            "metric": rule.metric,
            "key": rule.key,
            f"{rule.key}_id": key,
            "partitions": str(len(window.records)),
            "overcount_bound": f"{over_bound:g}",
            "undercount_bound": f"{under_bound:g}",
        }
        return Alert(
            fired_at=now_ms,
            rule=rule.name,
            service="*",
            severity=rule.severity,
            value=value,
            threshold=rule.threshold,
            state=state,
            message=message,
            window_start=window.window_start,
            window_seconds=window.window_seconds,
            labels=labels,
            user_id=key if rule.key == "user" else "",
            session_id=key if rule.key == "session" else "",
        )

    def firing(self) -> list[tuple[str, int, str]]:
        """(rule, window_start, key) currently firing."""
        return sorted((w.rule, w.window_start, k) for w in self._windows.values() for k in w.fired)

    # --- snapshots ------------------------------------------------------------------------------------

    def to_state(self) -> bytes:
        return _encoder.encode(
            _State(
                v=_STATE_VERSION,
                fingerprints={name: _encoder.encode(rule) for name, rule in self.rules.items()},
                finished_through=dict(self._finished_through),
                windows=list(self._windows.values()),
                stats=dict(vars(self.stats)),
            )
        )

    @classmethod
    def from_state(cls, rules: Sequence[BudgetRule], data: bytes, **options: Any) -> BudgetMerger:
        """Resume from `to_state`; a rule removed or changed since starts afresh."""
        merger = cls(rules, **options)
        state = _state_decoder.decode(data)
        if state.v != _STATE_VERSION:
            raise ValueError(f"budget merger state version {state.v} is not {_STATE_VERSION}")
        same = {name for name, rule in merger.rules.items() if state.fingerprints.get(name) == _encoder.encode(rule)}
        merger._finished_through = {k: v for k, v in state.finished_through.items() if k in same}
        merger._windows = {(w.rule, w.window_start): w for w in state.windows if w.rule in same}
        merger.stats = BudgetMergerStats(**state.stats)
        return merger
