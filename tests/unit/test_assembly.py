"""Trace assembly rules, on the assembler alone (the end-to-end versions run through Kafka)."""

from __future__ import annotations

from tracehouse.core.schema import LLMCall, Span, TokenUsage
from tracehouse.pipeline.assembly import TraceAssembler

T0 = 1_790_000_000_000_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def span(span_id: int, parent: int = 0, *, start: int = 0, end: int = 10, service: str = "a", **kw: object) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=f"{span_id:016x}",
        parent_span_id=f"{parent:016x}" if parent else "",
        name=f"s{span_id}",
        start_time_ns=T0 + start * 1_000_000,
        end_time_ns=T0 + end * 1_000_000,
        service=service,
        **kw,  # type: ignore[arg-type]
    )


def test_out_of_order_spans_make_one_complete_trace_after_the_quiet_period() -> None:
    asm = TraceAssembler(quiet_s=3, max_age_s=60)
    asm.add(span(3, 2, start=2, end=5), offset=10, now=0.0)
    asm.add(span(1, 0, start=0, end=20), offset=11, now=0.1)  # root before its middle child
    asm.add(span(2, 1, start=1, end=15, service="b", status="ERROR"), offset=12, now=0.2)
    assert asm.due(now=3.0) == []  # not quiet long enough since the last span
    [record] = asm.due(now=3.3)
    assert (record.span_count, record.error_count, record.complete, record.orphan_spans) == (3, 1, True, 0)
    assert record.root_name == "s1" and record.services == ["a", "b"]
    assert record.duration_ns == 20_000_000
    assert record.slowest_span_id == f"{2:016x}"  # on the critical path: root -> s2 -> s3
    assert record.version == 3


def test_duplicates_count_once_before_and_after_emission() -> None:
    asm = TraceAssembler(quiet_s=1)
    assert asm.add(span(1), 0, now=0.0)
    assert asm.add(span(2, 1), 1, now=0.0)
    assert not asm.add(span(2, 1), 2, now=0.1)
    [record] = asm.due(now=2.0)
    assert record.span_count == 2
    assert not asm.add(span(2, 1), 3, now=2.5)  # a producer retry after emission changes nothing
    assert asm.due(now=10.0) == []
    assert asm.stats.duplicates == 2


def test_a_late_span_revises_the_trace_with_a_higher_version() -> None:
    asm = TraceAssembler(quiet_s=1, revision_window_s=30)
    asm.add(span(1, end=30), 0, now=0.0)
    asm.add(span(2, 1, usage=TokenUsage(input=10, output=5), llm=LLMCall(model="gpt-4o")), 1, now=0.0)
    [first] = asm.due(now=1.5)
    asm.add(span(3, 1, usage=TokenUsage(input=100, output=50), llm=LLMCall(model="gpt-4o")), 2, now=5.0)
    [revised] = asm.due(now=6.5)
    assert (first.version, revised.version) == (2, 3)
    assert revised.span_count == 3 and revised.total_tokens == 165
    assert revised.cost_usd > first.cost_usd


def test_orphans_are_kept_and_mark_the_trace_incomplete() -> None:
    asm = TraceAssembler(quiet_s=1)
    asm.add(span(1), 0, now=0.0)
    asm.add(span(5, 4), 1, now=0.0)  # parent 4 never arrives
    [record] = asm.due(now=2.0)
    assert (record.span_count, record.orphan_spans, record.complete) == (2, 1, False)


def test_a_trace_without_root_is_emitted_at_the_maximum_age() -> None:
    asm = TraceAssembler(quiet_s=1, max_age_s=10)
    asm.add(span(2, 1), 0, now=0.0)
    assert asm.due(now=5.0) == []
    [record] = asm.due(now=10.0)
    assert record.root_name == "" and not record.complete and record.span_count == 1
    assert asm.stats.forced_by_age == 1


def test_unknown_models_are_flagged_not_priced_at_zero_silently() -> None:
    asm = TraceAssembler(quiet_s=1)
    asm.add(span(1), 0, now=0.0)
    asm.add(span(2, 1, usage=TokenUsage(input=10, output=5), llm=LLMCall(model="my-finetune-7b")), 1, now=0.0)
    [record] = asm.due(now=2.0)
    assert record.unpriced_models == ["my-finetune-7b"]


def test_safe_offset_is_the_oldest_open_trace_and_memory_is_bounded() -> None:
    asm = TraceAssembler(quiet_s=1, max_open_traces=2)
    assert asm.safe_offset(next_offset=7) == 7
    asm.add(span(1), 3, now=0.0)
    assert asm.safe_offset(next_offset=7) == 3
    other = [
        Span(trace_id=f"{i:032x}", span_id=f"{i:016x}", name="x", start_time_ns=T0, end_time_ns=T0) for i in range(1, 4)
    ]
    for i, s in enumerate(other):
        asm.add(s, 4 + i, now=0.0)
    assert asm.open_traces == 2  # the oldest were emitted early to stay within the cap
    assert len(asm.take_forced()) == 2
    assert asm.stats.forced_by_capacity == 2
