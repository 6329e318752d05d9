"""`tracehouse replay --to-table`: a replay written into a side table holds exactly the traces (and inner
rollups) a normal replay would publish, so a fix can be compared with what is stored, and nothing at all
goes to Kafka; the pipeline's own tables and names that are not plain identifiers are refused."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client
from kafka_groups import start_groups_at_end
from test_reprice import PRICES_A, make_traces
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.topic_admin import existing_topics
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

ROLLUP_COLUMNS = (
    "window_start, window_seconds, kind, name, model, count, error_count, rate_limit_count, latency_p50_ms,"
    " latency_p95_ms, latency_p99_ms, latency_max_ms, latency_sketch, input_tokens, output_tokens, cached_tokens,"
    " reasoning_tokens, cost_usd"
)


def traces(client: Client, table: str, service: str) -> dict[str, dict[str, Any]]:
    result = client.query(
        f"SELECT * EXCEPT emitted_at FROM {table} FINAL WHERE service = {{s:String}}", parameters={"s": service}
    )
    return {row[0]: dict(zip(result.column_names, row, strict=True)) for row in result.result_rows}


def rollups(client: Client, table: str, service: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    result = client.query(
        f"SELECT {ROLLUP_COLUMNS} FROM {table} FINAL WHERE service = {{s:String}} AND window_seconds = 10",
        parameters={"s": service},
    )
    return {tuple(row[:5]): tuple(row[5:]) for row in result.result_rows}


def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    """The end offset of every partition of every tracehouse topic."""

    async def read() -> dict[TopicPartition, int]:
        found = await existing_topics(bootstrap, list(topics.ALL))
        tps = [TopicPartition(topic, p) for topic, count in found.items() if count for p in range(count)]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            return dict(await consumer.end_offsets(tps))
        finally:
            await consumer.stop()

    return asyncio.run(read())


def replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "replay", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_replay_to_table_writes_what_a_replay_would_publish_and_nothing_to_kafka(
    settings: Settings, tmp_path: Path
) -> None:
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
    spans = make_traces(random.Random(13), service, 40)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned
        from_ms = time.time_ns() // 1_000_000 - 30_000  # before the spans' earliest end: whole 10 s windows
        transport.submit_many(spans)
        assert transport.flush(10)

        def counted() -> int:
            return sum(row[0] for row in rollups(client, "rollups", service).values())

        assert wait_until(lambda: len(traces(client, "traces", service)) == 40, timeout=60), worker.log_tail()
        assert wait_until(lambda: counted() == len(spans), timeout=60), (counted(), worker.log_tail())
        worker.stop()  # what remains is the log in Kafka
        sink.stop()
        stored, stored_rollups = traces(client, "traces", service), rollups(client, "rollups", service)
        to_ms = time.time_ns() // 1_000_000
        before = end_offsets(settings.kafka_bootstrap)

        done = replay(env, "--from", str(from_ms), "--to", str(to_ms), "--to-table", "traces_fix")
        assert done.returncode == 0, done.stderr
        assert f"written into {settings.clickhouse.database}.traces_fix (nothing on Kafka)" in done.stdout, done.stdout
        assert "writing into" in done.stderr, done.stderr  # progress on stderr
        assert traces(client, "traces_fix", service) == stored
        assert rollups(client, "traces_fix_rollups", service) == stored_rollups
        assert end_offsets(settings.kafka_bootstrap) == before  # not one record on any topic
        engines = client.query(
            "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()"
            " AND name IN ('traces', 'traces_fix')"
        ).result_rows
        assert len({engine for _, engine in engines}) == 1, engines  # created AS traces: the same engine

        # A second replay into the same table collapses like `traces` does: FINAL answers the same.
        assert replay(env, "--from", str(from_ms), "--to", str(to_ms), "--to-table", "traces_fix").returncode == 0
        assert traces(client, "traces_fix", service) == stored
        # The diff query of the README: no trace differs.
        diff = client.command(
            "SELECT count() FROM traces_fix AS fix FINAL INNER JOIN (SELECT * FROM traces FINAL) AS old"
            " USING trace_id WHERE fix.cost_usd != old.cost_usd OR fix.price_version != old.price_version"
            " OR fix.span_count != old.span_count"
        )
        assert int(diff) == 0
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()


def test_the_pipelines_own_tables_odd_names_and_other_tables_are_refused(settings: Settings) -> None:
    env = LocalStack(settings).child_env()
    asyncio.run(migrate(settings.clickhouse))
    client = sync_client(settings.clickhouse)
    try:  # a table of the user's that happens to have the name: not written into
        client.command("CREATE TABLE IF NOT EXISTS mine (x UInt8) ENGINE = MergeTree ORDER BY x")
        done = replay(env, "--from", "1h", "--to-table", "mine", "--no-rollups")
        assert done.returncode != 0 and "exists with other columns than traces" in done.stderr, done.stderr
        assert int(client.command("SELECT count() FROM mine")) == 0
    finally:
        client.close()
    for name, says in (
        ("traces", "one of the pipeline's own tables"),
        ("Spans", "one of the pipeline's own tables"),
        ("score", "score_rollups is one of the pipeline's own tables"),
        ("traces_local", "one of the pipeline's own tables"),
        ("fix; DROP TABLE spans", "not a plain identifier"),
        ("1fix", "not a plain identifier"),
    ):
        done = replay(env, "--from", "1h", "--to-table", name)
        assert done.returncode != 0 and says in done.stderr, (name, done.stderr)
