"""Both local brokers do what the pipeline needs: partitioned topics, lz4 round trips, data that survives.

Real Apache Kafka is the reference (and is SIGKILLed to prove a crash loses nothing acknowledged);
noida-db, the embedded default, gets the same round trip plus a clean stop/start.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata

from tracehouse.infra.kafka_broker import (
    KafkaBroker,
    _jars_complete,
    create_topics,
    ensure_topics,
    kafka_answers,
    kafka_jars_dir,
)
from tracehouse.infra.noida_broker import NoidaKafka
from tracehouse.infra.ports import free_port

pytestmark = pytest.mark.timeout(120)


def _skip_without_java() -> None:
    if shutil.which("java") is None:
        pytest.skip("no JDK: real Kafka needs `java` on PATH")
    if shutil.which("mvn") is None and not _jars_complete(kafka_jars_dir()):
        pytest.skip(f"no Maven to fetch Kafka jars and none cached in {kafka_jars_dir()} (see .ci/fetch-kafka)")


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> RecordMetadata:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4", acks="all")
    await producer.start()
    try:
        return await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, group: str | None = None) -> list[tuple[bytes, bytes]]:
    """Every (key, value) in `topic`, read from the beginning up to the end offsets seen at start.

    With `group`, reads through a consumer group (subscribe/rebalance/commit, as Faust does); without,
    assigns all partitions directly.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions(bootstrap, topic)]
        if group is None:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        else:
            consumer.subscribe([topic])
        end = await consumer.end_offsets(partitions)
        records: list[tuple[bytes, bytes]] = []

        async def drain() -> None:
            while sum(end.values()) > len(records):
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    records.extend((m.key, m.value) for m in messages)

        await asyncio.wait_for(drain(), 30)
        if group is not None:
            await consumer.commit()
        return records
    finally:
        await consumer.stop()


async def test_apache_kafka_round_trip_survives_sigkill(tmp_path: Path) -> None:
    _skip_without_java()
    topic = f"test.{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker(tmp_path / "kafka", partitions=4)
    try:
        await asyncio.to_thread(broker.start)
        assert broker.start_seconds is not None and broker.pid is not None
        assert kafka_answers(broker.bootstrap)

        await ensure_topics(broker.bootstrap, {topic: 4})
        create_topics(broker.bootstrap, {topic: 4})  # sync flavour, from inside a loop; already exists
        assert await _partitions(broker.bootstrap, topic) == [0, 1, 2, 3]

        sent = await _produce(broker.bootstrap, topic, b"trace-1", b'{"span": 1}')
        assert await _read_all(broker.bootstrap, topic, group="g1") == [(b"trace-1", b'{"span": 1}')]

        # acks=all on one node means "in the page cache"; a process crash must not lose it.
        pid = broker.pid
        broker.kill()
        assert not broker.running and not kafka_answers(broker.bootstrap, timeout=0.2)
        await asyncio.to_thread(broker.start)
        assert broker.pid != pid

        assert await _read_all(broker.bootstrap, topic) == [(b"trace-1", b'{"span": 1}')]
        assert await _partitions(broker.bootstrap, topic) == [0, 1, 2, 3]
        again = await _produce(broker.bootstrap, topic, b"trace-1", b'{"span": 2}')
        assert (again.partition, again.offset) == (
            sent.partition,
            sent.offset + 1,
        )  # same key, same partition
    finally:
        broker.stop()
    assert not broker.running


async def test_noida_round_trip_survives_restart(tmp_path: Path) -> None:
    topic = f"test.{uuid.uuid4().hex[:8]}"
    noida = NoidaKafka(tmp_path / "noida", port=free_port())
    try:
        await asyncio.to_thread(noida.start)
        assert noida.control_file.is_file()

        # noida auto-creates topics with 1 partition, but honours the partition count asked for here.
        await ensure_topics(noida.bootstrap, {topic: 4})
        await ensure_topics(noida.bootstrap, {topic: 4})
        assert await _partitions(noida.bootstrap, topic) == [0, 1, 2, 3]

        await _produce(noida.bootstrap, topic, b"trace-1", b'{"span": 1}')
        assert await _read_all(noida.bootstrap, topic, group="g1") == [(b"trace-1", b'{"span": 1}')]

        assert noida.stop() == 0  # clean exit, data saved
        assert not noida.control_file.exists()
        assert not kafka_answers(noida.bootstrap, timeout=0.2)
        await asyncio.to_thread(noida.start)

        assert await _read_all(noida.bootstrap, topic) == [(b"trace-1", b'{"span": 1}')]
        assert await _partitions(noida.bootstrap, topic) == [0, 1, 2, 3]
    finally:
        noida.stop()
