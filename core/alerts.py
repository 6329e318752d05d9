"""The alert record, as it crosses processes: what the worker's merger publishes on `tracehouse.alerts`
and the sink stores in the `alerts` table.

Public API:
    Alert                                     exactly the `alerts` table's columns
    TRACE_RULE_WINDOW                         `window_seconds` of a guard alert (a trace rule's, not a window's)
    encode_alerts(alerts) -> bytes / decode_alerts(data) -> list[Alert]

How alerts are decided (pipeline/alert_evaluator.py) and told (pipeline/alert_notify.py) stays in the
pipeline; the record is here so that the sink and the CLI read it without importing the pipeline.
"""

from __future__ import annotations

import msgspec

from tracehouse.core.schema import SCHEMA_VERSION, SchemaError

TRACE_RULE_WINDOW = 0


class Alert(msgspec.Struct, kw_only=True):
    """One state change of a rule for one group: exactly the columns of the `alerts` table.

    A guard alert (a rule of type `trace`, pipeline/guards.py) is about one open trace: it carries the
    trace's id, user and session, `window_start` is the trace's start (seconds) and `window_seconds` is
    TRACE_RULE_WINDOW. Those three fields default to "" so that records written before them still decode.
    """

    fired_at: int  # epoch milliseconds
    rule: str
    service: str  # the group's service, the rule's exact service filter, or "*"
    severity: str
    value: float
    threshold: float
    state: str  # "firing" | "resolved"
    message: str
    window_start: int  # epoch seconds
    window_seconds: int
    labels: dict[str, str]
    trace_id: str = ""
    user_id: str = ""
    session_id: str = ""


class AlertBatch(msgspec.Struct, gc=False):
    """One Kafka message on `tracehouse.alerts`."""

    alerts: list[Alert]
    v: int = SCHEMA_VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AlertBatch)


def encode_alerts(alerts: list[Alert]) -> bytes:
    return _encoder.encode(AlertBatch(alerts=alerts))


def decode_alerts(data: bytes) -> list[Alert]:
    try:
        return _decoder.decode(data).alerts
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not an alert batch: {exc}") from None
