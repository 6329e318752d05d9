"""`tracehouse replay --dlq` through the real broker, sink and engine: dead letters whose spans now pass are
re-admitted once each (a letter written twice, a span already stored and a second run add nothing), and the
ones still refused are counted with their reasons, not dead-lettered again."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

from aiokafka import AIOKafkaProducer
from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.schema import DeadLetter, Span, encode_batch, encode_dead_letter, encode_span
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

YEAR_2250_NS = 8_836_128_000 * 1_000_000_000


def span(rng: random.Random, service: str, start_ns: int | None = None) -> Span:
    start = start_ns if start_ns is not None else time.time_ns() - 2_000_000_000
    return Span(
        trace_id=f"{rng.getrandbits(128):032x}",
        span_id=f"{rng.getrandbits(64) | 1:016x}",
        name="step",
        kind="TOOL",
        service=service,
        start_time_ns=start,
        end_time_ns=start + 1_000_000,
    )


def letter(payload: bytes, stage: str = "validate", source: str = topics.SPANS) -> bytes:
    reason = "refused by an older mapping"
    return encode_dead_letter(DeadLetter(reason=reason, stage=stage, payload=payload, source_topic=source))


async def dead_letter(bootstrap: str, letters: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in letters:
            await producer.send_and_wait(topics.DLQ, value)
    finally:
        await producer.stop()


def readmit(env: dict[str, str], from_ms: int) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "replay", "--dlq", "--from", str(from_ms)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_dead_letters_are_readmitted_once(settings: Settings) -> None:
    rng = random.Random(5)
    service = f"svc-{settings.sink_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = LocalStack(settings).child_env()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], settings.data_dir / "logs", env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)

    def stored() -> int:
        return int(client.command(f"SELECT uniqExact(trace_id, span_id) FROM spans WHERE service = '{service}'"))

    try:
        assert sink.wait_for_log("started", timeout=60), sink.log_tail()
        time.sleep(2)  # partitions assigned
        kept = span(rng, service)  # stored already: its letter must not bring it twice
        transport.submit_many([kept])
        assert transport.flush(10)
        assert wait_until(lambda: stored() == 1, timeout=60), sink.log_tail()

        from_ms = time.time_ns() // 1_000_000 - 1_000
        fixed, batch = span(rng, service), [span(rng, service), span(rng, service)]
        asyncio.run(
            dead_letter(
                settings.kafka_bootstrap,
                [
                    letter(encode_span(fixed)),  # one span, refused by the worker ...
                    letter(encode_span(fixed), stage="decode"),  # ... and by the sink, for the same record
                    letter(encode_batch(batch)),  # a whole message that did not decode
                    letter(encode_span(kept)),
                    letter(b"\x81\xa1x\x01"),  # still not a span: {"x": 1}
                    letter(encode_span(span(rng, service, YEAR_2250_NS))),  # still refused for its time
                    letter(b'{"trace_id": "x"}', stage="sink", source=topics.TRACES),  # a row ClickHouse refused
                ],
            )
        )
        first = readmit(env, from_ms)
        assert "read 7 dead letters: 3 spans re-admitted" in first.stdout, first.stdout
        assert "2 still refused" in first.stdout and "1 already stored" in first.stdout, first.stdout
        assert "1 duplicate letters, 1 not spans" in first.stdout, first.stdout
        assert "still refused (1)" in first.stderr, first.stderr  # the reasons, one line each
        assert wait_until(lambda: stored() == 4, timeout=60), sink.log_tail()

        again = readmit(env, from_ms)  # the spans are stored now: nothing is published twice
        assert "0 spans re-admitted" in again.stdout and "4 already stored" in again.stdout, again.stdout
        time.sleep(2)
        assert stored() == 4
        count = int(client.command(f"SELECT count() FROM spans FINAL WHERE service = '{service}'"))
        assert count == 4
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
