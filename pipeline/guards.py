"""In-flight guards: rules of type `trace` (pipeline/guard_rules.py) evaluated on each open trace as its
spans arrive, so an agent in a loop is flagged while it is still running, not after its trace is stored.

Public API:
    TraceGuards(rules, replay_floor=0)      one per partition, beside its TraceAssembler (which calls
      .observe(trace, span, offset)          for every new span, after folding it into its trace)
      .take() -> list[Alert]                 the alerts fired since the last take
      .stats -> GuardStats
    GuardState                               what one open trace holds for the rules (`_Trace.guard`)
    GuardPublisher(rules, alerts_out, webhook_url=None)
      .for_partition(replay_floor) -> TraceGuards
      await .publish(alerts)                 onto `tracehouse.alerts` (the sink stores them in `alerts`)
                                             and to the webhook; never blocks on the webhook
      await .close()
    build_guards(alerts_out=..., rules=None) -> GuardPublisher | None    the worker's, from its settings

How it fires: at most once per trace and rule, while the worker processes the span that breaches it (the
worker's own batch, so well within a second of the span reaching Kafka), with the trace's id, user and
session. Cost: nothing per span when no trace rule is configured (the assembler skips the call); with the
built-in loop guard, a counter per distinct (tool, input) of TOOL spans, about 0.2 µs per span; with a rule
of every metric, about 2.4 µs (TraceAssembler.add alone, median of 5 interleaved runs on 60,000 spans;
`tests/benchmarks/pipeline_throughput.py --guards off --guards loop --guards all` for the worker's
whole path). Memory per open trace: the counters, a map entry per distinct tool call, and, only when a depth
or retry rule is configured, two map entries per span (dropped when the trace is emitted).

After a restart: the worker rebuilds open traces by replaying their spans (pipeline/checkpoint.py). A
breach at an offset below the partition's checkpoint (`replay_floor`: its alert was published before
that checkpoint was written) is marked as fired and not published again; a breach after the checkpoint,
and before the crash, fires again (at most one checkpoint interval of them). The `alerts` table keeps one
row all the same: its key holds the trace id, and the repeat has the same rule, service and trace start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from tracehouse.core import settings
from tracehouse.core.alerts import TRACE_RULE_WINDOW, Alert, encode_alerts
from tracehouse.pipeline.alert_notify import WebhookNotifier
from tracehouse.pipeline.guard_rules import TraceRule, load_trace_rules
from tracehouse.pipeline.span_view import AnySpan

log = logging.getLogger("tracehouse.worker")

MAX_DEPTH_WALK = 1_000  # a walk up the parents stops here (a cycle of parent ids must not hang the worker)


@dataclass
class GuardStats:
    fired: int = 0
    not_refired: int = 0  # breaches found again while replaying below the checkpoint


class GuardState:
    """One open trace's running values for the trace rules: a few counters, and maps only for the
    metrics a configured rule needs."""

    __slots__ = ("below", "depth", "errored", "fired", "llm_calls", "parent", "retries", "tool_calls")

    def __init__(self) -> None:
        self.fired = 0  # bit i: rule i has fired for this trace
        self.llm_calls = 0
        self.tool_calls: dict[int, int] | None = None  # hash of (tool name, input) -> calls
        self.parent: dict[int, int] | None = None  # span -> parent, of the spans seen
        self.below: dict[int, int] | None = None  # span (seen or not) -> longest chain of seen spans under it
        self.depth = 0
        self.errored: dict[str, int] | None = None  # span name -> end of its first span in error (ns)
        self.retries: dict[str, int] | None = None  # span name -> spans of it started after that error

    def trim(self) -> None:
        """Drop the span maps once the trace is emitted (a late span then counts from what it links to)."""
        self.parent = self.below = None


class TraceGuards:
    """Evaluates the trace rules on one partition's open traces."""

    def __init__(self, rules: list[TraceRule], replay_floor: int = 0) -> None:
        self.rules = rules
        self.replay_floor = replay_floor
        self.stats = GuardStats()
        self._fired: list[Alert] = []
        indexed = list(enumerate(rules))
        self._by_metric = {m: [(i, r) for i, r in indexed if r.metric == m] for m in {r.metric for r in rules}}
        self._llm = self._by_metric.get("llm_calls")
        self._tokens = self._by_metric.get("total_tokens")
        self._cost = self._by_metric.get("cost_usd")
        self._tools = self._by_metric.get("tool_repeats")
        self._depth = self._by_metric.get("depth")
        self._retries = self._by_metric.get("retries_after_error")

    def observe(self, trace: Any, span: AnySpan, offset: int) -> None:
        """Update the trace's values with one new span and fire the rules it breaches. `trace` is the
        assembler's `_Trace` (its running totals are already updated with this span). Its GuardState is
        made only when a rule needs a counter or fires: with the loop guard alone, only traces with a
        tool call have one."""
        if self._cost is not None:
            self._check(self._cost, trace, span, offset, trace.cost, "")
        if self._tokens is not None:
            self._check(self._tokens, trace, span, offset, trace.total_tokens, "")
        kind = span.kind
        if kind == "TOOL":
            if self._tools is not None:
                state = trace.guard or _new_state(trace)
                calls = state.tool_calls
                if calls is None:
                    calls = state.tool_calls = {}
                key = hash((span.name, span.input))
                count = calls[key] = calls.get(key, 0) + 1
                self._check(self._tools, trace, span, offset, count, span.name)
        elif kind == "LLM" and self._llm is not None:
            state = trace.guard or _new_state(trace)
            state.llm_calls += 1
            self._check(self._llm, trace, span, offset, state.llm_calls, "")
        if self._depth is not None:
            depth = self._chain_through(trace.guard or _new_state(trace), span)
            self._check(self._depth, trace, span, offset, depth, "")
        if self._retries is not None:
            self._count_retry(trace.guard or _new_state(trace), trace, span, offset)

    def _count_retry(self, state: GuardState, trace: Any, span: AnySpan, offset: int) -> None:
        name = span.name
        errored = state.errored
        if errored is not None:
            failed_at = errored.get(name)
            if failed_at is not None and span.start_time_ns >= failed_at:
                retries = state.retries
                if retries is None:
                    retries = state.retries = {}
                count = retries[name] = retries.get(name, 0) + 1
                self._check(self._retries or [], trace, span, offset, count, name)
        if span.status == "ERROR":
            if errored is None:
                errored = state.errored = {}
            errored.setdefault(name, span.end_time_ns)

    @staticmethod
    def _chain_through(state: GuardState, span: AnySpan) -> int:
        """The trace's depth so far: the longest chain of seen spans, which, if it grew, runs through this
        span. Spans arrive as they end (children before parents), so a chain is measured both ways: how
        many seen ancestors the span has (walking up), and the longest chain of seen descendants under it
        (`below`, which the walk updates for every ancestor on the way). O(depth) per span."""
        parent_of = state.parent
        below = state.below
        if parent_of is None or below is None:
            parent_of = state.parent = {}
            below = state.below = {}
        key = int(span.span_id, 16)
        parent = span.parent_span_id
        parent_key = int(parent, 16) if parent else 0
        parent_of[key] = parent_key
        down = 1 + below.get(key, 0)
        up = 1
        node, chain_down = parent_key, down
        for _ in range(MAX_DEPTH_WALK):
            if not node:
                break
            if below.get(node, 0) < chain_down:
                below[node] = chain_down
            next_node = parent_of.get(node)
            if next_node is None:  # not seen yet: the chain above it is unknown
                break
            up += 1
            chain_down = 1 + below[node]
            node = next_node
        depth = up + down - 1
        if depth > state.depth:
            state.depth = depth
        return state.depth

    def _check(
        self,
        rules: list[tuple[int, TraceRule]],
        trace: Any,
        span: AnySpan,
        offset: int,
        value: float,
        subject: str,
    ) -> None:
        for index, rule in rules:
            if not rule.breached(value) or not rule.matches(span.service):
                continue
            state = trace.guard or _new_state(trace)
            bit = 1 << index
            if state.fired & bit:
                continue
            state.fired |= bit
            if offset < self.replay_floor:
                self.stats.not_refired += 1
                continue
            self.stats.fired += 1
            self._fired.append(_alert(rule, trace, span, value, subject))

    def take(self) -> list[Alert]:
        fired, self._fired = self._fired, []
        return fired

    @property
    def pending(self) -> bool:
        return bool(self._fired)


def _new_state(trace: Any) -> GuardState:
    state = trace.guard = GuardState()
    return state


_DESCRIBE = {
    "llm_calls": "{value:g} LLM calls",
    "total_tokens": "{value:g} tokens",
    "cost_usd": "cost ${value:.4f}",
    "tool_repeats": "tool {subject!r} called {value:g} times with the same input",
    "depth": "span depth {value:g}",
    "retries_after_error": "{value:g} retries of {subject!r} after an error",
}


def _alert(rule: TraceRule, trace: Any, span: AnySpan, value: float, subject: str) -> Alert:
    what = _DESCRIBE[rule.metric].format(value=value, subject=subject)
    labels = {"type": "trace", "metric": rule.metric, "span_id": span.span_id, "span_name": span.name}
    if subject:
        labels["subject"] = subject
    return Alert(
        fired_at=time.time_ns() // 1_000_000,
        rule=rule.name,
        service=span.service,
        severity=rule.severity,
        value=float(value),
        threshold=rule.threshold,
        state="firing",
        message=f"trace {trace.trace_id}: {what} (rule: {rule.metric} {rule.comparison} {rule.threshold:g})",
        window_start=trace.start // 1_000_000_000,
        window_seconds=TRACE_RULE_WINDOW,
        labels=labels,
        trace_id=trace.trace_id,
        user_id=trace.user_id,
        session_id=trace.session_id,
    )


class GuardPublisher:
    """Where guard alerts go: `tracehouse.alerts` (as the merger's window alerts), a log line, the webhook."""

    def __init__(self, rules: list[TraceRule], alerts_out: Any, webhook_url: str | None = None) -> None:
        self.rules = rules
        self.alerts_out = alerts_out
        self.webhook = WebhookNotifier(webhook_url) if webhook_url else None

    def for_partition(self, replay_floor: int) -> TraceGuards | None:
        return TraceGuards(self.rules, replay_floor) if self.rules else None

    async def publish(self, alerts: list[Alert]) -> None:
        await self.alerts_out.send(value=encode_alerts(alerts))
        for alert in alerts:
            log.warning("guard %s: %s", alert.rule, alert.message)
            if self.webhook is not None:
                self.webhook.notify(alert)

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()


def build_guards(*, alerts_out: Any, rules: list[TraceRule] | None = None) -> GuardPublisher | None:
    """The worker's guards: the trace rules of `TRACEHOUSE_ALERT_RULES` (or the built-in loop guard), told
    to `TRACEHOUSE_ALERT_WEBHOOK` like the window alerts; None when there is no trace rule."""
    rules = load_trace_rules() if rules is None else rules
    if not rules:
        return None
    return GuardPublisher(rules, alerts_out, settings.get(settings.ALERT_WEBHOOK))
