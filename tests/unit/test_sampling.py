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
from tracehouse.pipeline.guard_rules import default_trace_rules
from tracehouse.pipeline.guards import GuardPublisher
from tracehouse.pipeline.partition_windows import windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor
from tracehouse.pipeline.sampling import (
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
    from tracehouse.pipeline.assembly import TraceAssembler

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
    from tracehouse.pipeline.assembly import TraceAssembler

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
