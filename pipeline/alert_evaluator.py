"""Real-time alerts from final rollups: the rule evaluator.

Public API:
    AlertEvaluator(rules, *, base_windows=(10, 60), max_future_seconds=300)
      .process(rollups, now_ms=None, *, scores=()) -> list[Alert]   each batch of final rollups (merger.due()),
                                                      with the score rollups of the same tick
      .to_state() -> bytes / AlertEvaluator.from_state(rules, data, **options)
      .stats -> EvaluatorStats

The record it returns (Alert) is in core/alerts.py; the rules are pipeline/alert_rules.py; telling people
(the webhook) is pipeline/alert_notify.py.

Evaluation works on rollups, not spans, so it costs nothing per span and sees every partition's data:
a rule is evaluated at each new rollup window of its base size (see alert_rules), over the rule's
window (the last N base windows, sketches merged, sums added), separately for each group of its
`group_by` fields. Each (rule, group) is a small state machine: it fires once when the condition has
held for `for_windows` consecutive evaluations and resolves once after `resolve_windows` good ones —
no alert storm, no repeated 'firing' while it stays bad. Windows with fewer than `min_count` spans give
no verdict and count as good (so an alert on a service that went quiet resolves).

Order and revisions: rollups may arrive in any order. A window older than the rule's last evaluated one
only feeds later sliding evaluations. A revised rollup of the last evaluated window (late data) is
re-evaluated, but it can only turn that evaluation from good to bad: it never re-fires a firing alert,
and never resolves one. Feed the rollups of a window together (one `merger.due()` result per call):
evaluating half a window's groups could judge a service on part of its traffic.

`fired_at` is epoch milliseconds (int), taken from `now_ms` (default: the wall clock); `window_start`
is the epoch second at which the rule's evaluated window begins. Rollups of windows starting more than
`max_future_seconds` after `now_ms` (a producer's clock far ahead) are ignored: evaluating them would
move the rules' clock past every real window to come.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tracehouse.core.alerts import Alert
from tracehouse.core.rollups import Rollup, RollupKey, ScoreRollup, score_value_key
from tracehouse.core.sketch import LatencySketch
from tracehouse.pipeline.alert_rules import BASE_WINDOWS, GROUP_FIELDS, Rule

_STATE_VERSION = 1
_QUANTILE = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}
_SUBJECT = {
    "latency_p50_ms": "p50 latency",
    "latency_p95_ms": "p95 latency",
    "latency_p99_ms": "p99 latency",
    "error_rate": "error rate",
    "rate_limit_count": "rate-limit count",
    "error_count": "error count",
    "cost_usd": "cost",
    "count": "span count",
    "cost_per_hour_usd": "cost per hour",
    "score_avg": "average",
    "score_count": "count",
}
_GLOB_CHARS = frozenset("*?[")


def _format_value(metric: str, value: float) -> str:
    if metric.startswith("latency_"):
        return f"{value:,.0f} ms"
    if metric == "error_rate":
        return f"{value * 100:.1f}%"
    if metric == "cost_usd":
        return f"${value:,.2f}"
    if metric == "cost_per_hour_usd":
        return f"${value:,.2f}/h"
    if metric == "score_avg":
        return f"{value:,.3g}"
    return f"{value:,.0f}"


def _format_duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _is_exact(pattern: str) -> bool:
    return not (_GLOB_CHARS & set(pattern))


def _describe(rule: Rule, group: dict[str, str]) -> tuple[str, str]:
    """("LLM spans (model gpt-4o)", "in support-bot") for a rule and one of its groups."""
    values = {f: p for f, p in rule.filters.items() if _is_exact(p)}
    values.update(group)
    if rule.on_scores:  # ("user_feedback scores (model gpt-4o)", "in support-bot")
        what = f"{values.get('name', rule.score)}"
        if rule.score_label:
            what += f" = {rule.score_label}"
        elif rule.score_value is not None:
            what += f" = {rule.score_value:g}"
        what += " scores" + (f" (model {values['model']})" if "model" in values else "")
        return what, f"in {values['service']}" if "service" in values else "in all services"
    what = f"{values['kind']} spans" if "kind" in values else "spans"
    details = [f"{field} {values[field]}" for field in ("name", "model") if field in values]
    if details:
        what += f" ({', '.join(details)})"
    where = f"in {values['service']}" if "service" in values else "in all services"
    return what, where


# --- evaluation -----------------------------------------------------------------------------------------


class _Row:
    """A stored rollup (a span or a score rollup) and, once needed, its decoded sketch."""

    __slots__ = ("rollup", "sketch")

    def __init__(self, rollup: Any) -> None:
        self.rollup = rollup
        self.sketch: LatencySketch | None = None

    def get_sketch(self) -> LatencySketch:
        if self.sketch is None:
            self.sketch = self.rollup.sketch()
        return self.sketch


class _Totals:
    __slots__ = ("cost", "count", "errors", "matched", "rate_limits", "sketch", "value_count", "value_sum")

    def __init__(self) -> None:
        self.matched = 0  # score rules: the scores with the rule's value or label (all without one)
        self.value_count = 0
        self.value_sum = 0.0
        self.count = 0
        self.errors = 0
        self.rate_limits = 0
        self.cost = 0.0
        self.sketch: LatencySketch | None = None


class _GroupState(msgspec.Struct):
    """One (rule, group)'s state machine."""

    last_point: int  # window_start of the last base window evaluated
    firing: bool = False
    bad_streak: int = 0
    good_streak: int = 0
    last_bad: bool = False
    before_bad: int = 0  # bad_streak before the last evaluation (to redo it on a revision)
    changed_at_last: bool = False  # the last evaluation fired or resolved


class _RuleState:
    __slots__ = ("groups", "known", "last_point")

    def __init__(self) -> None:
        self.last_point = -1
        self.groups: dict[tuple[str, ...], _GroupState] = {}
        # "<" rules only: groups seen lately (-> last window seen), so one that goes silent is still
        # evaluated (its count falls to zero) instead of vanishing from view
        self.known: dict[tuple[str, ...], int] = {}


_KNOWN_FOR_SECONDS = 3600  # how long a "<" rule keeps evaluating a group it no longer sees


def _pinned_group(rule: Rule) -> tuple[str, ...] | None:
    """The one group a rule can have when exact filters fix every group_by field (e.g. one service):
    always evaluated, so "traffic stopped" fires even for a service not seen since a restart."""
    if rule.comparison != "<" or not all(f in rule.filters and _is_exact(rule.filters[f]) for f in rule.group_by):
        return None
    return tuple(rule.filters[f] for f in rule.group_by)


class _GroupWire(msgspec.Struct, array_like=True):
    key: list[str]
    state: _GroupState


class _RuleWire(msgspec.Struct):
    name: str
    fingerprint: bytes  # the rule as it was: a changed rule starts afresh
    last_point: int
    groups: list[_GroupWire]
    known: list[tuple[list[str], int]] = []


class _EvaluatorState(msgspec.Struct):
    v: int
    rules: list[_RuleWire]
    rollups: list[Rollup]
    score_rollups: list[ScoreRollup] = []


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(_EvaluatorState)


@dataclass
class EvaluatorStats:
    rollups: int = 0
    ignored: int = 0  # no rule uses their window size, or older than any rule looks back
    future: int = 0  # window starts more than max_future_seconds after now: ignored
    evaluations: int = 0
    fired: int = 0
    resolved: int = 0


class AlertEvaluator:
    """Evaluates rules over final rollups; returns the alerts that fire or resolve."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        base_windows: Sequence[int] = BASE_WINDOWS,
        max_future_seconds: float = 300.0,
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        for rule in rules:
            if rule.base_seconds not in base_windows:
                raise ValueError(f"rule {rule.name!r} needs {rule.base_seconds}-second rollups")
        self.rules = list(rules)
        self.base_windows = tuple(base_windows)
        self.max_future_seconds = max_future_seconds
        self.stats = EvaluatorStats()
        self._states = {r.name: _RuleState() for r in self.rules}
        # how far back each base size must be kept: the longest rule window using it
        self._span: dict[int, int] = {}
        for rule in self.rules:
            self._span[rule.base_seconds] = max(self._span.get(rule.base_seconds, 0), rule.window_seconds)
        self._data: dict[int, dict[int, dict[RollupKey, _Row]]] = {base: {} for base in self._span}
        # score rollups, keyed (service, "", score name, model) so that group_by and filters read as for spans
        self._score_data: dict[int, dict[int, dict[RollupKey, _Row]]] = {base: {} for base in self._span}
        self._latest: dict[int, int] = {}
        self._match_cache: dict[tuple[str, RollupKey], bool] = {}

    def _matches(self, rule: Rule, key: RollupKey) -> bool:
        cache_key = (rule.name, key)
        hit = self._match_cache.get(cache_key)
        if hit is None:
            if len(self._match_cache) > 100_000:
                self._match_cache.clear()
            hit = self._match_cache[cache_key] = rule.matches(*key)
        return hit

    def _store(self, rollup: Rollup | ScoreRollup) -> bool:
        """Keep a rollup some rule may need; True when its window is one rules evaluate at (even when
        no rule wants this group: time has passed for every group, quiet ones included)."""
        base = rollup.window_seconds
        on_scores = isinstance(rollup, ScoreRollup)
        windows = (self._score_data if on_scores else self._data).get(base)
        if windows is None:
            return False
        latest = self._latest.get(base)
        if latest is not None and rollup.window_start <= latest - self._span[base]:
            return False
        if latest is None or rollup.window_start > latest:
            self._latest[base] = rollup.window_start
        kind = "" if isinstance(rollup, ScoreRollup) else rollup.kind
        key = RollupKey(rollup.service, kind, rollup.name, rollup.model)
        if any(self._matches(r, key) for r in self.rules if r.base_seconds == base and r.on_scores == on_scores):
            windows.setdefault(rollup.window_start, {})[key] = _Row(rollup)  # a revision replaces its row
        return True

    def _prune(self) -> None:
        for data in (self._data, self._score_data):
            for base, windows in data.items():
                latest = self._latest.get(base)
                if latest is None:
                    continue
                for start in [s for s in windows if s <= latest - self._span[base]]:
                    del windows[start]

    def process(
        self, rollups: Iterable[Rollup], now_ms: int | None = None, *, scores: Iterable[ScoreRollup] = ()
    ) -> list[Alert]:
        """Take a batch of final rollups (new or revised), and the score rollups of the same windows, and
        return the alerts that change state."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        points: dict[int, set[int]] = {}
        future_limit = now_ms / 1000 + self.max_future_seconds
        for rollup in itertools.chain(rollups, scores):
            self.stats.rollups += 1
            if rollup.window_start > future_limit:
                self.stats.future += 1
            elif self._store(rollup):
                points.setdefault(rollup.window_seconds, set()).add(rollup.window_start)
            else:
                self.stats.ignored += 1
        out: list[Alert] = []
        for rule in self.rules:
            state = self._states[rule.name]
            for point in sorted(points.get(rule.base_seconds, ())):
                if point < state.last_point:
                    continue  # an old window: it only feeds later sliding evaluations
                self._evaluate(rule, state, point, now_ms, out)
                state.last_point = point
        self._prune()
        return out

    def _totals(self, rule: Rule, point: int) -> dict[tuple[str, ...], _Totals]:
        """The rule's aggregates per group over the base windows its window covers, ending at `point`."""
        base = rule.base_seconds
        on_scores = rule.on_scores
        windows = (self._score_data if on_scores else self._data)[base]
        quantile = rule.metric in _QUANTILE
        value_key = score_value_key(rule.score_value) if rule.score_value is not None else None
        fields = [GROUP_FIELDS.index(f) for f in rule.group_by]
        totals: dict[tuple[str, ...], _Totals] = {}
        for start in range(point - (rule.windows - 1) * base, point + base, base):
            rows = windows.get(start)
            if not rows:
                continue
            for key, row in rows.items():
                if not self._matches(rule, key):
                    continue
                group = tuple(key[i] for i in fields)
                t = totals.get(group)
                if t is None:
                    t = totals[group] = _Totals()
                r = row.rollup
                t.count += r.count
                if on_scores:
                    t.value_count += r.value_count
                    t.value_sum += r.value_sum
                    if rule.score_label:
                        t.matched += r.label_counts.get(rule.score_label, 0)
                    elif value_key is not None:
                        t.matched += r.value_counts.get(value_key, 0)
                    else:
                        t.matched += r.count
                    continue
                t.errors += r.error_count
                t.rate_limits += r.rate_limit_count
                t.cost += r.cost_usd
                if quantile:
                    if t.sketch is None:
                        t.sketch = LatencySketch()
                    t.sketch.merge(row.get_sketch())
        return totals

    def _value(self, rule: Rule, t: _Totals | None) -> tuple[float, int]:
        if t is None:
            return 0.0, 0
        metric = rule.metric
        if metric in _QUANTILE:
            value = t.sketch.quantile(_QUANTILE[metric]) if t.sketch is not None else 0.0
        elif metric == "error_rate":
            value = t.errors / t.count if t.count else 0.0
        elif metric == "rate_limit_count":
            value = float(t.rate_limits)
        elif metric == "error_count":
            value = float(t.errors)
        elif metric == "cost_usd":
            value = t.cost
        elif metric == "cost_per_hour_usd":
            value = t.cost * 3600.0 / rule.window_seconds
        elif metric == "score_avg":  # judged on the scores that have a value
            return (t.value_sum / t.value_count if t.value_count else 0.0), t.value_count
        elif metric == "score_count":
            value = float(t.matched)
        else:
            value = float(t.count)
        return value, t.count

    def _evaluate(self, rule: Rule, state: _RuleState, point: int, now_ms: int, out: list[Alert]) -> None:
        totals = self._totals(rule, point)
        base = rule.base_seconds
        candidates = set(totals) | set(state.groups)
        if rule.comparison == "<":
            known = state.known
            for group in totals:
                known[group] = point
            for group in [g for g, seen in known.items() if seen < point - _KNOWN_FOR_SECONDS]:
                del known[group]
            if len(known) > 10_000:  # bounded: keep the most recently seen
                for group, _ in sorted(known.items(), key=lambda item: item[1])[: len(known) - 10_000]:
                    del known[group]
            candidates |= set(known)
            pinned = _pinned_group(rule)
            if pinned is not None:
                candidates.add(pinned)
        for group in sorted(candidates):
            self.stats.evaluations += 1
            value, count = self._value(rule, totals.get(group))
            needs_data = rule.metric in _QUANTILE or rule.metric in ("error_rate", "score_avg")
            sufficient = count >= rule.min_count and (count > 0 or not needs_data)
            bad = sufficient and (value > rule.threshold if rule.comparison == ">" else value < rule.threshold)
            st = state.groups.get(group)
            if st is None:
                if not bad:
                    continue  # nothing to remember about a healthy group
                st = state.groups[group] = _GroupState(last_point=point - base)
            if point < st.last_point:
                continue
            if point == st.last_point:  # revised data for the window already evaluated
                if st.firing or st.changed_at_last or st.last_bad or not bad:
                    continue
                st.bad_streak, st.good_streak, st.last_bad = st.before_bad + 1, 0, True
                if st.bad_streak >= rule.for_windows:
                    self._transition(rule, st, group, "firing", value, count, point, now_ms, out)
                continue
            missed = (point - st.last_point) // base - 1
            if missed > 0:  # windows with no rollups at all: no traffic, so not bad
                st.bad_streak = 0
                st.good_streak += missed
            st.before_bad = st.bad_streak
            st.last_point = point
            st.changed_at_last = False
            st.last_bad = bad
            if bad:
                st.bad_streak += 1
                st.good_streak = 0
            else:
                st.good_streak += 1
                st.bad_streak = 0
            if not st.firing and bad and st.bad_streak >= rule.for_windows:
                self._transition(rule, st, group, "firing", value, count, point, now_ms, out)
            elif st.firing and not bad and st.good_streak >= rule.resolve_windows:
                self._transition(rule, st, group, "resolved", value, count, point, now_ms, out)
            if not st.firing and st.bad_streak == 0 and st.before_bad == 0 and not st.changed_at_last:
                del state.groups[group]

    def _transition(
        self,
        rule: Rule,
        st: _GroupState,
        group: tuple[str, ...],
        new_state: str,
        value: float,
        count: int,
        point: int,
        now_ms: int,
        out: list[Alert],
    ) -> None:
        st.firing = new_state == "firing"
        st.changed_at_last = True
        if st.firing:
            self.stats.fired += 1
        else:
            self.stats.resolved += 1
        out.append(self._alert(rule, group, new_state, value, count, point, now_ms))

    def _alert(
        self,
        rule: Rule,
        group: tuple[str, ...],
        state: str,
        value: float,
        count: int,
        point: int,
        now_ms: int,
    ) -> Alert:
        group_values = dict(zip(rule.group_by, group, strict=True))
        what, where = _describe(rule, group_values)
        subject = f"{_SUBJECT[rule.metric]} of {what} {where}"
        over = f"over {_format_duration(rule.window_seconds)}"
        threshold = _format_value(rule.metric, rule.threshold)
        if state == "resolved" and count < max(rule.min_count, 1):
            items = "scores" if rule.on_scores else "spans"
            message = f"resolved: {subject}: too few {items} ({count}, minimum {rule.min_count}) {over}"
        else:
            limit = f"threshold {threshold}" if rule.comparison == ">" else f"threshold: below {threshold}"
            message = f"{subject} is {_format_value(rule.metric, value)} ({limit}) {over}"
            if state == "resolved":
                message = f"resolved: {message}"
        service = group_values.get("service") or rule.filters.get("service", "*")
        if not _is_exact(service):
            service = "*"
        labels = {"metric": rule.metric, "comparison": rule.comparison, "count": str(count)}
        labels.update(group_values)
        labels.update({f"filter.{k}": v for k, v in rule.filters.items()})
        if rule.on_scores:
            labels["score"] = rule.score
            if rule.score_label:
                labels["label"] = rule.score_label
            elif rule.score_value is not None:
                labels["value"] = f"{rule.score_value:g}"
        return Alert(
            fired_at=now_ms,
            rule=rule.name,
            service=service,
            severity=rule.severity,
            value=value,
            threshold=rule.threshold,
            state=state,
            message=message,
            window_start=point - (rule.windows - 1) * rule.base_seconds,
            window_seconds=rule.window_seconds,
            labels=labels,
        )

    def firing(self) -> list[tuple[str, tuple[str, ...]]]:
        """(rule, group) pairs currently firing."""
        return sorted((n, g) for n, s in self._states.items() for g, st in s.groups.items() if st.firing)

    # --- snapshots ------------------------------------------------------------------------------------

    def to_state(self) -> bytes:
        rules = [
            _RuleWire(
                name=rule.name,
                fingerprint=_encoder.encode(rule),
                last_point=self._states[rule.name].last_point,
                groups=[_GroupWire(list(k), s) for k, s in self._states[rule.name].groups.items()],
                known=[(list(k), seen) for k, seen in self._states[rule.name].known.items()],
            )
            for rule in self.rules
        ]
        rollups = [row.rollup for windows in self._data.values() for rows in windows.values() for row in rows.values()]
        score_rollups = [
            row.rollup for windows in self._score_data.values() for rows in windows.values() for row in rows.values()
        ]
        return _encoder.encode(
            _EvaluatorState(v=_STATE_VERSION, rules=rules, rollups=rollups, score_rollups=score_rollups)
        )

    @classmethod
    def from_state(cls, rules: Sequence[Rule], data: bytes, **options: Any) -> AlertEvaluator:
        """Resume from `to_state` (options as for the constructor); a rule that was removed or changed
        since starts afresh."""
        evaluator = cls(rules, **options)
        state = _state_decoder.decode(data)
        if state.v != _STATE_VERSION:
            raise ValueError(f"alert state version {state.v} is not {_STATE_VERSION}")
        by_name = {r.name: r for r in rules}
        for saved in state.rules:
            rule = by_name.get(saved.name)
            if rule is None or _encoder.encode(rule) != saved.fingerprint:
                continue
            rule_state = evaluator._states[rule.name]
            rule_state.last_point = saved.last_point
            rule_state.groups = {tuple(g.key): g.state for g in saved.groups}
            rule_state.known = {tuple(key): seen for key, seen in saved.known}
        for rollup in sorted([*state.rollups, *state.score_rollups], key=lambda r: r.window_start):
            evaluator._store(rollup)
        return evaluator
