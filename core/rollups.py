"""The records of windowed rollups, as they cross processes: the partial a worker sends the merger, the
final row the merger publishes, and their Kafka envelopes.

Public API:
    WINDOW_SIZES                                    (10, 60): the rollup window sizes, in seconds
    RollupKey(service, kind, name, model)           NamedTuple; the group of a span
    OTHER / OTHER_KEY                               the overflow group ("__other__" in all four fields)
    RollupPartialRecord                             worker -> merger, on topics.PARTIALS_TOPIC
    encode_partials(records) -> bytes / decode_partials(data) -> list[RollupPartialRecord]
    Rollup                                          exactly the `rollups` table's columns
    encode_rollups(rollups) -> bytes / decode_rollups(data) -> list[Rollup]   on topics.ROLLUPS
    ScorePartialRecord / ScoreRollup                the same two steps for scores (per name, service, model)
    decode_partial_batch(data) -> RollupPartialBatch   spans', scores' and budgets' partials of one message
    BudgetPartialRecord                             a budget rule's per-key sums of one window and partition
    encode_score_rollups(rows) -> bytes / decode_score_rollups(data)   on topics.SCORE_ROLLUPS
    score_value_key(value) -> str                   how a numeric score value is counted (`value_counts`)

Why in core: the worker writes these, the merger (another worker, maybe another host) and the sink read
them, and `tracehouse top` reads the rows back; a record owned by one of them would make the others
import the pipeline. How the windows are kept (pipeline/windows.py) and merged (pipeline/merger.py)
stays in the pipeline.
"""

from __future__ import annotations

import base64
from typing import NamedTuple

import msgspec

from tracehouse.core.schema import SCHEMA_VERSION, SchemaError
from tracehouse.core.sketch import LatencySketch

# The window sizes every worker rolls up into (10 s for alerting, 60 s for dashboards). Alert rules are
# evaluated over these, and `tracehouse top` reads the 10 s rows for short ranges, the 60 s ones for long.
WINDOW_SIZES: tuple[int, ...] = (10, 60)
FINE_WINDOW_SECONDS, COARSE_WINDOW_SECONDS = WINDOW_SIZES

OTHER = "__other__"


class RollupKey(NamedTuple):
    """The group a span is rolled up in. A plain tuple underneath: hashes and compares as one."""

    service: str
    kind: str
    name: str
    model: str


OTHER_KEY = RollupKey(OTHER, OTHER, OTHER, OTHER)


class RollupPartialRecord(msgspec.Struct, kw_only=True):
    """One partition's cumulative aggregates for one (window, group): what a worker sends the merger.

    `revision` 0 is the window's first closing on that partition; each re-emission after late spans
    increments it. The record is cumulative, so a later revision replaces an earlier one.
    """

    window_start: int  # epoch seconds
    window_seconds: int
    service: str
    kind: str
    name: str
    model: str
    partition: int
    revision: int
    count: int
    error_count: int
    rate_limit_count: int
    latency_max_ms: float
    latency_sketch: bytes  # LatencySketch.to_bytes()
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float

    @property
    def key(self) -> RollupKey:
        return RollupKey(self.service, self.kind, self.name, self.model)


# Scores (core/scores.py) are rolled up per (score name, service, model) of their trace, in the same
# windows: how many, the sum/min/max of their numeric values, and how many of each label and of each
# numeric value (for rules such as "more than 20 `hallucination` = 1"). Distinct labels and values are
# counted up to MAX_SCORE_DISTINCT per group and window; the rest under OTHER (continuous scores, e.g.
# a 0..1 similarity, fill the value map quickly: rules on them use the average, not a value count).
MAX_SCORE_DISTINCT = 20


def score_value_key(value: float) -> str:
    """A numeric score value as a `value_counts` key: `1` and `1.0` are the same value, "1.0"."""
    return repr(float(value))


class ScoreRollupKey(NamedTuple):
    """The group a score is rolled up in: its name, and its trace's root service and (first) model."""

    name: str
    service: str
    model: str


class ScorePartialRecord(msgspec.Struct, kw_only=True):
    """One partition's cumulative score aggregates for one (window, group): worker -> merger, beside the
    spans' partials and with their rules (cumulative, `revision`, the larger count wins)."""

    window_start: int  # epoch seconds, of the scores' created_at
    window_seconds: int
    name: str
    service: str
    model: str
    partition: int
    revision: int
    count: int
    value_count: int  # scores with a numeric value (the average's denominator)
    value_sum: float
    value_min: float
    value_max: float
    label_counts: dict[str, int]
    value_counts: dict[str, int]  # score_value_key(value) -> count

    @property
    def key(self) -> ScoreRollupKey:
        return ScoreRollupKey(self.name, self.service, self.model)


class BudgetPartialRecord(msgspec.Struct, kw_only=True):
    """One partition's running per-key sums of one budget rule in one window (pipeline/budgets.py):
    worker -> merger, beside the spans' partials. Cumulative like them: `updates` (spans folded in) only
    grows, so the merger keeps, per (rule, window, partition), the record with the most updates.

    `values` are the space-saving counters (key -> sum, an upper bound of the key's true sum on this
    partition); `errors` the overcount bound of the keys that took over an evicted counter; `floor` the
    smallest counter once the summary is full (0 before): any key not in `values` summed at most that."""

    rule: str
    window_start: int  # epoch seconds
    window_seconds: int
    partition: int
    updates: int
    values: dict[str, float]
    errors: dict[str, float] = {}
    floor: float = 0.0


class RollupPartialBatch(msgspec.Struct):
    """One Kafka message on the internal partials topic (topics.PARTIALS_TOPIC): many partial records."""

    partials: list[RollupPartialRecord]
    v: int = 1
    scores: list[ScorePartialRecord] = []
    budgets: list[BudgetPartialRecord] = []  # absent in batches written before budgets


_encoder = msgspec.msgpack.Encoder()
_partials_decoder = msgspec.msgpack.Decoder(RollupPartialBatch)


def encode_partials(
    records: list[RollupPartialRecord],
    scores: list[ScorePartialRecord] | None = None,
    budgets: list[BudgetPartialRecord] | None = None,
) -> bytes:
    return _encoder.encode(RollupPartialBatch(partials=records, scores=scores or [], budgets=budgets or []))


def decode_partials(data: bytes) -> list[RollupPartialRecord]:
    return _partials_decoder.decode(data).partials


def decode_partial_batch(data: bytes) -> RollupPartialBatch:
    return _partials_decoder.decode(data)


class Rollup(msgspec.Struct, kw_only=True):
    """A final rollup row: exactly the columns of the `rollups` table, in its order.

    `latency_sketch` is the merged LatencySketch, base64 of its msgpack form (the column is a String),
    so any window range can be re-merged later for exact-to-1 % quantiles over longer periods.
    """

    window_start: int  # epoch seconds
    window_seconds: int
    service: str
    kind: str
    name: str
    model: str
    count: int
    error_count: int
    rate_limit_count: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    latency_sketch: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float

    @property
    def key(self) -> RollupKey:
        return RollupKey(self.service, self.kind, self.name, self.model)

    def sketch(self) -> LatencySketch:
        return LatencySketch.from_bytes(base64.b64decode(self.latency_sketch))


class RollupBatch(msgspec.Struct, gc=False):
    """One Kafka message on `tracehouse.rollups`."""

    rollups: list[Rollup]
    v: int = SCHEMA_VERSION


_rollups_decoder = msgspec.msgpack.Decoder(RollupBatch)


def encode_rollups(rollups: list[Rollup]) -> bytes:
    return _encoder.encode(RollupBatch(rollups=rollups))


def decode_rollups(data: bytes) -> list[Rollup]:
    try:
        return _rollups_decoder.decode(data).rollups
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not a rollup batch: {exc}") from None


class ScoreRollup(msgspec.Struct, kw_only=True):
    """A final score rollup row: exactly the columns of the `score_rollups` table, in its order.
    `value_avg` is value_sum / value_count (0 when no score had a value); min and max likewise 0."""

    window_start: int  # epoch seconds
    window_seconds: int
    name: str
    service: str
    model: str
    count: int
    value_count: int
    value_sum: float
    value_avg: float
    value_min: float
    value_max: float
    label_counts: dict[str, int]
    value_counts: dict[str, int]

    @property
    def key(self) -> ScoreRollupKey:
        return ScoreRollupKey(self.name, self.service, self.model)


class ScoreRollupBatch(msgspec.Struct, gc=False):
    """One Kafka message on `tracehouse.score-rollups`."""

    score_rollups: list[ScoreRollup]
    v: int = SCHEMA_VERSION


_score_rollups_decoder = msgspec.msgpack.Decoder(ScoreRollupBatch)


def encode_score_rollups(rows: list[ScoreRollup]) -> bytes:
    return _encoder.encode(ScoreRollupBatch(score_rollups=rows))


def decode_score_rollups(data: bytes) -> list[ScoreRollup]:
    try:
        return _score_rollups_decoder.decode(data).score_rollups
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not a score rollup batch: {exc}") from None
