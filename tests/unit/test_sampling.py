"""Tail sampling (pipeline/sampling.py): the rules, the deterministic rate, and the worker's processor with
sampling on against the same traffic with it off (every record and window the same; only span storage
follows the decision)."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import msgspec
import pytest

from tracehouse.core.schema import Event, LLMCall, Score, Span, TokenUsage, decode_batch, decode_traces, encode_batch
from tracehouse.pipeline.alert_rules import parse_rules
from tracehouse.pipeline.assembly import TraceAssembler
from tracehouse.pipeline.guard_rules import default_trace_rules
from tracehouse.pipeline.guards import GuardPublisher
from tracehouse.pipeline.partition_windows import PartitionWindows, WindowOptions, windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor
from tracehouse.pipeline.sampling import (
    GroupLatencies,
    PartitionSampler,
    SamplingError,
    SamplingRules,
    SamplingStats,
    encode_kept,
    keep_by_rate,
    load_sampling,
    parse_sampling,
)

T0 = 1_790_000_000_000_000_000
_ids = itertools.count(1)


def make_span(trace: str, *, parent: int = 0, status: str = "OK", **extra: Any) -> Span:
    start = T0 + next(_ids) * 1000
    return Span(
        trace_id=trace,
        span_id=f"{next(_ids):016x}",
        parent_span_id=f"{parent:016x}" if parent else "",
        name="step",
        start_time_ns=start,
        end_time_ns=start + extra.pop("duration_ns", 1_000_000),
        status=status,
        **extra,
    )


def trace_of(rng: random.Random, *, error: bool = False, spans: int = 3) -> list[Span]:
    """A root and `spans - 1` children; with `error`, the last child is in error."""
    trace = f"{rng.getrandbits(128):032x}"
    root = make_span(trace, kind="CHAIN")
    children = [
        make_span(
            trace,
            parent=int(root.span_id, 16),
            kind="LLM",
            status="ERROR" if error and i == spans - 2 else "OK",
            llm=LLMCall(model="gpt-4o-mini", provider="openai"),
            usage=TokenUsage(input=rng.randint(10, 500), output=rng.randint(1, 90)),
        )
        for i in range(spans - 1)
    ]
    return [*children, root]


# ---- rules ------------------------------------------------------------------------------------------------


def test_sampling_rules_share_the_alert_rules_file() -> None:
    text = """
[[rules]]
name = "slow"
metric = "latency_p95_ms"
window_seconds = 60
comparison = ">"
threshold = 5000

[sampling]
latency_ms = 20000
cost_usd = 0.5
rate = 0.05
"""
    assert [r.name for r in parse_rules(text)] == ["slow"]  # the window rules do not refuse the table
    rules = parse_sampling(text)
    assert rules == SamplingRules(latency_ms=20000, cost_usd=0.5, rate=0.05)
    assert parse_sampling("") == SamplingRules()  # no table: the defaults (errors, rate limits, guards, 10 %)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("rate = 1.5", "rate must be between 0 and 1"),
        ("keep_error = true", "unknown field `keep_error`"),
        ('latency_ms = "slow"', "Expected `float | null`, got `str`"),
        ("cost_usd = -1", "cost_usd must not be negative"),
        ("latency_above_quantile = 1.0", "latency_above_quantile must be between 0 and 1"),
        ("latency_min_count = 0", "latency_min_count must be at least 1"),
    ],
)
def test_a_bad_sampling_table_is_named(table: str, expected: str) -> None:
    with pytest.raises(SamplingError, match=expected) as caught:
        parse_sampling(f"[sampling]\n{table}\n", source="alerts.toml")
    assert str(caught.value).startswith("alerts.toml: [sampling]: ")


def test_sampling_is_off_unless_switched_on(tmp_path: Any) -> None:
    rules = tmp_path / "alerts.toml"
    rules.write_text("[sampling]\nrate = 0.25\n")
    env = {"TRACEHOUSE_ALERT_RULES": str(rules)}
    assert load_sampling(env=env) is None
    assert load_sampling(env={**env, "TRACEHOUSE_SAMPLING": "1"}) == SamplingRules(rate=0.25)
    assert load_sampling(env={"TRACEHOUSE_SAMPLING": "1"}) == SamplingRules()


def test_the_rate_is_a_hash_of_the_trace_id() -> None:
    rng = random.Random(7)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(20_000)]
    kept = [t for t in ids if keep_by_rate(t, 0.1)]
    # binomial(20000, 0.1): sd 42; 5 sd either side
    assert 2000 - 212 <= len(kept) <= 2000 + 212
    assert kept == [t for t in ids if keep_by_rate(t, 0.1)]  # the same verdict every time
    assert set(kept) <= {t for t in ids if keep_by_rate(t, 0.2)}  # a higher rate keeps a superset
    assert all(keep_by_rate(t, 1.0) for t in ids[:100]) and not any(keep_by_rate(t, 0.0) for t in ids[:100])
    # OpenTelemetry's TraceIdRatioBased rule: the low 64 bits against rate x 2^64, the same in every process
    assert keep_by_rate("4bf92f3577b34da6" + "1999999990000000", 0.1)
    assert not keep_by_rate("4bf92f3577b34da6" + "19999999a0000000", 0.1)


def test_each_rule_keeps_what_it_says_in_order() -> None:
    rng = random.Random(1)
    rules = SamplingRules(latency_ms=5_000, cost_usd=1.0, score_below=0.5, rate=0.0)
    sampler = PartitionSampler(rules, 30.0, SamplingStats())
    traces = {
        "error": trace_of(rng, error=True),
        "rate_limit": [
            make_span(
                f"{rng.getrandbits(128):032x}",
                events=[Event("exception", T0, {"exception.type": "RateLimitError"})],
            )
        ],
        "guard": [make_span("4bf92f3577b34da6a3ce929d0e0e4736")],
        "latency": [make_span(f"{rng.getrandbits(128):032x}", duration_ns=6_000_000_000)],
        "cost": [make_span(f"{rng.getrandbits(128):032x}", cost_usd=2.0)],
        "score": [make_span(f"{rng.getrandbits(128):032x}", scores=[Score(name="faithful", value=0.2)])],
        "": trace_of(rng),
    }

    assembler = TraceAssembler()
    for spans in traces.values():
        for s in spans:
            assembler.add(s, 0, now=1.0)
            sampler.hold([s])
    records = {r.trace_id: r for r in assembler.flush_all(now=2.0)}
    kept = sampler.decide(list(records.values()), lambda t: t == "4bf92f3577b34da6a3ce929d0e0e4736", 2.0)
    for rule, spans in traces.items():
        record = records[spans[0].trace_id]
        assert (record.sampled, record.sampled_by) == (bool(rule), rule)
    stored = [s for message in encode_kept(kept) for s in decode_batch(message)[0]]  # as the sink reads them
    assert {s.span_id: s for s in stored} == {s.span_id: s for rule, spans in traces.items() if rule for s in spans}
    assert sampler.stats.decided == 7 and sampler.stats.kept_traces == 6 and sampler.stats.held_spans == 0


def test_a_late_span_follows_the_first_decision_for_the_revision_window() -> None:
    rng = random.Random(2)
    sampler = PartitionSampler(SamplingRules(rate=0.0), revision_window_s=30.0, stats=SamplingStats())

    assembler = TraceAssembler(revision_window_s=30.0)
    first = trace_of(rng)  # no error: dropped
    for s in first:
        assembler.add(s, 0, now=1.0)
        sampler.hold([s])
    assert sampler.decide(assembler.flush_all(now=2.0), lambda t: False, 2.0) == []
    late = make_span(first[0].trace_id, status="ERROR")  # an error arrives late: still dropped
    assembler.add(late, 1, now=3.0)
    sampler.hold([late])
    [revision] = assembler.flush_all(now=4.0)
    assert sampler.decide([revision], lambda t: False, 4.0) == []
    assert (revision.error_count, revision.sampled) == (1, False)
    assert sampler.stats.decided == 1  # a revision is not a second decision
    sampler._expire(40.0)  # past the window, a trace is decided afresh (as a restarted worker would)
    assert sampler._decided == {}


# ---- the processor: sampling on against off ------------------------------------------------------------


class _Sent:
    """What a Faust topic is to the processor (its `Sendable` protocol): here, a list."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    async def send(self, *, key: Any = None, value: Any = None, partition: int | None = None) -> None:
        self.values.append(value)


def run_processor(messages: list[bytes], sampling: SamplingRules | None) -> dict[str, Any]:
    out = {name: _Sent() for name in ("traces", "partials", "dlq", "alerts", "kept")}
    processor = SpanProcessor(
        traces_out=out["traces"],
        partials_out=out["partials"],
        dlq_out=out["dlq"],
        windows_factory=windows_factory(),
        options=ProcessorOptions(checkpoint_interval_s=3600),
        guards=GuardPublisher(default_trace_rules(), out["alerts"]),
        sampling=sampling,
        kept_out=out["kept"] if sampling else None,
    )
    processor.attach(None, None)
    state = processor._partition(0, None, 0)

    async def run() -> None:
        for offset, message in enumerate(messages):
            await processor.on_message(state, offset, message)
        records = state.assembler.flush_all()
        await processor._send_traces(records, state)

    asyncio.run(run())
    traces = [t for value in out["traces"].values for t in decode_traces(value)]
    kept = [s for value in out["kept"].values for s in decode_batch(value)[0]]
    windows = state.windows.to_state()
    return {"traces": traces, "kept": kept, "windows": windows, "stats": processor.sampling_stats}


def test_keep_errors_and_a_tenth_of_the_rest_stores_error_traces_whole_and_windows_see_every_span() -> None:
    rng = random.Random(16)
    traces = [trace_of(rng, error=i % 10 == 0, spans=rng.randint(2, 6)) for i in range(2000)]
    spans = [s for t in traces for s in t]
    rng.shuffle(spans)  # spans of a trace in any order, across messages
    messages = [encode_batch(spans[i : i + 100]) for i in range(0, len(spans), 100)]

    off = run_processor(messages, None)
    on = run_processor(messages, SamplingRules(rate=0.1))

    # Metrics stay whole: the same trace records (but for the sampling fields) and the same windows.
    def strip(records: list[Any]) -> dict[str, Any]:
        return {r.trace_id: msgspec.structs.replace(r, sampled=True, sampled_by="") for r in records}

    assert strip(on["traces"]) == strip(off["traces"]) and len(off["traces"]) == 2000
    assert on["windows"] == off["windows"]
    assert all(r.sampled and r.sampled_by == "" for r in off["traces"])  # off: today's records

    # Every error trace whole; the others kept by the hash, about a tenth; nothing else.
    by_trace: dict[str, list[Span]] = {}
    for s in on["kept"]:
        by_trace.setdefault(s.trace_id, []).append(s)
    records = {r.trace_id: r for r in on["traces"]}
    for trace in traces:
        record = records[trace[0].trace_id]
        expected = "error" if record.error_count else ("rate" if keep_by_rate(record.trace_id, 0.1) else "")
        assert record.sampled_by == expected and record.sampled is bool(expected)
        stored = by_trace.get(record.trace_id, [])
        assert sorted(s.span_id for s in stored) == (sorted(s.span_id for s in trace) if expected else [])
    assert by_trace.keys() <= records.keys()
    assert {s.span_id: s for s in on["kept"]} == {
        s.span_id: s for t in traces if records[t[0].trace_id].sampled for s in t
    }
    rest = [r for r in on["traces"] if not r.error_count]
    kept_rest = sum(r.sampled for r in rest)
    # binomial(1800, 0.1): mean 180, sd 12.7; 5 sd either side
    assert 180 - 64 <= kept_rest <= 180 + 64
    stats = on["stats"]
    assert (stats.decided, stats.kept["error"], stats.kept["rate"]) == (2000, 200, kept_rest)
    assert stats.held_spans == 0 and stats.kept_spans == len(on["kept"])
    assert stats.fractions()["error"] == 0.1


# ---- the group's quantile ------------------------------------------------------------------------------

NS = 1_000_000_000
MINUTE0 = (T0 // (60 * NS) + 1) * 60 * NS  # the start of a 60 s window


def root_span(start_ns: int, duration_ms: float, *, name: str = "agent.run", trace: str | None = None) -> Span:
    """A one-span trace: the root of group ("api", name)."""
    return Span(
        trace_id=trace or f"{next(_ids):032x}",
        span_id=f"{next(_ids):016x}",
        name=name,
        service="api",
        kind="CHAIN",
        start_time_ns=start_ns,
        end_time_ns=start_ns + int(duration_ms * 1e6),
    )


def close_all(windows: PartitionWindows, now_s: float) -> None:
    """Close every window ending before `now_s` by the clock (`PartitionWindows.due` closes by event time
    while spans keep coming, as when a backlog is replayed)."""
    for aggregator in windows.aggregators:
        aggregator.due(now_s)


def windows_with(latencies_ms: list[float], minute: int = 0) -> PartitionWindows:
    """A partition's windows that saw the group's roots with these latencies in one minute, then closed it."""
    windows = PartitionWindows(0, WindowOptions())
    start = MINUTE0 + minute * 60 * NS
    for i, ms in enumerate(latencies_ms):
        windows.add(root_span(start + i * 1_000_000, ms), 0.0)
    close_all(windows, (start + 2 * 60 * NS) / NS)
    return windows


def decide_roots(sampler: PartitionSampler, durations_ms: list[float], minute: int = 1) -> dict[float, str]:
    """One-span traces of the group ending in `minute`, decided: duration -> rule ("" dropped)."""
    assembler = TraceAssembler()
    by_trace = {}
    for i, ms in enumerate(durations_ms):
        span = root_span(MINUTE0 + minute * 60 * NS + i * 1_000_000, ms)
        by_trace[span.trace_id] = ms
        assembler.add(span, i, now=1.0)
        sampler.hold([span])
    records = assembler.flush_all(now=2.0)
    sampler.decide(records, lambda t: False, 2.0)
    return {by_trace[r.trace_id]: r.sampled_by for r in records}


def test_a_trace_above_its_groups_p95_is_kept_and_one_below_is_not() -> None:
    rules = parse_sampling("[sampling]\nlatency_above_quantile = 0.95\nrate = 0.0\n")
    assert rules.latency_above_quantile == 0.95 and rules.latency_min_count == 100
    windows = windows_with([float(ms) for ms in range(1, 201)])  # 200 roots, 1..200 ms: p95 ~190 ms
    sampler = PartitionSampler(rules, 30.0, SamplingStats())
    sampler.windows_closed(windows)
    assert sampler.latencies is not None
    [quantiles] = sampler.latencies._windows.values()
    p95 = quantiles[("api", "agent.run")]
    assert 190 * 0.99 <= p95 <= 190 * 1.01  # the sketch's 1 % accuracy
    verdicts = decide_roots(sampler, [250.0, 196.0, 180.0, 20.0])
    assert verdicts == {250.0: "latency_quantile", 196.0: "latency_quantile", 180.0: "", 20.0: ""}
    assert sampler.stats.kept["latency_quantile"] == 2 and sampler.stats.fractions()["latency_quantile"] == 0.5
    # another group (another root name) has no quantile: the rule says nothing for it
    other = root_span(MINUTE0 + 60 * NS, 5_000.0, name="batch.job")
    assembler = TraceAssembler()
    assembler.add(other, 0, now=1.0)
    sampler.hold([other])
    [record] = assembler.flush_all(now=2.0)
    sampler.decide([record], lambda t: False, 2.0)
    assert record.sampled_by == ""


def test_the_rule_waits_for_the_minimum_count_and_a_closed_window_before_the_traces_own() -> None:
    rules = SamplingRules(latency_above_quantile=0.95, latency_min_count=100, rate=0.0)
    few = PartitionSampler(rules, 30.0, SamplingStats())
    few.windows_closed(windows_with([float(ms) for ms in range(1, 51)]))  # 50 samples: no verdict
    assert decide_roots(few, [10_000.0]) == {10_000.0: ""}
    enough = PartitionSampler(rules, 30.0, SamplingStats())
    enough.windows_closed(windows_with([float(ms) for ms in range(1, 201)]))
    # a trace of the very window the quantile comes from is not measured against itself
    assert decide_roots(enough, [10_000.0], minute=0) == {10_000.0: ""}
    assert decide_roots(enough, [10_000.0], minute=1) == {10_000.0: "latency_quantile"}
    assert decide_roots(enough, [10_000.0], minute=5) == {10_000.0: "latency_quantile"}  # newest earlier one


def test_group_quantiles_use_the_newest_earlier_window_and_stay_bounded() -> None:
    latencies = GroupLatencies(0.5, min_count=10)
    windows = PartitionWindows(0, WindowOptions())
    for minute in range(4):  # the median doubles every minute: 10, 20, 40, 80 ms
        start = MINUTE0 + minute * 60 * NS
        for i in range(21):
            windows.add(root_span(start + i * 1_000_000, 10.0 * 2**minute), 0.0)
    close_all(windows, (MINUTE0 + 6 * 60 * NS) / NS)
    latencies.refresh(*windows.newest_closed(2))
    assert sorted(latencies._windows) == [
        (MINUTE0 + m * 60 * NS) // NS for m in (2, 3)
    ]  # two windows held, whatever the history

    def quantile_for(minute: int) -> float | None:
        spans = [root_span(MINUTE0 + minute * 60 * NS, 1.0)]
        assembler = TraceAssembler()
        assembler.add(spans[0], 0, now=1.0)
        [record] = assembler.flush_all(now=2.0)
        return latencies.quantile_ms(record)

    assert quantile_for(3) == pytest.approx(40.0, rel=0.01)  # the window before its own (minute 2)
    assert quantile_for(4) == pytest.approx(80.0, rel=0.01)
    assert quantile_for(2) is None  # older windows are forgotten


def test_verdicts_are_the_same_after_a_restart_from_the_windows_checkpoint() -> None:
    rules = SamplingRules(latency_above_quantile=0.9, latency_min_count=50, rate=0.0)
    rng = random.Random(95)
    windows = windows_with([rng.lognormvariate(4, 1) for _ in range(500)])
    durations = [rng.lognormvariate(4, 1) for _ in range(300)]
    first = PartitionSampler(rules, 30.0, SamplingStats())
    first.windows_closed(windows)
    restored = PartitionSampler(rules, 30.0, SamplingStats())
    restored.windows_closed(PartitionWindows(0, WindowOptions(), windows.to_state()))  # a restarted worker
    before, after = decide_roots(first, durations), decide_roots(restored, durations)
    assert before == after
    kept = sum(rule == "latency_quantile" for rule in before.values())
    assert 10 <= kept <= 60  # about a tenth of 300 (the same distribution as the window's)


def test_the_processor_measures_traces_against_the_windows_it_closed() -> None:
    """Through the worker's processor: a minute of the group's roots, then slow and fast traces of the next
    minute, decided at a tick (windows close by event time here: the spans are in the past)."""
    rules = SamplingRules(latency_above_quantile=0.95, rate=0.0)
    out = {name: _Sent() for name in ("traces", "partials", "dlq", "kept")}
    processor = SpanProcessor(
        traces_out=out["traces"],
        partials_out=out["partials"],
        dlq_out=out["dlq"],
        windows_factory=windows_factory(budget_rules=()),
        options=ProcessorOptions(checkpoint_interval_s=3600, quiet_s=0.0),
        sampling=rules,
        kept_out=out["kept"],
    )
    processor.attach(None, None)
    state = processor._partition(0, None, 0)
    minute0 = [root_span(MINUTE0 + i * 1_000_000, float(ms)) for i, ms in enumerate(range(1, 201))]
    slow = root_span(MINUTE0 + 60 * NS, 1_000.0)
    fast = root_span(MINUTE0 + 60 * NS + 1, 50.0)

    async def run() -> None:
        await processor.on_message(state, 0, encode_batch(minute0))
        await processor.on_tick()
        await processor.on_message(state, 1, encode_batch([slow, fast]))
        await processor.on_tick()

    asyncio.run(run())
    records = {r.trace_id: r for value in out["traces"].values for r in decode_traces(value)}
    assert len(records) == 202
    assert records[slow.trace_id].sampled_by == "latency_quantile"
    assert records[fast.trace_id].sampled is False
    assert all(not records[s.trace_id].sampled for s in minute0)  # no earlier window: no verdict
    assert [s.trace_id for value in out["kept"].values for s in decode_batch(value)[0]] == [slow.trace_id]


def test_a_revision_of_a_closed_window_moves_only_the_groups_it_touched() -> None:
    rules = SamplingRules(latency_above_quantile=0.5, latency_min_count=10, rate=0.0)
    windows = PartitionWindows(0, WindowOptions())
    for i in range(20):  # two groups of the same minute, 10 ms each
        windows.add(root_span(MINUTE0 + i * 1_000_000, 10.0), 0.0)
        windows.add(root_span(MINUTE0 + i * 1_000_000, 10.0, name="batch.job"), 0.0)
    close_all(windows, (MINUTE0 + 2 * 60 * NS) / NS)
    sampler = PartitionSampler(rules, 30.0, SamplingStats())
    sampler.windows_closed(windows)
    assert sampler.latencies is not None
    before = dict(sampler.latencies._windows[MINUTE0 // NS])
    for i in range(40):  # late spans of one group, for the closed minute: its median moves to 100 ms
        windows.add(root_span(MINUTE0 + i * 1_000_000, 100.0), 0.0)
    partials = [p for a in windows.aggregators for p in a.due((MINUTE0 + 2 * 60 * NS) / NS + 1)]
    assert {(p.name, p.revision) for p in partials if p.window_seconds == 60} == {("agent.run", 1)}
    sampler.windows_closed(windows, partials)
    after = sampler.latencies._windows[MINUTE0 // NS]
    assert after[("api", "agent.run")] == pytest.approx(100.0, rel=0.01)
    assert after[("api", "batch.job")] == before[("api", "batch.job")]
    # the same as reading the revised windows whole (a restarted worker's view)
    restored = PartitionSampler(rules, 30.0, SamplingStats())
    restored.windows_closed(PartitionWindows(0, WindowOptions(), windows.to_state()))
    assert restored.latencies is not None and restored.latencies._windows == sampler.latencies._windows
