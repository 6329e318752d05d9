"""Routes for the pipeline's low-volume outputs: rollups and alerts (ReplacingMergeTree tables, so a
redelivered record replaces its twin)."""

from __future__ import annotations

import msgspec

from tracehouse.core import topics
from tracehouse.core.schema import SchemaError
from tracehouse.pipeline.alerts import Alert
from tracehouse.pipeline.outputs import decode_alerts, decode_rollups
from tracehouse.pipeline.rollups import Rollup
from tracehouse.sinks.routes import Decoded, Route


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


def alert_row(a: Alert) -> AlertRow:
    seconds, millis = divmod(a.fired_at, 1000)
    return AlertRow(
        f"{seconds}.{millis:03d}", a.rule, a.service, a.severity, a.value, a.threshold, a.state, a.message,
        a.window_start, a.window_seconds, a.labels,
    )


def rollups_route() -> Route:
    def decode(value: bytes, partition: int, offset: int) -> Decoded:
        try:
            rows: list[msgspec.Struct] = list(decode_rollups(value))
            return rows, []
        except SchemaError as exc:
            return [], [(exc.reason, value)]

    return Route(topics.ROLLUPS, "rollups", Rollup.__struct_fields__, decode)


def alerts_route() -> Route:
    def decode(value: bytes, partition: int, offset: int) -> Decoded:
        try:
            return [alert_row(a) for a in decode_alerts(value)], []
        except SchemaError as exc:
            return [], [(exc.reason, value)]

    return Route(topics.ALERTS, "alerts", AlertRow.__struct_fields__, decode)
