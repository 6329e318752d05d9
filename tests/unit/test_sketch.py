"""The latency sketch: quantiles within 1 % of the exact order statistics, exact merges, compact bytes."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.core.sketch import RELATIVE_ACCURACY, LatencySketch

QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact_quantile(values: list[float], q: float) -> float:
    """The order statistic the sketch estimates: rank floor(q·(n-1)) of the sorted values."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_within_accuracy(sketch: LatencySketch, values: list[float]) -> None:
    for q in QUANTILES:
        exact = exact_quantile(values, q)
        estimate = sketch.quantile(q)
        assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact + 1e-9, (q, estimate, exact)


def sketch_of(values: list[float]) -> LatencySketch:
    sketch = LatencySketch()
    for value in values:
        sketch.add(value)
    return sketch


@pytest.mark.parametrize(
    "distribution",
    [
        lambda r: r.lognormvariate(6, 1.2),  # typical LLM call latencies, ms
        lambda r: r.uniform(0.5, 60_000),
        lambda r: r.expovariate(1 / 200),
        lambda r: 10 ** r.uniform(-2, 7),  # ten microseconds to three hours
    ],
)
def test_quantiles_within_relative_accuracy(distribution) -> None:
    rng = random.Random(42)
    values = [distribution(rng) for _ in range(20_000)]
    assert_within_accuracy(sketch_of(values), values)


def test_summary_values_are_exact() -> None:
    values = [12.5, 3.25, 800.0, 41.0, 41.0]
    sketch = sketch_of(values)
    assert sketch.count == 5
    assert sketch.min == 3.25 and sketch.max == 800.0
    assert sketch.sum == pytest.approx(sum(values))
    assert sketch.quantile(0) == 3.25 and sketch.quantile(1) == 800.0
    assert sketch.mean == pytest.approx(sum(values) / 5)


def test_constant_and_tiny_values() -> None:
    assert sketch_of([250.0] * 1000).quantiles((0.5, 0.99)) == [250.0, 250.0]
    zeros = [0.0] * 90 + [5.0] * 10
    sketch = sketch_of(zeros)
    assert sketch.quantile(0.5) == 0.0  # sub-microsecond values: reported as the minimum
    assert sketch.quantile(0.95) == pytest.approx(5.0, rel=RELATIVE_ACCURACY)


def test_empty_sketch_and_bad_quantile() -> None:
    sketch = LatencySketch()
    assert sketch.count == 0 and sketch.quantile(0.5) == 0.0
    with pytest.raises(ValueError, match="quantile"):
        sketch.quantile(1.5)
    assert LatencySketch.from_bytes(sketch.to_bytes()) == sketch


def test_merge_equals_sketch_of_all_values() -> None:
    rng = random.Random(7)
    parts = [[rng.lognormvariate(5, 1) for _ in range(3_000)] for _ in range(3)]
    merged = LatencySketch()
    for part in parts:
        merged.merge(sketch_of(part))
    whole = [v for part in parts for v in part]
    assert merged == sketch_of(whole)
    assert merged.count == len(whole)
    assert_within_accuracy(merged, whole)


def test_bytes_round_trip_is_exact_and_compact() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(6, 1.2) for _ in range(50_000)]
    sketch = sketch_of(values)
    data = sketch.to_bytes()
    assert LatencySketch.from_bytes(data) == sketch
    assert len(data) < 2_000  # a few hundred buckets at one to three bytes each
    assert_within_accuracy(LatencySketch.from_bytes(data), values)


def test_from_bytes_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        LatencySketch.from_bytes(b"\x00not a sketch")


def test_huge_values_are_clamped_but_max_stays_exact() -> None:
    sketch = sketch_of([1e12, 5.0])
    assert sketch.max == 1e12 and sketch.quantile(1.0) == 1e12
    assert len(sketch.to_bytes()) < 100


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(min_value=0.01, max_value=1e8, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=300,
    ),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_any_values_any_quantile(values: list[float], q: float) -> None:
    sketch = sketch_of(values)
    exact = exact_quantile(values, q)
    assert abs(sketch.quantile(q) - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9)
    assert LatencySketch.from_bytes(sketch.to_bytes()) == sketch
