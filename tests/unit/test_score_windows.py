"""Scores in the worker's windows, without Kafka: the fold per (name, service, model), dedup by score_id,
late scores and snapshots, the merger's score rows, and alert rules on scores (parsing and evaluation)."""

from __future__ import annotations

import asyncio
import math

import pytest

from tracehouse.core.rollups import (
    MAX_SCORE_DISTINCT,
    OTHER,
    ScoreRollup,
    decode_partial_batch,
    decode_score_rollups,
    encode_partials,
    encode_score_rollups,
)
from tracehouse.core.scores import Score, encode_score_batch
from tracehouse.pipeline.alert_evaluator import AlertEvaluator
from tracehouse.pipeline.alert_rules import RuleError, parse_rules
from tracehouse.pipeline.merger import RollupMerger, ScoreRollupMerger
from tracehouse.pipeline.partition_windows import WindowOptions
from tracehouse.pipeline.score_processor import ScoreProcessor
from tracehouse.pipeline.score_windows import ScoreWindows, TraceGroups

NS = 1_000_000_000
T0 = 1_700_000_040  # a multiple of 60 (and of 10)
TRACE = "ab" * 16


def score(name: str, at_s: float, value: float | None = None, label: str = "", score_id: str = "") -> Score:
    return Score(trace_id=TRACE, name=name, value=value, label=label, score_id=score_id, created_at=int(at_s * NS))


def windows(partition: int = 0, clock: float = T0 + 5) -> ScoreWindows:
    return ScoreWindows(partition, (10, 60), 0.5, {10: 120, 60: 600}, clock=lambda: clock)


def by_key(records: list) -> dict:
    return {(r.window_seconds, r.window_start, r.name, r.service, r.model): r for r in records}


def test_scores_fold_into_count_average_and_label_counts_per_name_service_and_model() -> None:
    w = windows()
    for value in (1.0, 0.0, 1.0, 0.5):
        assert w.add(score("user_feedback", T0 + 1, value), "bot", "gpt-4o")
    assert w.add(score("user_feedback", T0 + 2, label="thumbs_down"), "bot", "gpt-4o")
    assert w.add(score("user_feedback", T0 + 3, 0.25), "other-svc", "")
    assert w.add(score("hallucination", T0 + 4, 1, label="yes"), "bot", "gpt-4o")
    assert w.due(T0 + 10.4) == []  # the grace has not passed
    out = by_key(w.due(T0 + 10.6))
    assert set(out) == {
        (10, T0, "user_feedback", "bot", "gpt-4o"),
        (10, T0, "user_feedback", "other-svc", ""),
        (10, T0, "hallucination", "bot", "gpt-4o"),
    }
    fb = out[(10, T0, "user_feedback", "bot", "gpt-4o")]
    assert (fb.count, fb.value_count, fb.value_sum, fb.value_min, fb.value_max) == (5, 4, 2.5, 0.0, 1.0)
    assert fb.label_counts == {"thumbs_down": 1}
    assert fb.value_counts == {"1.0": 2, "0.0": 1, "0.5": 1}
    assert fb.revision == 0
    h = out[(10, T0, "hallucination", "bot", "gpt-4o")]
    assert (h.count, h.label_counts, h.value_counts) == (1, {"yes": 1}, {"1.0": 1})
    # the 60 s window closes a minute later, with the same totals
    minute = by_key(w.due(T0 + 61))
    assert minute[(60, T0, "user_feedback", "bot", "gpt-4o")].count == 5


def test_the_same_score_id_counts_once_also_after_a_snapshot() -> None:
    w = windows()
    first = score("user_feedback", T0 + 1, 1.0)
    assert w.add(first, "bot", "m")
    assert not w.add(first, "bot", "m")  # a retry: same id
    restored = ScoreWindows.from_state(w.to_state(), clock=lambda: T0 + 5)
    assert not restored.add(first, "bot", "m")
    assert restored.add(score("user_feedback", T0 + 2, 0.0), "bot", "m")
    (record,) = [r for r in restored.due(T0 + 11) if r.window_seconds == 10]
    assert (record.count, record.value_sum) == (2, 1.0)
    assert restored.stats.duplicates == 2  # the counters are restored too


def test_late_scores_make_revisions_and_too_late_ones_are_dropped_and_counted() -> None:
    w = windows(clock=T0 + 700)
    assert w.add(score("s", T0 + 1, 1.0), "a", "m")
    w.due(T0 + 11)
    assert w.add(score("s", T0 + 2, 0.0), "a", "m")  # late for the 10 s window
    revised = [r for r in w.due(T0 + 12) if r.window_seconds == 10]
    assert [(r.revision, r.count, r.value_sum) for r in revised] == [(1, 2, 1.0)]
    w.due(T0 + 700)  # closes the 60 s window (its first emission) and forgets the 10 s one
    w.due(T0 + 701)  # forgets the 60 s one, past its retention too
    assert not w.add(score("s", T0 + 3, 1.0), "a", "m")
    assert w.stats.dropped_late_scores == 2  # both sizes


def test_distinct_labels_are_bounded_per_group() -> None:
    w = windows()
    for i in range(MAX_SCORE_DISTINCT + 5):
        w.add(score("tag", T0 + 1, label=f"l{i}"), "a", "m")
    (record,) = [r for r in w.due(T0 + 11) if r.window_seconds == 10]
    assert len(record.label_counts) == MAX_SCORE_DISTINCT + 1 and record.label_counts[OTHER] == 5
    assert sum(record.label_counts.values()) == MAX_SCORE_DISTINCT + 5


def test_trace_groups_are_bounded_and_forget_the_oldest() -> None:
    groups = TraceGroups(max_traces=3)
    for i in range(5):
        groups.remember(f"{i:032x}", "svc", "m")
    assert len(groups) == 3
    assert groups.get(f"{0:032x}") is None and groups.get(f"{4:032x}") == ("svc", "m")


def test_the_merger_adds_partitions_and_keeps_the_largest_cumulative_record() -> None:
    a, b = windows(0), windows(1)
    a.add(score("fb", T0 + 1, 1.0), "bot", "m")
    a.add(score("fb", T0 + 2, 0.0), "bot", "m")
    b.add(score("fb", T0 + 3, 0.5), "bot", "m")
    records = [r for r in a.due(T0 + 11) + b.due(T0 + 11) if r.window_seconds == 10]
    merger = ScoreRollupMerger(merge_delay_seconds=1)
    batch = decode_partial_batch(encode_partials([], records))  # as they travel over Kafka
    assert batch.partials == []
    for record in batch.scores + batch.scores:  # delivered twice
        merger.add(record)
    (row,) = merger.due(T0 + 12)
    assert (row.count, row.value_count, row.value_sum, row.value_min, row.value_max) == (3, 3, 1.5, 0.0, 1.0)
    assert math.isclose(row.value_avg, 0.5)
    assert row.value_counts == {"1.0": 1, "0.0": 1, "0.5": 1}
    assert merger.stats.duplicates == 2
    assert decode_score_rollups(encode_score_rollups([row])) == [row]
    restored = ScoreRollupMerger.from_state(merger.to_state())
    assert isinstance(restored, ScoreRollupMerger) and restored.due(T0 + 13) == []
    assert isinstance(RollupMerger.from_state(RollupMerger().to_state()), RollupMerger)


# ---- rules -------------------------------------------------------------------------------------------

RULES = """
[[rules]]
name = "feedback-low"
metric = "score_avg"
score = "user_feedback"
window_seconds = 900
comparison = "<"
threshold = 0.6
min_count = 3

[[rules]]
name = "hallucinations"
metric = "score_count"
score = "hallucination"
value = 1
window_seconds = 300
comparison = ">"
threshold = 20
severity = "critical"
group_by = ["service", "model"]

[[rules]]
name = "thumbs-down"
metric = "score_count"
score = "user_*"
label = "thumbs_down"
window_seconds = 60
comparison = ">"
threshold = 5
filters = { service = "bot" }
group_by = ["name"]
"""


def test_score_rules_parse() -> None:
    low, hallucinations, thumbs = parse_rules(RULES)
    assert (low.metric, low.score, low.base_seconds, low.windows, low.on_scores) == (
        "score_avg",
        "user_feedback",
        60,
        15,
        True,
    )
    assert (hallucinations.score_value, hallucinations.score_label, hallucinations.group_by) == (
        1.0,
        "",
        ("service", "model"),
    )
    assert (thumbs.score_label, thumbs.group_by, thumbs.filters) == ("thumbs_down", ("name",), {"service": "bot"})
    assert thumbs.matches("bot", "", "user_feedback", "m") and not thumbs.matches("bot", "", "quality", "m")


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ('metric = "score_avg"', "score", "required"),
        ('metric = "score_avg"\nscore = "x"\nvalue = 1', "value", "only score_count"),
        ('metric = "score_count"\nscore = "x"\nvalue = 1\nlabel = "y"', "label", "not both"),
        ('metric = "score_count"\nscore = "x"\nvalue = "one"', "value", "must be a number"),
        ('metric = "score_count"\nscore = "x"\nfilters = { kind = "LLM" }', "filters.kind", "score rule filters"),
        ('metric = "score_count"\nscore = "x"\ngroup_by = ["kind"]', "group_by", "service, name, model"),
        ('metric = "count"\nscore = "x"', "score", "only for the score metrics"),
    ],
)
def test_bad_score_rules_name_the_field(extra: str, field: str, words: str) -> None:
    text = f'[[rules]]\nname = "r"\nwindow_seconds = 60\ncomparison = ">"\nthreshold = 1\n{extra}\n'
    with pytest.raises(RuleError) as caught:
        parse_rules(text)
    assert f"field '{field}'" in str(caught.value) and words in str(caught.value), str(caught.value)


def score_row(start: int, name: str, service: str, values: dict[float, int], labels: dict[str, int] | None = None):
    count = sum(values.values()) + sum((labels or {}).values())
    value_count = sum(values.values())
    value_sum = sum(v * n for v, n in values.items())
    return ScoreRollup(
        window_start=start,
        window_seconds=10,
        name=name,
        service=service,
        model="m",
        count=count,
        value_count=value_count,
        value_sum=value_sum,
        value_avg=value_sum / value_count if value_count else 0.0,
        value_min=min(values, default=0.0),
        value_max=max(values, default=0.0),
        label_counts=labels or {},
        value_counts={repr(float(v)): n for v, n in values.items()},
    )


def test_a_score_average_rule_fires_and_resolves_and_survives_a_snapshot() -> None:
    (rule,) = parse_rules(
        '[[rules]]\nname = "fb"\nmetric = "score_avg"\nscore = "user_feedback"\nwindow_seconds = 10\n'
        'comparison = "<"\nthreshold = 0.6\nmin_count = 2\n'
    )
    evaluator = AlertEvaluator([rule])
    now_ms = (T0 + 100) * 1000
    assert evaluator.process([], now_ms, scores=[score_row(T0, "user_feedback", "bot", {1.0: 3})]) == []
    (fired,) = evaluator.process([], now_ms, scores=[score_row(T0 + 10, "user_feedback", "bot", {0.0: 3, 1.0: 1})])
    assert (fired.state, fired.rule, fired.service, fired.value, fired.labels["score"]) == (
        "firing",
        "fb",
        "bot",
        0.25,
        "user_feedback",
    )
    assert "average of user_feedback scores in bot is 0.25" in fired.message, fired.message
    evaluator = AlertEvaluator.from_state([rule], evaluator.to_state())
    # still bad: no second "firing"; another score's name does not count
    rows = [score_row(T0 + 20, "user_feedback", "bot", {0.5: 2}), score_row(T0 + 20, "other", "bot", {1.0: 9})]
    assert evaluator.process([], now_ms, scores=rows) == []
    (resolved,) = evaluator.process([], now_ms, scores=[score_row(T0 + 30, "user_feedback", "bot", {1.0: 2})])
    assert resolved.state == "resolved" and resolved.value == 1.0


def test_a_score_count_rule_counts_one_value_or_label() -> None:
    value_rule, label_rule = parse_rules(
        '[[rules]]\nname = "h"\nmetric = "score_count"\nscore = "hallucination"\nvalue = 1\nwindow_seconds = 20\n'
        'comparison = ">"\nthreshold = 2\n'
        '[[rules]]\nname = "down"\nmetric = "score_count"\nscore = "user_feedback"\nlabel = "thumbs_down"\n'
        'window_seconds = 10\ncomparison = ">"\nthreshold = 1\n'
    )
    evaluator = AlertEvaluator([value_rule, label_rule])
    now_ms = (T0 + 100) * 1000
    rows = [
        score_row(T0, "hallucination", "bot", {1.0: 2, 0.0: 5}),
        score_row(T0, "user_feedback", "bot", {}, {"thumbs_down": 1, "thumbs_up": 7}),
    ]
    assert evaluator.process([], now_ms, scores=rows) == []  # 2 ones, 1 thumbs-down: not above
    rows = [
        score_row(T0 + 10, "hallucination", "bot", {1.0: 1}),
        score_row(T0 + 10, "user_feedback", "bot", {}, {"thumbs_down": 2}),
    ]
    alerts = {a.rule: a for a in evaluator.process([], now_ms, scores=rows)}
    assert alerts["h"].state == "firing" and alerts["h"].value == 3.0  # 2 + 1 over the 20 s window
    assert alerts["h"].labels["value"] == "1" and "hallucination = 1 scores" in alerts["h"].message
    assert alerts["down"].state == "firing" and alerts["down"].value == 2.0


# ---- the processor (Faust-free) ------------------------------------------------------------------------


class Sent:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def send(self, *, key=None, value=None, partition=None) -> None:
        self.values.append(value)


def test_the_processor_looks_up_the_trace_and_counts_unknown_traces_under_other() -> None:
    known = {TRACE: ("bot", "gpt-4o")}
    out = Sent()
    processor = ScoreProcessor(
        partials_out=out,
        lookup=lambda partition, trace_id: known.get(trace_id),
        options=WindowOptions(grace_s=0.0),
    )
    at = T0 + 1
    unknown = Score(trace_id="cd" * 16, name="fb", value=1.0, created_at=at * NS)
    processor.on_message(3, 0, encode_score_batch([score("fb", at, 0.5), unknown]))
    processor.on_message(3, 1, b"not msgpack")  # skipped and counted; the sink dead-letters it
    assert processor.stats.rejected == 1 and processor.stats.scores == 2
    asyncio.run(processor.on_tick())
    records = [r for value in out.values for r in decode_partial_batch(value).scores if r.window_seconds == 10]
    assert {(r.service, r.model, r.partition, r.count) for r in records} == {
        ("bot", "gpt-4o", 3, 1),
        (OTHER, OTHER, 3, 1),
    }
