"""Kafka topic names: a public contract (dashboards and other consumers rely on them)."""

SPANS = "tracehouse.spans"
TRACES = "tracehouse.traces"
ROLLUPS = "tracehouse.rollups"
ALERTS = "tracehouse.alerts"
DLQ = "tracehouse.dlq"

ALL = (SPANS, TRACES, ROLLUPS, ALERTS, DLQ)
