"""The receiver when Kafka cannot acknowledge: a dedicated Apache Kafka broker, started for this test,
first without the spans topic, then killed with SIGKILL and started again.

- Before the topic exists the receiver runs and answers 503 with Retry-After, and producing never
  auto-creates the topic (the broker would, with its default partition count).
- Once the topic exists, 200s; with the broker killed, 503 with Retry-After once the acknowledgement
  bound passes; once it is back, 200s again; and every span that got a 200 is in Kafka.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from receiver_load import otlp_body
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.schema import decode_batch
from tracehouse.infra.kafka_broker import KafkaBroker, create_topics
from tracehouse.producers.acked_sender import AckedSpanSender
from tracehouse.producers.otlp import BackgroundReceiver, ReceiverOptions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PARTITIONS = 3  # the broker's default for auto-created topics is 1: a wrong count would show


def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def health(url: str) -> dict[str, object]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def span_ids_in_topic(bootstrap: str, want: int, timeout: float = 60) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: set[str] = set()
    try:
        partitions = [TopicPartition(topics.SPANS, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < want:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    found.update(s.span_id for s in decode_batch(message.value)[0])
        return found
    finally:
        await consumer.stop()


def test_503_until_the_topic_exists_and_while_kafka_is_down_then_200_again(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", partitions=1)
    broker.start()
    sender = AckedSpanSender(broker.bootstrap, topic_check_s=0.5, request_timeout_s=4.0)
    options = ReceiverOptions(ack_timeout_s=2.0, retry_after_s=4)
    acknowledged: set[str] = set()

    def send(traces: int = 5) -> tuple[int, dict[str, str]]:
        body, ids = otlp_body("outage-svc", traces)
        status, headers = post(receiver.url, body)
        if status == 200:
            acknowledged.update(s for spans in ids.values() for s in spans)
        return status, headers

    try:
        with BackgroundReceiver(sender, options) as receiver:
            # No topic yet: the receiver runs, answers 503, and does not create the topic by producing.
            status, headers = send()
            assert status == 503 and headers["retry-after"] == "4"
            assert health(receiver.url)["kafka_ready"] is False
            assert topics.SPANS not in asyncio.run(topic_names(broker.bootstrap))

            create_topics(broker.bootstrap, {topics.SPANS: PARTITIONS})
            assert wait_until(lambda: send()[0] == 200, timeout=30, interval=0.3)
            assert health(receiver.url)["topic_partitions"] == PARTITIONS
            for _ in range(3):
                assert send()[0] == 200

            broker.kill()
            t0 = time.monotonic()
            status, headers = send()
            waited = time.monotonic() - t0
            assert status == 503 and headers["retry-after"] == "4", status
            assert waited < options.ack_timeout_s + 5, waited  # the bound holds: no request hangs
            assert health(receiver.url)["receiver"]["ack_timeouts"] >= 1  # type: ignore[index]

            broker.start()
            assert wait_until(lambda: send()[0] == 200, timeout=90, interval=0.5), health(receiver.url)
            for _ in range(3):
                assert send()[0] == 200
            assert wait_until(lambda: health(receiver.url)["kafka_ready"], timeout=30)
        assert acknowledged <= asyncio.run(span_ids_in_topic(broker.bootstrap, len(acknowledged)))
    finally:
        broker.stop()
