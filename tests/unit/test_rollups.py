"""Windowed rollups: partials per partition, merged finals, late revisions, duplicates, snapshots."""

from __future__ import annotations

import itertools
import math
import random
import re

import pytest

from tracehouse.core.rollups import OTHER, Rollup, RollupPartialRecord, decode_partials, encode_partials
from tracehouse.core.schema import Event, LLMCall, Span, TokenUsage
from tracehouse.core.sketch import RELATIVE_ACCURACY, LatencySketch
from tracehouse.pipeline.merger import RollupMerger
from tracehouse.pipeline.windows import WindowAggregator, WindowPartial, is_rate_limited
from tracehouse.sinks.ddl import ROLLUPS_V1

W0 = 1_789_999_980  # epoch seconds, a multiple of 60
_ids = itertools.count(1)


def make_span(
    end_s: float,
    duration_ms: float,
    *,
    service: str = "support-bot",
    kind: str = "LLM",
    name: str = "chat",
    model: str | None = "gpt-4o",
    status: str = "OK",
    usage: TokenUsage | None = None,
    attributes: dict[str, str] | None = None,
    events: list[Event] | None = None,
) -> Span:
    n = next(_ids)
    end_ns = round(end_s * 1e9)
    return Span(
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        service=service,
        start_time_ns=end_ns - round(duration_ms * 1e6),
        end_time_ns=end_ns,
        status=status,  # type: ignore[arg-type]
        attributes=attributes or {},
        events=events or [],
        llm=LLMCall(model=model) if model is not None else None,
        usage=usage,
    )


def fixed_clock() -> float:
    """The wall clock the aggregators see (only spans far ahead of it are treated as future)."""
    return W0 + 600.0


def make_agg(window_seconds: int, grace_seconds: float, **options: object) -> WindowAggregator:
    options.setdefault("clock", fixed_clock)
    return WindowAggregator(window_seconds, grace_seconds, **options)  # type: ignore[arg-type]


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def table_columns(ddl: str) -> list[str]:
    body = ddl[ddl.index("(") + 1 : ddl.rindex(")\nENGINE")]
    return [m.group(1) for m in re.finditer(r"^\s+(\w+) ", body, re.M) if m.group(1) != "INDEX"]


def test_rollup_has_exactly_the_table_columns() -> None:
    assert list(Rollup.__struct_fields__) == table_columns(ROLLUPS_V1)


def test_window_partial_counts_errors_rate_limits_and_tokens() -> None:
    partial = WindowPartial()
    partial.add_span(make_span(W0, 100, usage=TokenUsage(input=100, output=20, cached=40, reasoning=5)), 0.5)
    partial.add_span(
        make_span(W0, 300, status="ERROR", attributes={"error.type": "rate_limit"}, usage=TokenUsage()), 0.0
    )
    rate_limit_event = Event("exception", W0 * 10**9, {"exception.type": "openai.RateLimitError"})
    partial.add_span(make_span(W0, 200, status="ERROR", events=[rate_limit_event]), 0.25)  # no error.type
    partial.add_span(  # an explicit error.type wins over the exception's name
        make_span(W0, 50, status="ERROR", attributes={"error.type": "TimeoutError"}, events=[rate_limit_event]),
        0.0,
    )
    assert (partial.count, partial.error_count, partial.rate_limit_count) == (4, 3, 2)
    assert (partial.input_tokens, partial.output_tokens, partial.cached_tokens, partial.reasoning_tokens) == (
        100,
        20,
        40,
        5,
    )
    assert partial.cost_usd == 0.75
    assert partial.latency_max_ms == 300.0
    assert is_rate_limited(make_span(W0, 1, attributes={"error.type": "rate_limit"}))
    assert not is_rate_limited(make_span(W0, 1))


def test_windows_close_after_grace_by_end_time() -> None:
    agg = make_agg(60, 5.0, partition=3)
    # starts in the window before, ends in [W0, W0+60): counted in W0's window
    agg.add(make_span(W0 + 1, 5_000), 0.01)
    agg.add(make_span(W0 + 59.9, 20), 0.02)
    agg.add(make_span(W0 + 30, 40, name="embed", kind="EMBEDDING", model="text-embedding-3-small"), 0.001)
    agg.add(make_span(W0 + 61, 10), 0.04)  # next window
    assert agg.open_windows == [W0, W0 + 60]
    assert agg.due(W0 + 64.9) == []
    records = agg.due(W0 + 65)
    assert agg.open_windows == [W0 + 60]
    by_group = {(r.name, r.model): r for r in records}
    assert set(by_group) == {("chat", "gpt-4o"), ("embed", "text-embedding-3-small")}
    chat = by_group[("chat", "gpt-4o")]
    assert (chat.window_start, chat.window_seconds, chat.partition, chat.revision) == (W0, 60, 3, 0)
    assert (chat.service, chat.kind, chat.count, chat.latency_max_ms) == ("support-bot", "LLM", 2, 5_000.0)
    assert chat.cost_usd == pytest.approx(0.03)
    assert LatencySketch.from_bytes(chat.latency_sketch).count == 2
    assert [r.window_start for r in agg.due(W0 + 125)] == [W0 + 60]


def test_spans_without_llm_group_under_empty_model() -> None:
    agg = make_agg(10, 0)
    agg.add(make_span(W0 + 1, 3, kind="TOOL", name="search", model=None), 0.0)
    (record,) = agg.due(W0 + 10)
    assert (record.kind, record.name, record.model) == ("TOOL", "search", "")


def run_partitions(spans_by_partition: list[list[tuple[Span, float]]], now: float) -> list[RollupPartialRecord]:
    records: list[RollupPartialRecord] = []
    for partition, spans in enumerate(spans_by_partition):
        agg = make_agg(60, 5.0, partition=partition)
        for span, cost in spans:
            agg.add(span, cost)
        records.extend(agg.due(now))
    return records


def test_three_partitions_merge_to_exact_totals() -> None:
    rng = random.Random(11)
    groups = [
        ("support-bot", "chat", "gpt-4o"),
        ("support-bot", "chat", "o3"),
        ("search", "answer", "gpt-4o"),
    ]
    spans_by_partition: list[list[tuple[Span, float]]] = [[], [], []]
    expected: dict[tuple[int, str, str, str], dict] = {}
    for _ in range(6_000):
        window = rng.choice([W0, W0 + 60])
        service, name, model = rng.choice(groups)
        duration = rng.lognormvariate(6.5, 1.0)
        usage = TokenUsage(
            input=rng.randint(100, 4000), output=rng.randint(10, 800), cached=rng.randint(0, 50), reasoning=3
        )
        status = "ERROR" if rng.random() < 0.05 else "OK"
        attributes = {"error.type": "rate_limit"} if status == "ERROR" and rng.random() < 0.5 else {}
        cost = round(rng.uniform(0, 0.02), 6)
        span = make_span(
            window + rng.uniform(0, 59.99),
            duration,
            service=service,
            name=name,
            model=model,
            status=status,
            usage=usage,
            attributes=attributes,
        )
        spans_by_partition[rng.randrange(3)].append((span, cost))
        e = expected.setdefault(
            (window, service, name, model),
            dict(count=0, errors=0, rate_limits=0, latencies=[], tokens=[0, 0, 0, 0], cost=0.0),
        )
        e["count"] += 1
        e["errors"] += status == "ERROR"
        e["rate_limits"] += bool(attributes)
        e["latencies"].append((span.end_time_ns - span.start_time_ns) / 1e6)
        for i, n in enumerate((usage.input, usage.output, usage.cached, usage.reasoning)):
            e["tokens"][i] += n
        e["cost"] += cost

    records = run_partitions(spans_by_partition, now=W0 + 130)
    assert {r.partition for r in records} == {0, 1, 2}
    merger = RollupMerger(merge_delay_seconds=10)
    for record in decode_partials(encode_partials(records)):  # as they travel over Kafka
        assert merger.add(record)
    assert merger.due(W0 + 60 + 9.9) == []
    first = merger.due(W0 + 70)
    assert {r.window_start for r in first} == {W0}
    rollups = first + merger.due(W0 + 130)
    assert len(rollups) == len(expected) == 6

    for rollup in rollups:
        e = expected[(rollup.window_start, rollup.service, rollup.name, rollup.model)]
        assert (rollup.window_seconds, rollup.kind) == (60, "LLM")
        assert (rollup.count, rollup.error_count, rollup.rate_limit_count) == (
            e["count"],
            e["errors"],
            e["rate_limits"],
        )
        assert [
            rollup.input_tokens,
            rollup.output_tokens,
            rollup.cached_tokens,
            rollup.reasoning_tokens,
        ] == e["tokens"]
        assert rollup.cost_usd == pytest.approx(e["cost"], rel=1e-9)
        assert rollup.latency_max_ms == max(e["latencies"])
        for q, value in (
            (0.5, rollup.latency_p50_ms),
            (0.95, rollup.latency_p95_ms),
            (0.99, rollup.latency_p99_ms),
        ):
            exact = exact_quantile(e["latencies"], q)
            assert abs(value - exact) <= RELATIVE_ACCURACY * exact, (q, value, exact)
        assert rollup.sketch().count == e["count"]


def test_late_span_revises_the_window_with_merged_totals() -> None:
    aggs = [make_agg(60, 5.0, partition=p) for p in range(2)]
    merger = RollupMerger(merge_delay_seconds=10)
    aggs[0].add(make_span(W0 + 10, 100, usage=TokenUsage(input=10, output=1)), 0.1)
    aggs[1].add(make_span(W0 + 20, 200, usage=TokenUsage(input=20, output=2)), 0.2)
    for agg in aggs:
        for record in agg.due(W0 + 65):
            merger.add(record)
    (rollup,) = merger.due(W0 + 70)
    assert (rollup.count, rollup.input_tokens, rollup.latency_max_ms) == (2, 30, 200.0)

    aggs[0].add(make_span(W0 + 30, 900, usage=TokenUsage(input=40, output=4)), 0.4)  # 40 s after its window
    assert aggs[0].stats.late_spans == 1
    assert merger.due(W0 + 100) == []  # nothing new yet
    (revision,) = aggs[0].due(W0 + 100)
    assert (revision.revision, revision.count, revision.input_tokens) == (1, 2, 50)  # cumulative, partition 0
    assert merger.add(revision)
    (revised,) = merger.due(W0 + 101)
    assert (revised.window_start, revised.count, revised.input_tokens, revised.output_tokens) == (
        W0,
        3,
        70,
        7,
    )
    assert revised.cost_usd == pytest.approx(0.7)
    assert revised.latency_max_ms == 900.0 and revised.sketch().count == 3
    assert merger.stats.revisions == 1
    assert merger.due(W0 + 102) == []


def test_late_span_for_a_new_group_of_a_closed_window() -> None:
    agg = make_agg(10, 1.0)
    agg.add(make_span(W0 + 1, 5), 0.0)
    agg.due(W0 + 11)
    agg.add(make_span(W0 + 2, 7, name="other"), 0.0)
    agg.add(make_span(W0 + 3, 8, name="other"), 0.0)
    (record,) = agg.due(W0 + 12)
    assert (record.name, record.revision, record.count) == ("other", 1, 2)
    # a window that closed empty: its first late record is revision 0
    agg.add(make_span(W0 + 10.5, 1), 0.0)
    agg.due(W0 + 30)
    agg.add(make_span(W0 + 25, 1), 0.0)
    (record,) = agg.due(W0 + 31)
    assert (record.window_start, record.revision, record.count) == (W0 + 20, 0, 1)


def test_duplicate_partials_count_once() -> None:
    agg = make_agg(60, 5.0, partition=1)
    for i in range(5):
        agg.add(make_span(W0 + i, 10 * (i + 1)), 0.1)
    records = agg.due(W0 + 65)
    merger = RollupMerger(merge_delay_seconds=10)
    assert merger.add(records[0]) is True
    assert merger.add(records[0]) is False  # delivered twice before the merge
    (rollup,) = merger.due(W0 + 70)
    assert rollup.count == 5
    assert merger.add(records[0]) is False  # and again after it: no revision
    assert merger.due(W0 + 80) == []
    assert merger.stats.duplicates == 2


def test_crash_replay_never_double_counts() -> None:
    """A worker snapshots, goes on (closing a window, folding in a late span), crashes, restores the
    snapshot and replays the same spans: the merger's totals are those of the spans, exactly once."""
    spans = [make_span(W0 + i, 10 + i) for i in range(10)]
    late = make_span(W0 + 30, 999)
    merger = RollupMerger(merge_delay_seconds=10)

    agg = make_agg(60, 5.0, partition=0)
    for span in spans[:4]:
        agg.add(span, 1.0)
    snapshot = agg.to_state()
    for span in spans[4:]:
        agg.add(span, 1.0)
    for record in agg.due(W0 + 65):  # closes W0 with 10 spans; sent
        merger.add(record)
    agg.add(late, 1.0)  # crash before the revision with the late span is sent

    restored = WindowAggregator.from_state(snapshot, clock=fixed_clock)
    for span in [*spans[4:], late]:  # replay: the late span now lands while the window is still open
        restored.add(span, 1.0)
    for record in restored.due(W0 + 90):
        merger.add(record)
    rollups = merger.due(W0 + 91)
    final = {r.window_start: r for r in rollups}[W0]
    assert (final.count, final.cost_usd, final.latency_max_ms) == (11, 11.0, 999.0)

    for record in restored.due(W0 + 95):  # and re-sent duplicates change nothing
        merger.add(record)
    assert merger.due(W0 + 96) == []


def test_aggregator_snapshot_round_trip() -> None:
    rng = random.Random(5)

    def feed(agg: WindowAggregator, spans: list[Span]) -> None:
        for span in spans:
            agg.add(span, 0.001)

    first = [make_span(W0 + rng.uniform(0, 119), rng.uniform(1, 500), name=rng.choice("abc")) for _ in range(300)]
    late = [make_span(W0 + rng.uniform(0, 59), rng.uniform(1, 500), name=rng.choice("abcd")) for _ in range(20)]
    rest = [make_span(W0 + rng.uniform(60, 119), rng.uniform(1, 500)) for _ in range(50)]

    original = make_agg(60, 5.0, partition=2, max_groups=3)
    feed(original, first)
    original.due(W0 + 66)  # closes W0
    feed(original, late)  # pending late revision
    restored = WindowAggregator.from_state(original.to_state(), clock=fixed_clock)
    assert restored.to_state() == original.to_state()
    for agg in (original, restored):
        feed(agg, rest)
    assert restored.stats == original.stats
    assert restored.due(W0 + 200) == original.due(W0 + 200)


def test_merger_snapshot_round_trip() -> None:
    aggs = [make_agg(10, 1.0, partition=p) for p in range(3)]
    for p, agg in enumerate(aggs):
        for i in range(30):
            agg.add(make_span(W0 + i, 5 + p + i), 0.01)
    merger = RollupMerger(merge_delay_seconds=2)
    for agg in aggs:
        for record in agg.due(W0 + 21.5):  # windows W0 and W0+10
            merger.add(record)
    merger.due(W0 + 12)  # W0 emitted, W0+10 pending
    aggs[0].add(make_span(W0 + 5, 50), 0.01)  # late for W0: a revision to come
    for record in aggs[0].due(W0 + 22):
        merger.add(record)
    restored = RollupMerger.from_state(merger.to_state())
    assert restored.stats == merger.stats
    expected = merger.due(W0 + 40)
    assert restored.due(W0 + 40) == expected
    assert {(r.window_start, r.count) for r in expected} == {(W0, 31), (W0 + 10, 30)}


def test_groups_per_window_are_bounded() -> None:
    agg = make_agg(60, 0, max_groups=2)
    for name in ("a", "b", "c", "d", "c"):
        agg.add(make_span(W0 + 1, 10, name=name), 1.0)
    records = agg.due(W0 + 60)
    by_name = {r.name: r.count for r in records}
    assert by_name == {"a": 1, "b": 1, OTHER: 3}
    assert agg.stats.overflow_spans == 3


def test_too_late_for_retention_is_dropped_and_counted() -> None:
    agg = make_agg(60, 5.0, retention_seconds=120)
    agg.add(make_span(W0 + 1, 10), 0.0)
    agg.due(W0 + 300)
    agg.add(make_span(W0 + 2, 10), 0.0)  # W0 ended 240 s ago: forgotten
    assert agg.due(W0 + 301) == []
    assert (agg.stats.late_spans, agg.stats.dropped_late_spans) == (1, 1)

    merger = RollupMerger(merge_delay_seconds=10, retention_seconds=120)
    merger.due(W0 + 300)
    record = WindowPartial().to_record(("s", "LLM", "n", "m"), W0, 60, 0, 0)
    assert merger.add(record) is False and merger.stats.too_old == 1


def test_merger_forgets_emitted_windows_after_retention() -> None:
    agg = make_agg(60, 0)
    agg.add(make_span(W0 + 1, 10), 0.0)
    merger = RollupMerger(merge_delay_seconds=0, retention_seconds=100)
    for record in agg.due(W0 + 60):
        merger.add(record)
    assert len(merger.due(W0 + 60)) == 1
    merger.due(W0 + 159)
    other_partition = WindowPartial()
    other_partition.add_span(make_span(W0 + 2, 20), 0.0)
    record = other_partition.to_record(("support-bot", "LLM", "chat", "gpt-4o"), W0, 60, 5, 0)
    assert merger.add(record) is True  # still kept: a late partial becomes a revision
    (revised,) = merger.due(W0 + 159)
    assert revised.count == 2
    merger.due(W0 + 161)  # window end + retention passed: forgotten
    assert merger.add(record) is False and merger.stats.too_old == 1
    assert merger.due(W0 + 200) == []


def test_spans_from_the_far_future_count_in_the_current_window() -> None:
    agg = make_agg(60, 5.0, max_future_seconds=600)
    agg.due(W0 + 10)
    agg.add(make_span(W0 + 86_400, 10), 0.0)  # a producer whose clock is a day ahead
    agg.add(make_span(W0 + 20, 10), 0.0)
    assert agg.stats.future_spans == 1
    (record,) = agg.due(W0 + 65)
    assert (record.window_start, record.count) == (W0, 2)


def test_a_window_opened_far_ahead_before_the_clock_was_known_is_folded_in() -> None:
    agg = make_agg(60, 5.0, max_future_seconds=600)
    agg.add(make_span(W0 + 86_400, 10), 0.0)  # before any due(): nothing to compare with yet
    agg.add(make_span(W0 + 20, 10), 0.0)
    assert agg.due(W0 + 10) == []
    assert agg.open_windows == [W0] and agg.stats.future_spans == 1
    (record,) = agg.due(W0 + 65)
    assert (record.window_start, record.count) == (W0, 2)


def test_event_time_follows_the_newest_window() -> None:
    agg = make_agg(10, 2.0)
    assert agg.event_time_s is None
    agg.add(make_span(W0 + 3, 1), 0.0)
    agg.add(make_span(W0 + 25, 1), 0.0)
    agg.add(make_span(W0 + 12, 1), 0.0)
    assert agg.event_time_s == W0 + 30
    # catching up on a backlog: close by event time, not by the (much later) wall clock
    wall = W0 + 3600
    records = agg.due(min(wall, agg.event_time_s))
    assert [r.window_start for r in records] == [W0, W0 + 10]  # not the newest: spans may still come
    agg.add(make_span(W0 + 28, 1), 0.0)
    assert agg.stats.late_spans == 0
    agg.add(make_span(W0 + 500, 1), 0.0)  # after a quiet gap in the backlog: a window of its own
    assert agg.stats.future_spans == 0 and agg.open_windows == [W0 + 20, W0 + 500]
    assert WindowAggregator.from_state(agg.to_state(), clock=fixed_clock).event_time_s == W0 + 510
