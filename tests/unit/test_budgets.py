"""Budgets per user and per session without Kafka: the space-saving bound, the rule parsing, the
partitions' sums and the merger's fire-once / resolve-once, and checkpoints that neither lose nor
double count."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import msgspec
import pytest

from tracehouse.core.rollups import BudgetPartialRecord, RollupPartialBatch, decode_partial_batch, encode_partials
from tracehouse.core.schema import LLMCall, Span, TokenUsage, encode_batch
from tracehouse.pipeline.alert_rules import parse_rules
from tracehouse.pipeline.budgets import PartitionBudgets, SpaceSaving
from tracehouse.pipeline.budgets_merge import BudgetMerger
from tracehouse.pipeline.budgets_rules import BudgetRule, BudgetRuleError, load_budget_rules, parse_budget_rules
from tracehouse.pipeline.guard_rules import parse_trace_rules
from tracehouse.pipeline.partition_windows import PartitionWindows, WindowOptions, windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor

T0_S = 1_790_000_000 // 60 * 60  # a minute boundary
_ids = itertools.count(1)

RULES = """
[[rules]]
name = "user-cost"
type = "budget"
key = "user"
metric = "cost_usd"
window_seconds = 60
threshold = 1.0
severity = "critical"

[[rules]]
name = "session-calls"
type = "budget"
key = "session"
metric = "llm_calls"
window_seconds = 60
threshold = 3

[[rules]]
name = "p95"
metric = "latency_p95_ms"
window_seconds = 60
comparison = ">"
threshold = 5000
"""


def span(*, trace: str = "4bf92f3577b34da6a3ce929d0e0e4736", at_s: float = 1.0, user: str = "", session: str = "",
         kind: str = "LLM", tokens: int = 10) -> Span:  # fmt: skip
    end = int((T0_S + at_s) * 1e9)
    return Span(
        trace_id=trace,
        span_id=f"{next(_ids):016x}",
        parent_span_id="",
        name="call",
        kind=kind,  # type: ignore[arg-type]
        service="bot",
        start_time_ns=end - 5_000_000,
        end_time_ns=end,
        llm=LLMCall(model="gpt-4o-mini") if kind == "LLM" else None,
        usage=TokenUsage(input=tokens, output=0),
        user_id=user,
        session_id=session,
    )


# --- the space-saving summary ---------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 8, 50])
def test_space_saving_keeps_at_most_k_keys_and_bounds_every_key(capacity: int) -> None:
    rng = random.Random(capacity)
    truth: dict[str, float] = {}
    summary = SpaceSaving(capacity)
    for _ in range(5_000):
        key = f"user-{int(rng.paretovariate(1.2))}"  # heavy-tailed: a few big users, many small ones
        weight = rng.random()
        truth[key] = truth.get(key, 0.0) + weight
        summary.add(key, weight)
        assert len(summary.values) <= capacity
    floor = summary.floor
    assert floor == min(summary.values.values())
    for key, true in truth.items():
        if key in summary.values:  # monitored: overcounted by at most its error, which is at most the floor
            error = summary.errors.get(key, 0.0)
            assert summary.values[key] - error - 1e-9 <= true <= summary.values[key] + 1e-9
            assert error <= floor + 1e-9
        else:  # forgotten: it summed at most the floor
            assert true <= floor + 1e-9
    assert summary.updates == 5_000


def test_space_saving_is_exact_below_capacity() -> None:
    summary = SpaceSaving(3)
    for key, weight in [("a", 1.0), ("b", 2.0), ("a", 0.5), ("c", 4.0)]:
        summary.add(key, weight)
    assert summary.values == {"a": 1.5, "b": 2.0, "c": 4.0} and summary.errors == {} and summary.floor == 1.5
    summary.add("d", 1.0)  # full: "a" (the smallest) is evicted, "d" starts from its 1.5
    assert summary.values == {"b": 2.0, "c": 4.0, "d": 2.5} and summary.errors == {"d": 1.5}


# --- the rules ----------------------------------------------------------------------------------------


def test_budget_rules_parse_and_the_other_parsers_skip_them() -> None:
    rules = parse_budget_rules(RULES)
    assert rules == [
        BudgetRule(name="user-cost", key="user", metric="cost_usd", window_seconds=60, threshold=1.0,
                   severity="critical"),
        BudgetRule(name="session-calls", key="session", metric="llm_calls", window_seconds=60, threshold=3.0),
    ]  # fmt: skip
    assert rules[0].capacity == 1000
    assert [r.name for r in parse_rules(RULES)] == ["p95"]
    assert parse_trace_rules(RULES) == []


def test_there_are_no_budget_rules_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACEHOUSE_ALERT_RULES", raising=False)
    assert load_budget_rules() == []
    assert windows_factory()(0, None).budgets is None


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"key": "tenant"}, "key", "must be one of user, session"),
        ({"metric": "latency"}, "metric", "'latency' is not one of cost_usd, llm_calls, total_tokens"),
        ({"window_seconds": 0}, "window_seconds", "must be a positive integer"),
        ({"window_seconds": 1.5}, "window_seconds", "must be a positive integer"),
        ({"threshold": "5"}, "threshold", "must be a number"),
        ({"severity": "loud"}, "severity", "must be one of"),
        ({"capacity": 0}, "capacity", "must be a positive integer"),
        ({"group_by": ["service"]}, "group_by", "unknown field"),
        ({"key": None}, "key", "required"),
    ],
)
def test_an_invalid_budget_rule_names_the_rule_and_the_field(change: dict[str, Any], field: str, problem: str) -> None:
    table: dict[str, Any] = {"name": "b", "type": "budget", "key": "user", "metric": "cost_usd",
                             "window_seconds": 3600, "threshold": 5}  # fmt: skip
    table.update(change)
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(BudgetRuleError, match=rf"rule 'b': field '{field}': {problem}"):
        parse_budget_rules({"rules": [table]}, source="rules.toml")


def test_two_rules_with_one_name_are_refused() -> None:
    twice = RULES.replace('name = "p95"', 'name = "user-cost"')
    with pytest.raises(BudgetRuleError, match="rule 'user-cost': field 'name': used by two rules"):
        parse_budget_rules(twice)


# --- partitions and merger ------------------------------------------------------------------------------


def _sums(budgets: PartitionBudgets, now_s: float) -> list[BudgetPartialRecord]:
    return budgets.due(now_s, quiet_for_s=0.0)


def test_a_user_over_budget_on_two_partitions_fires_once_and_resolves_once() -> None:
    rules = [r for r in parse_budget_rules(RULES) if r.name == "user-cost"]
    p0, p1 = PartitionBudgets(rules, 0), PartitionBudgets(rules, 1)
    merger = BudgetMerger(rules, close_delay_s=11.2)
    for i in range(3):  # alice: $0.60 on partition 0 and $0.30 on partition 1, $0.90 in all
        p0.add(span(at_s=1 + i), 0.20, "alice", "s1")
        p1.add(span(at_s=2 + i), 0.10, "alice", "s2")
        p1.add(span(at_s=2 + i), 0.10, "bob", "s2")
    p0.add(span(at_s=5), 0.05, "", "")  # no user: counted for no one
    records = _sums(p0, T0_S + 10) + _sums(p1, T0_S + 10)
    for record in records:
        assert merger.add(record)
    assert not merger.add(records[0])  # the same cumulative record twice: ignored
    assert merger.evaluate(T0_S + 10) == []  # under the $1 budget
    p1.add(span(at_s=8), 0.25, "alice", "s2")
    p1.add(span(at_s=9, kind="CHAIN"), 0.0, "alice", "s2")
    for record in _sums(p1, T0_S + 11):
        merger.add(record)
    [fired] = merger.evaluate(T0_S + 11)
    assert (fired.rule, fired.state, fired.user_id, fired.session_id) == ("user-cost", "firing", "alice", "")
    assert fired.value == pytest.approx(1.15) and fired.threshold == 1.0 and fired.severity == "critical"
    assert fired.labels["user_id"] == "alice" and "user alice" in fired.message
    assert (fired.window_start, fired.window_seconds, fired.service) == (T0_S, 60, "*")
    assert merger.evaluate(T0_S + 12) == []  # still over: no second firing
    # the window closes on both partitions (grace 10 s) and is over at the merger 11.2 s after its end
    for record in _sums(p0, T0_S + 71) + _sums(p1, T0_S + 71):
        merger.add(record)
    assert merger.evaluate(T0_S + 71) == []
    [resolved] = merger.evaluate(T0_S + 71.3)
    assert (resolved.rule, resolved.state, resolved.user_id) == ("user-cost", "resolved", "alice")
    assert merger.evaluate(T0_S + 200) == [] and merger.firing() == []
    assert not merger.add(records[0])  # a record of a resolved window: too late
    assert merger.stats.fired == 1 and merger.stats.resolved == 1


def test_session_llm_calls_and_the_bounds_in_the_labels() -> None:
    rules = [r for r in parse_budget_rules(RULES) if r.name == "session-calls"]
    budgets, merger = PartitionBudgets(rules, 0), BudgetMerger(rules)
    for i in range(4):
        budgets.add(span(at_s=i + 1), 0.0, "alice", "sess-9")
    budgets.add(span(at_s=5, kind="TOOL"), 0.0, "alice", "sess-9")  # not an LLM call
    for record in _sums(budgets, T0_S + 6):
        merger.add(record)
    [alert] = merger.evaluate(T0_S + 6)
    assert (alert.session_id, alert.user_id, alert.value) == ("sess-9", "", 4.0)
    assert alert.labels["overcount_bound"] == "0" and alert.labels["undercount_bound"] == "0"


def test_the_partials_batch_carries_budgets_and_old_batches_still_decode() -> None:
    record = BudgetPartialRecord(rule="r", window_start=60, window_seconds=60, partition=3, updates=2,
                                 values={"alice": 1.5})  # fmt: skip
    assert decode_partial_batch(encode_partials([], budgets=[record])).budgets == [record]
    old = msgspec.msgpack.encode({"partials": [], "v": 1, "scores": []})
    assert decode_partial_batch(old) == RollupPartialBatch(partials=[], scores=[], budgets=[])


# --- checkpoints ------------------------------------------------------------------------------------


def test_a_restored_partition_neither_loses_nor_double_counts() -> None:
    rules = parse_budget_rules(RULES)
    budgets = PartitionBudgets(rules, 0)
    budgets.add(span(at_s=1), 0.5, "alice", "")
    saved = budgets.to_state()
    budgets.add(span(at_s=2), 0.4, "alice", "")  # after the checkpoint: replayed on restart
    restored = PartitionBudgets(rules, 0, state=saved)
    restored.add(span(at_s=2), 0.4, "alice", "")
    [before] = [r for r in _sums(budgets, T0_S + 3) if r.rule == "user-cost"]
    [after] = [r for r in _sums(restored, T0_S + 3) if r.rule == "user-cost"]
    assert after.values == pytest.approx({"alice": 0.9}) and after.updates == before.updates == 2
    changed = [BudgetRule(name="user-cost", key="user", metric="cost_usd", window_seconds=60, threshold=9)]
    assert PartitionBudgets(changed, 0, state=saved).keys_held == 0  # a changed rule starts afresh


def test_the_merger_resumes_firing_state_from_its_checkpoint() -> None:
    rules = parse_budget_rules(RULES)
    budgets, merger = PartitionBudgets(rules, 0), BudgetMerger(rules)
    budgets.add(span(at_s=1), 2.0, "alice", "")
    for record in _sums(budgets, T0_S + 2):
        merger.add(record)
    assert [a.state for a in merger.evaluate(T0_S + 2)] == ["firing"]
    resumed = BudgetMerger.from_state(rules, merger.to_state())
    for record in _sums(PartitionBudgets(rules, 0, state=budgets.to_state()), T0_S + 3):  # re-sent
        resumed.add(record)
    assert resumed.evaluate(T0_S + 3) == []  # not a second firing
    assert [a.state for a in resumed.evaluate(T0_S + 80)] == ["resolved"]


def test_partition_windows_checkpoint_holds_the_budgets_and_old_snapshots_decode() -> None:
    rules = parse_budget_rules(RULES)
    windows = PartitionWindows(0, WindowOptions(), None, rules)
    assert windows.budgets is not None
    windows.budgets.add(span(at_s=1), 0.5, "alice", "")
    restored = PartitionWindows(0, WindowOptions(), windows.to_state(), rules)
    assert restored.budgets is not None and restored.budgets.keys_held == 1
    old = PartitionWindows(0, WindowOptions()).to_state()  # written without budget rules
    assert PartitionWindows(0, WindowOptions(), old, rules).budgets.keys_held == 0  # type: ignore[union-attr]


# --- the processor ----------------------------------------------------------------------------------------


class _Sent:
    def __init__(self) -> None:
        self.values: list[Any] = []

    async def send(self, *, key: Any = None, value: Any = None, partition: int | None = None) -> None:
        self.values.append(value)


def test_the_processor_keys_a_span_by_its_trace_user_and_sends_the_sums() -> None:
    partials = _Sent()
    processor = SpanProcessor(
        traces_out=_Sent(),
        partials_out=partials,
        dlq_out=_Sent(),
        windows_factory=windows_factory(budget_rules=parse_budget_rules(RULES)),
        options=ProcessorOptions(checkpoint_interval_s=3600),
    )
    processor.attach(None, None)
    state = processor._partition(0, None, 0)
    first = span(at_s=1, user="alice", session="s1")
    second = span(at_s=2)  # same trace, no user of its own: its trace's
    asyncio.run(processor.on_message(state, 0, encode_batch([first, second])))
    asyncio.run(processor.on_tick())
    budgets = [r for value in partials.values for r in decode_partial_batch(value).budgets]
    calls = {r.rule: r.values for r in budgets}
    assert calls["session-calls"] == {"s1": 2}
