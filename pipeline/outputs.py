"""Wire form of what the worker publishes besides traces: rollups and alerts, many per Kafka message."""

from __future__ import annotations

import msgspec

from tracehouse.core.schema import SCHEMA_VERSION, SchemaError
from tracehouse.pipeline.alerts import Alert
from tracehouse.pipeline.rollups import Rollup


class RollupBatch(msgspec.Struct, gc=False):
    """One Kafka message on `tracehouse.rollups`."""

    rollups: list[Rollup]
    v: int = SCHEMA_VERSION


class AlertBatch(msgspec.Struct, gc=False):
    """One Kafka message on `tracehouse.alerts`."""

    alerts: list[Alert]
    v: int = SCHEMA_VERSION


_encoder = msgspec.msgpack.Encoder()
_rollups = msgspec.msgpack.Decoder(RollupBatch)
_alerts = msgspec.msgpack.Decoder(AlertBatch)


def encode_rollups(rollups: list[Rollup]) -> bytes:
    return _encoder.encode(RollupBatch(rollups=rollups))


def decode_rollups(data: bytes) -> list[Rollup]:
    try:
        return _rollups.decode(data).rollups
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not a rollup batch: {exc}") from None


def encode_alerts(alerts: list[Alert]) -> bytes:
    return _encoder.encode(AlertBatch(alerts=alerts))


def decode_alerts(data: bytes) -> list[Alert]:
    try:
        return _alerts.decode(data).alerts
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"not an alert batch: {exc}") from None
