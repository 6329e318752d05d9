"""The Faust application behind `tracehouse worker`: Faust topics, tables, agents and timers around the
plain-Python processors.

- Agent `process_spans` reads `tracehouse.spans`. One Kafka message carries many spans of one partition,
  so Faust's per-event cost is paid once per batch. Acks are manual (`noack`): an event is acknowledged
  only once no open trace depends on it (see pipeline/checkpoint.py).
- A timer emits ready traces and closed window partials (pipeline/partition_windows.py) onto
  `topics.PARTIALS_TOPIC`; a second agent merges the partials of all partitions into rollups and
  evaluates the alert rules (pipeline/merge_stage.py, around pipeline/merger.py).
- Agent `process_scores` reads `tracehouse.scores` (co-partitioned with spans, so a score's trace is on
  this worker) and folds scores into their own windows (pipeline/score_processor.py); their partials
  travel to the merger with the spans', and the final score rollups go to `tracehouse.score-rollups`.
- Table `tracehouse-worker-state` holds one checkpoint per partition (spans' and scores' windows under
  their own keys), written at a bounded rate.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.types import TP

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.kafka_security import faust_broker_credentials
from tracehouse.pipeline.guards import build_guards
from tracehouse.pipeline.merge_stage import build_merger
from tracehouse.pipeline.partition_windows import windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor
from tracehouse.pipeline.sampling import load_sampling
from tracehouse.pipeline.score_processor import ScoreProcessor

log = logging.getLogger("tracehouse.worker")

STATE_TABLE = "tracehouse-worker-state"
MERGER_TABLE = "tracehouse-merger-state"
SNAPSHOT_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "600000",
    "min.cleanable.dirty.ratio": "0.1",
    "max.message.bytes": str(16 * 1024 * 1024),
}


def broker_url(bootstrap: str) -> str:
    """Faust's broker URL form for a Kafka bootstrap list (`a:9092,b:9092`)."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(settings: Settings, options: ProcessorOptions | None = None, **faust_options: Any) -> faust.App:
    """Build the worker's Faust app; options override Faust settings (tests shorten timeouts)."""
    conf: dict[str, Any] = {
        "broker": broker_url(settings.kafka_bootstrap),
        "broker_credentials": faust_broker_credentials(),  # None: PLAINTEXT
        "store": "memory://",
        "topic_partitions": settings.spans_partitions,
        # Replication of the worker's own topics (state changelogs, rollup partials): 3 in production.
        "topic_replication_factor": settings.topic_replication_factor,
        "web_enabled": False,
        # snappy, not lz4: aiokafka compresses lz4 at level 9 (high compression, no setting to lower it),
        # which cost the worker ~1-3 µs of CPU per span for its trace records, partials and snapshots;
        # snappy costs a sixth of that for a ratio of ~3 instead of ~3.8 (tests/benchmarks/pipeline_throughput.py).
        "producer_compression_type": "snappy",
        "producer_max_request_size": 16 * 1024 * 1024,
        "producer_linger_ms": 5,
        "stream_buffer_maxsize": 64,
        "broker_commit_every": 10_000,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "table_standby_replicas": 0,
        # A worker that dies is noticed within 10 s, and its partitions move to the survivors.
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 2.0,
        # Held (unacknowledged) events are meant to be replayed by the next owner: never wait for them.
        "stream_wait_empty": False,
        "datadir": str(settings.data_dir / "worker"),
    }
    conf.update(faust_options)
    app = faust.App(settings.worker_group, **conf)
    raw = {"value_type": bytes, "value_serializer": "raw", "key_serializer": "raw"}
    spans_topic = app.topic(topics.SPANS, **raw)
    traces_topic = app.topic(topics.TRACES, **raw)
    rollups_topic = app.topic(topics.ROLLUPS, **raw)
    scores_topic = app.topic(topics.SCORES, **raw)
    score_rollups_topic = app.topic(topics.SCORE_ROLLUPS, **raw)
    alerts_topic = app.topic(topics.ALERTS, **raw)
    dlq_topic = app.topic(topics.DLQ, **raw)
    partials_topic = app.topic(topics.PARTIALS_TOPIC, partitions=1, internal=True, **raw)
    kept_topic = app.topic(topics.SPANS_KEPT, **raw)  # tail sampling (pipeline/sampling.py)
    sampling = load_sampling()  # None: off (TRACEHOUSE_SAMPLING), nothing goes to kept_topic

    state_table = app.Table(
        STATE_TABLE,
        default=None,
        partitions=settings.spans_partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=SNAPSHOT_TOPIC_CONFIG,
    )
    merger_table = app.Table(
        MERGER_TABLE,
        default=None,
        partitions=1,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=SNAPSHOT_TOPIC_CONFIG,
    )

    processor = SpanProcessor(
        traces_out=traces_topic,
        partials_out=partials_topic,
        dlq_out=dlq_topic,
        windows_factory=windows_factory(),
        options=options,
        guards=build_guards(alerts_out=alerts_topic),  # in-flight trace rules, onto the same alerts topic
        sampling=sampling,
        kept_out=kept_topic if sampling is not None else None,
    )
    scores = ScoreProcessor(
        partials_out=partials_topic,
        lookup=processor.trace_group,
        checkpoint_interval_s=processor.options.checkpoint_interval_s,
    )
    merger = build_merger(rollups_out=rollups_topic, alerts_out=alerts_topic, score_rollups_out=score_rollups_topic)
    app.tracehouse_processor = processor  # type: ignore[attr-defined]
    app.tracehouse_merger = merger  # type: ignore[attr-defined]
    app.tracehouse_scores = scores  # type: ignore[attr-defined]

    @app.agent(spans_topic, name="tracehouse.process_spans")
    async def process_spans(stream: faust.StreamT) -> None:
        manual = stream.noack()
        processor.attach(manual, state_table)
        async for event in manual.events():
            await processor.on_event(event)

    @app.agent(scores_topic, name="tracehouse.process_scores")
    async def process_scores(stream: faust.StreamT) -> None:
        manual = stream.noack()
        scores.attach(manual, state_table)
        async for event in manual.events():
            await scores.on_event(event)

    @app.agent(partials_topic, name="tracehouse.merge_rollups")
    async def merge_rollups(stream: faust.StreamT) -> None:
        manual = stream.noack()
        partials_tp = TP(topics.PARTIALS_TOPIC, 0)
        merger.attach(
            manual,
            merger_table,
            lambda: app.tables.recovery.completed.is_set() and partials_tp in app.consumer.assignment(),
        )
        async for event in manual.events():
            await merger.on_event(event)

    @app.timer(0.25, name="tracehouse.tick")
    async def tick() -> None:
        await processor.on_tick()
        await scores.on_tick()
        await merger.on_tick()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        processor.revoke({tp.partition for tp in revoked if tp.topic == topics.SPANS})
        scores.revoke({tp.partition for tp in revoked if tp.topic == topics.SCORES})
        if any(tp.topic == topics.PARTIALS_TOPIC for tp in revoked):
            merger.revoke()

    return app
