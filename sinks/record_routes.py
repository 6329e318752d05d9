"""Routes for the low-volume records: rollups, score rollups and alerts (the pipeline's outputs) and scores
(added after the fact); all land in ReplacingMergeTree tables, so a redelivered record replaces its twin."""

from __future__ import annotations

import time

import msgspec

from tracehouse.core import topics
from tracehouse.core.alerts import Alert, decode_alerts
from tracehouse.core.rollups import Rollup, ScoreRollup, decode_rollups, decode_score_rollups
from tracehouse.core.schema import SchemaError
from tracehouse.core.scores import Score, decode_score_batch
from tracehouse.sinks.routes import Decoded, Rejected, Route


class AlertRow(msgspec.Struct):
    """One row of `tracehouse.alerts`; `fired_at` as DateTime64(3) text."""

    fired_at: str
    rule: str
    service: str
    severity: str
    value: float
    threshold: float
    state: str
    message: str
    window_start: int
    window_seconds: int
    labels: dict[str, str]
    trace_id: str = ""  # the three of guard alerts (rules of type trace); "" for window alerts
    user_id: str = ""
    session_id: str = ""
    identity: str = ""  # "<user_id>|<session_id>": in the key, so budget alerts of two users stay two rows


def alert_row(a: Alert) -> AlertRow:
    seconds, millis = divmod(a.fired_at, 1000)
    return AlertRow(
        f"{seconds}.{millis:03d}",
        a.rule,
        a.service,
        a.severity,
        a.value,
        a.threshold,
        a.state,
        a.message,
        a.window_start,
        a.window_seconds,
        a.labels,
        a.trace_id,
        a.user_id,
        a.session_id,
        f"{a.user_id}|{a.session_id}" if a.user_id or a.session_id else "",
    )


def _month_of(row: msgspec.Struct) -> int:
    """`toYYYYMM(fired_at)` as a number (UTC): the partition of an alert."""
    when = time.gmtime(int(row.fired_at.partition(".")[0]))  # type: ignore[attr-defined]
    return when.tm_year * 12 + when.tm_mon


def rollups_route() -> Route:
    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Decoded:
        try:
            rows: list[msgspec.Struct] = list(decode_rollups(value))
            return rows, []
        except SchemaError as exc:
            return [], [Rejected(exc.reason, value)]

    return Route(
        topics.ROLLUPS,
        "rollups",
        Rollup.__struct_fields__,
        decode,
        partition_key=lambda row: row.window_start // 86_400,  # type: ignore[attr-defined]
    )


def score_rollups_route() -> Route:
    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Decoded:
        try:
            rows: list[msgspec.Struct] = list(decode_score_rollups(value))
            return rows, []
        except SchemaError as exc:
            return [], [Rejected(exc.reason, value)]

    return Route(
        topics.SCORE_ROLLUPS,
        "score_rollups",
        ScoreRollup.__struct_fields__,
        decode,
        partition_key=lambda row: row.window_start // 86_400,  # type: ignore[attr-defined]
    )


def alerts_route() -> Route:
    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Decoded:
        try:
            return [alert_row(a) for a in decode_alerts(value)], []
        except SchemaError as exc:
            return [], [Rejected(exc.reason, value)]

    return Route(topics.ALERTS, "alerts", AlertRow.__struct_fields__, decode, partition_key=_month_of)


class ScoreRow(msgspec.Struct):
    """One row of `tracehouse.scores`; `created_at` as DateTime64(9) text, `ingest_partition` the Kafka
    partition the score came from (the cluster mode's sharding key, like spans')."""

    score_id: str
    trace_id: str
    span_id: str
    name: str
    value: float | None
    label: str
    comment: str
    source: str
    author: str
    created_at: str
    ingest_partition: int


def score_row(s: Score, partition: int) -> ScoreRow:
    seconds, nanos = divmod(s.created_at, 1_000_000_000)
    return ScoreRow(
        s.score_id, s.trace_id, s.span_id, s.name, s.value, s.label, s.comment, s.source, s.author,
        f"{seconds}.{nanos:09d}", partition,
    )  # fmt: skip


def scores_route() -> Route:
    """`tracehouse.scores` -> `scores`: a score that does not validate goes to the DLQ with its reason,
    its neighbours in the message land."""

    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Decoded:
        try:
            scores, bad = decode_score_batch(value)
        except SchemaError as exc:
            return [], [Rejected(exc.reason, value)]
        rows: list[msgspec.Struct] = [score_row(s, partition) for s in scores]
        return rows, [Rejected(b.reason, b.payload) for b in bad]

    return Route(topics.SCORES, "scores", ScoreRow.__struct_fields__, decode)
