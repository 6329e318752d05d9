"""Consumer groups that start where the session's topics end.

The session's Kafka topics hold every earlier test's records (hundreds of thousands of spans by the end of
the suite). A worker or a sink started with a new group would read all of them first, so a test that
starts one commits its groups' offsets at the end of every topic they read, before it sends anything:
the processes then see only what the test sends, and the suite's time does not grow with its length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.sinks.routes import default_routes


async def commit_at_end(bootstrap: str, group: str, names: Iterable[str]) -> None:
    """Commit `group`'s offsets at the current end of every partition of the topics `names`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # what partitions_for_topic reads
        partitions = [TopicPartition(t, p) for t in names for p in consumer.partitions_for_topic(t) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(ends)
    finally:
        await consumer.stop()


async def start_sink_group_at_end(settings: Settings) -> None:
    await commit_at_end(settings.kafka_bootstrap, settings.sink_group, [r.topic for r in default_routes()])


def start_groups_at_end(settings: Settings) -> None:
    """The test's worker group (on `tracehouse.spans`, `tracehouse.scores` and the internal partials topic its
    merger reads: earlier tests' partials would otherwise land in this test's rollups) and sink group (on every
    topic the sink reads)."""

    async def both() -> None:
        await commit_at_end(
            settings.kafka_bootstrap, settings.worker_group, [topics.SPANS, topics.SCORES, topics.PARTIALS_TOPIC]
        )
        await start_sink_group_at_end(settings)

    asyncio.run(both())
