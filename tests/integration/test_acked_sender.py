"""Both span senders on the session's real Kafka, against a topic whose message limit is below theirs:
the receiver's `AckedSpanSender` (concurrent requests share sends, each request's future resolves only
once every span of it is in Kafka) and the SDK's `SpanTransport`. A message the broker refuses as too
large is split until it fits, and the idempotent producer whose sequence that refusal broke is renewed,
so nothing is lost and nothing is given up."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tracehouse.core.schema import Span, decode_batch
from tracehouse.producers.acked_sender import AckedSpanSender
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport


async def make_topic(bootstrap: str, partitions: int, max_message_bytes: int) -> str:
    name = f"acked-sender-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(max_message_bytes)}
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()
    return name


async def read_all(bootstrap: str, topic: str, partitions: int, want: int) -> list[Span]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[Span] = []
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        for _ in range(60):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    found.extend(decode_batch(message.value)[0])
            if len(found) >= want:
                break
        return found
    finally:
        await consumer.stop()


def traces(count: int, seed: int) -> list[list[Span]]:
    factory = TraceFactory(TrafficOptions(seed=seed, prompt_bytes=2048))
    return [factory.any() for _ in range(count)]


def test_concurrent_requests_share_sends_and_too_large_messages_are_split(kafka_bootstrap: str) -> None:
    async def scenario() -> tuple[AckedSpanSender, list[list[Span]], list[Span]]:
        topic = await make_topic(kafka_bootstrap, 2, max_message_bytes=8_000)  # below our limit, even compressed
        sender = await AckedSpanSender(kafka_bootstrap, topic=topic).start()
        requests = [[s for t in traces(30, seed) for s in t] for seed in range(12)]
        try:
            outcomes = await asyncio.gather(*(sender.submit(spans) for spans in requests))
        finally:
            await sender.stop()
        assert all(o.ok and o.refused == 0 for o in outcomes), outcomes
        total = sum(len(r) for r in requests)
        return sender, requests, await read_all(kafka_bootstrap, topic, 2, total)

    sender, requests, stored = asyncio.run(scenario())
    sent_ids = {(s.trace_id, s.span_id) for r in requests for s in r}
    assert {(s.trace_id, s.span_id) for s in stored} == sent_ids
    stats = sender.stats
    assert stats.splits > 0 and stats.failed == 0 and stats.refused == 0 and sender.pending == 0, stats
    assert stats.acknowledged == len(sent_ids)
    assert stats.groups < len(requests), stats  # requests that came together were sent together


def test_the_sdk_transport_splits_too_large_messages_too(kafka_bootstrap: str) -> None:
    """The SDK's fire-and-forget transport shares the encoding and the error handling: after the broker
    refuses a message as too large, it splits it and renews its idempotent producer."""
    topic = asyncio.run(make_topic(kafka_bootstrap, 2, max_message_bytes=8_000))
    spans = [s for t in traces(60, seed=99) for s in t]
    transport = SpanTransport(kafka_bootstrap, topic=topic, linger_s=0.01)
    try:
        transport.submit_many(spans)
        assert transport.flush(60), transport.stats
    finally:
        transport.shutdown(timeout=10)
    assert transport.stats.failed == 0 and transport.stats.sent == len(spans), transport.stats
    stored = asyncio.run(read_all(kafka_bootstrap, topic, 2, len(spans)))
    assert {(s.trace_id, s.span_id) for s in stored} == {(s.trace_id, s.span_id) for s in spans}
