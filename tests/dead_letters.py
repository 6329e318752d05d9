"""Reading `tracehouse.dlq` in tests: the letters a test caused, among every earlier test's."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.schema import DeadLetter, decode_dead_letter


async def read_dead_letters(
    settings: Settings, wanted: Callable[[DeadLetter], bool], expected: int, timeout: float = 30
) -> list[DeadLetter]:
    """The dead letters `wanted` accepts, read from the start of the topic until `expected` of them are
    found or `timeout` seconds pass (the session's DLQ holds what every test sent there)."""
    consumer = AIOKafkaConsumer(
        topics.DLQ,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"dlq-reader-{settings.sink_group}",
    )
    await consumer.start()
    found: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < expected:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                found.extend(
                    letter for letter in map(decode_dead_letter, (m.value for m in messages)) if wanted(letter)
                )
    finally:
        await consumer.stop()
    return found
