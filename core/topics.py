"""Kafka topic names (a public contract: dashboards and other consumers rely on them) and the one
declaration of how each topic is created.

`tracehouse migrate`, the local stack (`up`, `demo`) and the test session all create topics from
`topic_specs()`, so partitions, retention and message size cannot drift between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPANS = "tracehouse.spans"
TRACES = "tracehouse.traces"
ROLLUPS = "tracehouse.rollups"
ALERTS = "tracehouse.alerts"
DLQ = "tracehouse.dlq"
SCORES = "tracehouse.scores"  # scores added after the fact (core/scores.py)
SCORE_ROLLUPS = "tracehouse.score-rollups"  # the worker's windows of scores (core/rollups.py ScoreRollup)
# With tail sampling on (TRACEHOUSE_SAMPLING), the spans of the traces the worker keeps: the sink stores
# these instead of SPANS (pipeline/sampling.py). Created always, sampling on or off: the worker and the sink
# may be started with the setting before or after `migrate`, and an empty topic costs nothing.
SPANS_KEPT = "tracehouse.spans.kept"

ALL = (SPANS, TRACES, ROLLUPS, ALERTS, DLQ, SCORES, SCORE_ROLLUPS, SPANS_KEPT)

# The workers' own topic: window partials from every partition to the one merger (core/rollups.py). Faust
# creates it (one partition, as an internal topic of the worker's app), so it is not in `ALL`.
PARTIALS_TOPIC = "tracehouse.internal.rollup-partials"

# Topics partitioned like tracehouse.spans: a trace's spans, its assembled record and its scores share a
# partition number (scores are keyed by trace id like spans, so a worker that folds them in sees a trace's
# scores where it holds the trace, and in cluster mode they land on the shard of the trace's spans), and
# the worker's state table is co-partitioned with spans. Their partition count is
# TRACEHOUSE_SPANS_PARTITIONS; every other topic has one partition (small, and ordered).
CO_PARTITIONED = (SPANS, TRACES, SCORES, SPANS_KEPT)

# How long Kafka keeps records: how long ClickHouse (or the sink) may be away before spans are lost.
RETENTION_MS = 3 * 24 * 3600 * 1000
# A message carries hundreds of spans; the worker's producer sends up to 16 MiB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is created. `strict` topics must have exactly `partitions` (co-partitioning)."""

    name: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)
    strict: bool = False


def topic_configs(replication_factor: int) -> dict[str, str]:
    """Per-topic configuration: retention, message size and, when replicated, min.insync.replicas
    (acks=all then survives one broker down: 3 replicas -> 2 in sync)."""
    configs = {"retention.ms": str(RETENTION_MS), "max.message.bytes": str(MAX_MESSAGE_BYTES)}
    if replication_factor > 1:
        configs["min.insync.replicas"] = str(replication_factor - 1)
    return configs


def topic_specs(spans_partitions: int, replication_factor: int = 1) -> tuple[TopicSpec, ...]:
    """Every pipeline topic (`ALL`) as it must be created."""
    if spans_partitions < 1:
        raise ValueError(f"TRACEHOUSE_SPANS_PARTITIONS must be at least 1, got {spans_partitions}")
    if replication_factor < 1:
        raise ValueError(f"TRACEHOUSE_TOPIC_REPLICATION_FACTOR must be at least 1, got {replication_factor}")
    configs = topic_configs(replication_factor)
    return tuple(
        TopicSpec(name, spans_partitions, replication_factor, configs, strict=True)
        if name in CO_PARTITIONED
        else TopicSpec(name, 1, replication_factor, configs)
        for name in ALL
    )
