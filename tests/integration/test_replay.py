"""`tracehouse replay` through the real pipeline: re-deriving a time range of the span log reproduces the
stored traces exactly (no row doubled once ClickHouse collapses the versions), and with a new price file
re-derives them at the new prices; it reproduces the rollups of the windows wholly inside the range and
leaves the cut ones alone; a range that begins before the retained log is refused with the earliest time."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from clickhouse_connect.driver.client import Client
from kafka_groups import start_groups_at_end
from test_reprice import PRICES_A, PRICES_B, expected_cost, make_traces
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable, load_price_file
from tracehouse.core.schema import encode_batch
from tracehouse.core.topic_admin import create_topics
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.pipeline.replay import ReplayRangeError, replay
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate


def traces(client: Client, service: str) -> dict[str, dict[str, Any]]:
    """The stored traces of `service` as ClickHouse collapses them, every column but the emission time."""
    result = client.query(
        "SELECT * EXCEPT emitted_at FROM traces FINAL WHERE service = {s:String}", parameters={"s": service}
    )
    return {row[0]: dict(zip(result.column_names, row, strict=True)) for row in result.result_rows}


def rows(client: Client, service: str) -> int:
    return int(client.command(f"SELECT count() FROM traces WHERE service = '{service}'"))


def run_replay(env: dict[str, str], since_ms: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "replay", "--from", str(since_ms)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_replay_reproduces_traces_and_reprices_them(settings: Settings, tmp_path: Path) -> None:
    file_a, file_b = tmp_path / "a.toml", tmp_path / "b.toml"
    file_a.write_text(PRICES_A)
    file_b.write_text(PRICES_B)
    service = f"svc-{settings.worker_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_PRICES": str(file_a), "TRACEHOUSE_TRACE_QUIET_S": "1"}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    spans = make_traces(random.Random(9), service, 40)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned
        since_ms = time.time_ns() // 1_000_000 - 1_000
        transport.submit_many(spans)
        assert transport.flush(10)
        assert wait_until(lambda: len(traces(client, service)) == 40, timeout=60), worker.log_tail()
        worker.stop()  # what remains is the log in Kafka and the sink
        stored = traces(client, service)
        assert rows(client, service) == 40

        # The same prices: every trace re-derived (published again: a second row each until a merge) and
        # what ClickHouse answers is exactly what it answered before.
        out = run_replay(env, since_ms)
        assert "traces published" in out, out
        assert wait_until(lambda: rows(client, service) == 80, timeout=60), rows(client, service)
        assert traces(client, service) == stored
        client.command("OPTIMIZE TABLE traces FINAL")
        assert rows(client, service) == 40  # the versions collapse: nothing doubled

        # New prices: the same traces at B's costs and version.
        prices_b = load_price_file(file_b)
        run_replay({**env, "TRACEHOUSE_PRICES": str(file_b)}, since_ms)
        assert wait_until(lambda: rows(client, service) == 80, timeout=60)
        after = traces(client, service)
        by_trace: dict[str, float] = {}
        for span in spans:
            if span.llm:
                by_trace[span.trace_id] = by_trace.get(span.trace_id, 0.0) + expected_cost(prices_b, span)[0]
        for trace_id, row in after.items():
            assert math.isclose(row["cost_usd"], by_trace[trace_id], rel_tol=1e-9) and row["unpriced_models"] == []
            assert row["price_version"] == prices_b.version
            unchanged = {k: v for k, v in row.items() if k not in ("cost_usd", "price_version", "unpriced_models")}
            assert unchanged == {k: v for k, v in stored[trace_id].items() if k in unchanged}
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()


ROLLUP_COLUMNS = (
    "window_start, window_seconds, kind, name, model, count, error_count, rate_limit_count, latency_p50_ms,"
    " latency_p95_ms, latency_p99_ms, latency_max_ms, latency_sketch, input_tokens, output_tokens, cached_tokens,"
    " reasoning_tokens, cost_usd"
)


def rollups(client: Client, service: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The service's 10 s rollups as ClickHouse collapses them, by (window, group)."""
    result = client.query(
        f"SELECT {ROLLUP_COLUMNS} FROM rollups FINAL WHERE service = {{s:String}} AND window_seconds = 10",
        parameters={"s": service},
    )
    return {tuple(row[:5]): tuple(row[5:]) for row in result.result_rows}


def test_replay_reproduces_the_rollups_of_inner_windows(settings: Settings, tmp_path: Path) -> None:
    """The worker's 10 s rollups of a service, deleted, come back exactly from a replay of a range that holds
    their windows; the 60 s windows the range cuts are skipped and said so."""
    prices = tmp_path / "a.toml"
    prices.write_text(PRICES_A)
    service = f"svc-{settings.worker_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_PRICES": str(prices), "TRACEHOUSE_TRACE_QUIET_S": "1"}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    spans = make_traces(random.Random(11), service, 40)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned
        from_ms = time.time_ns() // 1_000_000 - 30_000  # before the spans' earliest end (now - 5 s + 1.5 s)
        transport.submit_many(spans)
        assert transport.flush(10)

        def counted() -> int:
            return sum(row[0] for row in rollups(client, service).values())

        assert wait_until(lambda: counted() == len(spans), timeout=60), (counted(), worker.log_tail())
        worker.stop()
        stored = rollups(client, service)
        to_ms = time.time_ns() // 1_000_000
        first = client.command(f"SELECT min(toUnixTimestamp(window_start)) FROM rollups WHERE service = '{service}'")
        assert int(first) >= from_ms / 1000  # every 10 s window lies inside the range
        client.command(
            "ALTER TABLE rollups DELETE WHERE service = {s:String}",
            parameters={"s": service},
            settings={"mutations_sync": 2},
        )
        assert rollups(client, service) == {}

        done = subprocess.run(
            [sys.executable, "-m", "tracehouse.cli.main", "replay", "--from", str(from_ms), "--to", str(to_ms)],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "edge windows skipped" in done.stdout, done.stdout
        assert wait_until(lambda: len(rollups(client, service)) == len(stored), timeout=60), done.stdout
        assert rollups(client, service) == stored
        sixty = client.command(f"SELECT count() FROM rollups WHERE service = '{service}' AND window_seconds = 60")
        assert int(sixty) == 0  # the range (under a minute) holds no whole 60 s window: none replaced
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()


def test_a_range_before_the_retained_log_is_refused_with_the_earliest_time(settings: Settings) -> None:
    """Records retention deleted cannot be replayed: the command says from when it can replay instead of
    re-deriving a part of the range silently."""
    topic = f"replay-retention-{settings.worker_group}"
    create_topics(settings.kafka_bootstrap, {topic: 1})
    spans = make_traces(random.Random(3), "svc-retention", 3)

    async def scenario() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        stamps = []
        try:
            for span in spans[:3]:
                stamps.append((await producer.send_and_wait(topic, encode_batch([span]), partition=0)).timestamp)
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:  # what retention does to a log's oldest segments
            await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=2)})
        finally:
            await admin.close()
        from_ns = (stamps[0] - 1_000) * 1_000_000
        try:
            await replay(settings.kafka_bootstrap, from_ns, time.time_ns(), PriceTable(), topic=topic)
        except ReplayRangeError as exc:
            assert str(stamps[2]) in str(exc), (exc, stamps)
        else:
            raise AssertionError("a range before the retained log was replayed")
        report = await replay(
            settings.kafka_bootstrap, stamps[2] * 1_000_000, time.time_ns(), PriceTable(), topic=topic, rollups=False
        )
        return report.spans

    assert asyncio.run(scenario()) == 1
