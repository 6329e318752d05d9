"""`TraceAssembler.due` reads only the quiet and the old traces (kept in arrival order) instead of scanning
every open one: it must emit exactly what the full scan emits, in the same order, with the same counts."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.core.schema import Span
from tracehouse.pipeline.assembly import TraceAssembler

T0 = 1_790_000_000_000_000_000


def make_span(trace: int, span_id: int, parent: int) -> Span:
    return Span(
        trace_id=f"{trace:032x}",
        span_id=f"{span_id:016x}",
        parent_span_id=f"{parent:016x}" if parent else "",
        name=f"s{span_id}",
        start_time_ns=T0 + span_id * 1_000,
        end_time_ns=T0 + span_id * 2_000,
    )


# One step: a span of trace 1-6 (span 1 is each trace's root, so some traces never get theirs), arriving
# `gap` seconds after the previous step, or a tick `gap` seconds later.
step = st.tuples(
    st.sampled_from(["span", "span", "span", "tick"]),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=5),
    st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 10.0, 40.0]),
)


def run(steps: list[tuple[str, int, int, float]], *, scan_all: bool) -> tuple[list[bytes], dict[str, int]]:
    assembler = TraceAssembler(quiet_s=3.0, max_age_s=20.0, revision_window_s=30.0, max_open_traces=4)
    out: list[bytes] = []
    now = 0.0
    for i, (kind, trace, span_id, gap) in enumerate(steps):
        now += gap
        if scan_all:
            assembler._ordered = False  # the full scan, as `due` did before it kept the orders
        if kind == "tick":
            out.extend(msgspec.msgpack.encode(r) for r in assembler.due(now))
        else:
            parent = 0 if span_id == 1 else span_id - 1
            assembler.add(make_span(trace, span_id, parent), offset=i, now=now)
        out.extend(msgspec.msgpack.encode(r) for r in assembler.take_forced())
    out.extend(msgspec.msgpack.encode(r) for r in assembler.due(now + 100))
    return out, dict(vars(assembler.stats))


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60))
def test_due_emits_what_a_scan_of_every_open_trace_emits(steps: list[tuple[str, int, int, float]]) -> None:
    assert run(steps, scan_all=False) == run(steps, scan_all=True)


def test_a_clock_that_goes_back_falls_back_to_the_full_scan() -> None:
    assembler = TraceAssembler(quiet_s=3.0)
    assembler.add(make_span(1, 1, 0), offset=0, now=10.0)
    assembler.add(make_span(2, 1, 0), offset=1, now=5.0)  # a caller's clock went back
    assert [r.trace_id for r in assembler.due(8.5)] == [f"{2:032x}"]
    assert [r.trace_id for r in assembler.due(13.5)] == [f"{1:032x}"]
