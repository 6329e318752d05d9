"""A mergeable latency quantile sketch: DDSketch's logarithmic buckets, 1 % relative accuracy.

Public API:
    LatencySketch()                      empty sketch
      .add(value_ms)                     record one latency (finite, >= 0)
      .merge(other)                      fold another sketch in (in place)
      .quantile(q) -> float              value at quantile q in [0, 1], within 1 % of the exact one
      .quantiles(qs) -> list[float]      several quantiles with one sort of the buckets
      .count, .sum, .min, .max           exact summary values
      .to_bytes() / LatencySketch.from_bytes(data)   compact msgpack form (Kafka records, snapshots)
    RELATIVE_ACCURACY                    0.01

It lives in core because it is part of the records that cross processes: a worker's partial rollup
carries one (as bytes), the final `rollups` row carries the merged one (base64), and the merger, the
alert evaluator and `tracehouse top` decode and merge them.

Why our own and not the `ddsketch` package: its add() is as fast (~0.4 µs), but its wire form is
protobuf and its store internals are private, while partial rollups must travel over Kafka and sit in
snapshots as small msgspec values. The algorithm is the same (bucket k holds (γ^(k-1), γ^k] with
γ = (1+α)/(1-α), estimate 2γ^k/(γ+1)), so every quantile is within α of the exact order statistic
at rank floor(q·(n-1)), and sketches merge exactly (bucket counts add).

Memory is bounded by the value range, not the count: values below 1 µs count in a zero bucket (reported
as the exact minimum) and values are clamped at ~11.6 days, so at most ~1,400 buckets ever exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_MULTIPLIER = 1.0 / math.log(_GAMMA)
_ESTIMATE_FACTOR = 2.0 / (_GAMMA + 1.0)  # value of bucket k = γ^k · 2/(γ+1)
MIN_TRACKED_MS = 1e-3  # below this (sub-microsecond), values go to the zero bucket
MAX_TRACKED_MS = 1e9  # above this, values are clamped into the last bucket (max stays exact)
_WIRE_VERSION = 1
_log = math.log
_ceil = math.ceil


class _SketchWire(msgspec.Struct, array_like=True):
    """The encoded form: bucket keys delta-encoded so most take one msgpack byte."""

    v: int
    alpha: float
    count: int
    zero: int
    sum: float
    min: float
    max: float
    key_deltas: list[int]  # first entry absolute, then differences between sorted keys
    counts: list[int]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_SketchWire)


class LatencySketch:
    """Quantiles of latencies in milliseconds, mergeable across partitions and windows."""

    __slots__ = ("_bins", "count", "max", "min", "sum", "zero_count")

    def __init__(self) -> None:
        self._bins: dict[int, int] = {}
        self.count = 0
        self.zero_count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, value_ms: float) -> None:
        """Record one value. Hot path (once per span): a log, a dict update, no allocation."""
        self.count += 1
        self.sum += value_ms
        if value_ms < self.min:
            self.min = value_ms
        if value_ms > self.max:
            self.max = value_ms
        if value_ms > MIN_TRACKED_MS:
            if value_ms > MAX_TRACKED_MS:
                value_ms = MAX_TRACKED_MS
            key = _ceil(_log(value_ms) * _MULTIPLIER)
            bins = self._bins
            bins[key] = bins.get(key, 0) + 1
        else:
            self.zero_count += 1

    def merge(self, other: LatencySketch) -> None:
        """Add `other`'s values to this sketch (exact: bucket counts add)."""
        if other.count == 0:
            return
        bins = self._bins
        for key, n in other._bins.items():
            bins[key] = bins.get(key, 0) + n
        self.count += other.count
        self.zero_count += other.zero_count
        self.sum += other.sum
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max

    def quantile(self, q: float) -> float:
        """The value at quantile `q` (0 = min, 1 = max); 0.0 for an empty sketch."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """Several quantiles at once (one sort of the buckets)."""
        qs = list(qs)
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count == 0:
            return [0.0 for _ in qs]
        keys = sorted(self._bins)
        out: list[float] = []
        for q in qs:
            rank = q * (self.count - 1)
            if rank >= self.count - 1:
                out.append(self.max)  # the largest value is known exactly
                continue
            cumulative = self.zero_count
            if cumulative > rank:
                out.append(self.min)  # the zero bucket: values below 1 µs, min is the best estimate
                continue
            estimate = self.max
            for key in keys:
                cumulative += self._bins[key]
                if cumulative > rank:
                    estimate = _GAMMA**key * _ESTIMATE_FACTOR
                    break
            out.append(min(max(estimate, self.min), self.max))
        return out

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def copy(self) -> LatencySketch:
        clone = LatencySketch()
        clone.merge(self)
        return clone

    def to_bytes(self) -> bytes:
        """Compact msgpack form (typically a few hundred bytes)."""
        keys = sorted(self._bins)
        deltas = [key - previous for previous, key in zip([0, *keys], keys, strict=False)]
        return _encoder.encode(
            _SketchWire(
                v=_WIRE_VERSION,
                alpha=RELATIVE_ACCURACY,
                count=self.count,
                zero=self.zero_count,
                sum=self.sum,
                min=self.min if self.count else 0.0,
                max=self.max,
                key_deltas=deltas,
                counts=[self._bins[k] for k in keys],
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        """Decode `to_bytes` output; raises ValueError on a foreign or corrupt sketch."""
        try:
            wire = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a latency sketch: {exc}") from None
        if wire.v != _WIRE_VERSION or wire.alpha != RELATIVE_ACCURACY:
            raise ValueError(f"sketch version {wire.v} / accuracy {wire.alpha} is not mergeable with this one")
        if len(wire.key_deltas) != len(wire.counts):
            raise ValueError("corrupt sketch: keys and counts differ in length")
        sketch = cls()
        key = 0
        bins = sketch._bins
        for delta, n in zip(wire.key_deltas, wire.counts, strict=True):
            key += delta
            bins[key] = n
        sketch.count = wire.count
        sketch.zero_count = wire.zero
        sketch.sum = wire.sum
        sketch.min = wire.min if wire.count else math.inf
        sketch.max = wire.max
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySketch):
            return NotImplemented
        return (
            self._bins == other._bins
            and self.count == other.count
            and self.zero_count == other.zero_count
            and self.min == other.min
            and self.max == other.max
            and math.isclose(self.sum, other.sum, rel_tol=1e-12, abs_tol=1e-9)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LatencySketch(count={self.count}, buckets={len(self._bins)}, max={self.max:g})"
