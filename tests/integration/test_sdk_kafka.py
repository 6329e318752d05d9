"""The SDK against the real broker: parent links survive the trip through Kafka, and a broker that is
down for a few seconds loses nothing that fit in the queue."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracehouse.core import topics
from tracehouse.core.schema import Span, decode_batch
from tracehouse.infra.kafka_broker import KafkaBroker, create_topics
from tracehouse.producers import configure, span, trace, wrap_context
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport


async def _end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    try:
        numbers = await producer.partitions_for(topics.SPANS)  # loads the topic's metadata
        return await consumer.end_offsets([TopicPartition(topics.SPANS, p) for p in numbers])
    finally:
        await consumer.stop()
        await producer.stop()


async def _read_from(
    bootstrap: str, start: dict[TopicPartition, int], want: set[str], min_spans: int, timeout: float = 30
) -> list[Span]:
    """Spans of the wanted traces written after `start`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[Span] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for messages in batch.values():
                for message in messages:
                    spans, _ = decode_batch(message.value)
                    found.extend(s for s in spans if s.trace_id in want)
            if not batch and len(found) >= min_spans:
                break
        return found
    finally:
        await consumer.stop()


def test_nested_sync_async_and_threaded_spans_keep_their_parents_through_kafka(kafka_bootstrap: str) -> None:
    start = asyncio.run(_end_offsets(kafka_bootstrap))
    tracer = configure(service="sdk-kafka-test", bootstrap=kafka_bootstrap, set_global=True)

    @trace(kind="TOOL", name="tool")
    def tool(x: int) -> int:
        return x * 2

    @trace(kind="LLM", name="llm")
    async def llm(prompt: str) -> str:
        await asyncio.sleep(0)
        return prompt.upper()

    async def agent() -> str:
        with span("agent", kind="AGENT") as root:
            answers = await asyncio.gather(llm("a"), llm("b"))
            worker = threading.Thread(target=wrap_context(lambda: tool(21)))
            worker.start()
            worker.join()
            with span("retrieve", kind="RETRIEVER"):
                tool(1)
            return root.trace_id + "".join(answers)

    trace_id = asyncio.run(agent())[:32]
    tracer.flush(30)
    spans = asyncio.run(_read_from(kafka_bootstrap, start, {trace_id}, min_spans=6))
    tracer.shutdown()
    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert {"agent", "llm", "tool", "retrieve"} <= set(by_name), (tracer.stats(), sorted(by_name), trace_id)
    root = by_name["agent"][0]
    assert root.parent_span_id == "" and root.kind == "AGENT" and root.service == "sdk-kafka-test"
    assert len(by_name["llm"]) == 2 and all(s.parent_span_id == root.span_id for s in by_name["llm"])
    retrieve = by_name["retrieve"][0]
    assert retrieve.parent_span_id == root.span_id
    tools = by_name["tool"]
    assert sorted(s.parent_span_id for s in tools) == sorted([root.span_id, retrieve.span_id])
    assert len(spans) == 6


def test_broker_down_for_seconds_loses_nothing_that_fit_in_the_queue(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", partitions=2)
    broker.start()
    try:
        create_topics(broker.bootstrap, {topics.SPANS: 2})
        factory = TraceFactory(TrafficOptions(seed=9, prompt_bytes=128))
        transport = SpanTransport(broker.bootstrap, max_queue=100_000, linger_s=0.01)
        before = [s for _ in range(200) for s in factory.any()]
        transport.submit_many(before)
        assert transport.flush(30)

        broker.kill()
        during = [s for _ in range(200) for s in factory.any()]
        t0 = time.perf_counter()
        accepted = transport.submit_many(during)  # the app keeps running while the broker is away
        assert time.perf_counter() - t0 < 0.1 and accepted == len(during)
        time.sleep(4)
        broker.start()

        assert transport.flush(90), transport.stats
        transport.shutdown()
        assert transport.stats.dropped == 0 and transport.stats.failed == 0, transport.stats
        want = {s.trace_id for s in before + during}
        start = {TopicPartition(topics.SPANS, p): 0 for p in range(2)}
        got = asyncio.run(_read_from(broker.bootstrap, start, want, len(before) + len(during), timeout=60))
        assert {(s.trace_id, s.span_id) for s in got} == {(s.trace_id, s.span_id) for s in before + during}
    finally:
        broker.stop()
