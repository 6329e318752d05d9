"""The sink under real faults: SIGKILL in the middle of a batch, and ClickHouse gone for 30 seconds.

Both must end with every span exactly once in `spans`: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import pytest
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counts(settings: Settings, run: str) -> tuple[int, int]:
    """(rows, distinct spans) of one test run's spans; without FINAL, so a duplicate row shows."""
    client = sync_client(settings.clickhouse)
    try:
        rows, distinct = client.query(
            "SELECT count(), uniqExact(trace_id, span_id) FROM spans"
            " WHERE resource_attributes['test.run'] = {run:String}",
            parameters={"run": run},
        ).result_rows[0]
        return int(rows), int(distinct)
    finally:
        client.close()


def start_sink(settings: Settings, *args: str) -> ManagedProcess:
    env = LocalStack(settings).child_env()
    sink = ManagedProcess("sink", ["sink", *args], settings.data_dir / "logs", env).start()
    assert sink.wait_for_log("started", timeout=60), sink.log_tail()
    return sink


def make_traces(count: int, seed: int, run: str) -> list[list]:
    """Realistic traces whose spans carry the run's tag, so counting them is one cheap query."""
    factory = TraceFactory(TrafficOptions(seed=seed, prompt_bytes=512))
    traces = [factory.any() for _ in range(count)]
    for trace in traces:
        for span in trace:
            span.resource = {"test.run": run}
    return traces


def test_sink_killed_mid_batch_stores_every_span_exactly_once(settings: Settings) -> None:
    asyncio.run(migrate(settings.clickhouse))
    run = settings.sink_group
    traces = make_traces(12000, seed=11, run=run)
    spans = [s for t in traces for s in t]
    transport = SpanTransport(settings.kafka_bootstrap)
    transport.submit_many(spans)
    assert transport.flush(60)
    transport.shutdown()

    # Small batches so the kill lands between inserts and commits, many times over.
    sink = start_sink(settings, "--batch-rows", "500", "--flush-interval", "0.05")
    try:
        assert wait_until(lambda: counts(settings, run)[0] > 0, timeout=60, interval=0.02)
        sink.kill()
        landed_at_kill = counts(settings, run)[0]
        assert landed_at_kill < len(spans), "the kill came too late to test anything"
        sink = start_sink(settings, "--batch-rows", "500", "--flush-interval", "0.05")
        assert wait_until(lambda: counts(settings, run)[1] >= len(spans), timeout=120)
        time.sleep(2)  # a duplicate would arrive in this time
        assert counts(settings, run) == (len(spans), len(spans))
    finally:
        sink.stop()


def test_sink_dying_between_insert_and_commit_does_not_insert_twice(settings: Settings) -> None:
    """The decisive moment, hit exactly: the batch is in ClickHouse, its offsets are not in Kafka."""
    asyncio.run(migrate(settings.clickhouse))
    run = settings.sink_group
    spans = [s for t in make_traces(3000, seed=12, run=run) for s in t]
    transport = SpanTransport(settings.kafka_bootstrap)
    transport.submit_many(spans)
    assert transport.flush(60)
    transport.shutdown()

    def whole_table() -> tuple[int, int]:
        """Every row this test's sinks stored (the topic also holds other tests' spans), and how many distinct
        Kafka records they came from: the sink stores each record once. (A span a producer sent twice, in
        two records, is two rows by design until `spans` merges them; counting span ids would flag it.)"""
        client = sync_client(settings.clickhouse)
        try:
            rows, distinct = client.query(
                "SELECT count(), uniqExact(ingest_partition, ingest_offset, trace_id, span_id) FROM spans"
            ).result_rows[0]
            return int(rows), int(distinct)
        finally:
            client.close()

    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_FAULT_EXIT_BEFORE_COMMIT": "3"}
    doomed = ManagedProcess("sink-doomed", ["sink", "--batch-rows", "1000"], settings.data_dir / "logs", env)
    doomed.start()
    assert doomed.proc is not None
    assert doomed.proc.wait(timeout=120) == 137, doomed.log_tail()
    assert whole_table()[0] > 0  # three batches stored, the third one's offsets never committed

    sink = start_sink(settings, "--batch-rows", "1000", "--flush-interval", "0.2")
    try:
        assert wait_until(lambda: counts(settings, run)[1] >= len(spans), timeout=120)
        time.sleep(2)
        assert counts(settings, run) == (len(spans), len(spans))
        rows, distinct = whole_table()
        assert rows == distinct, f"{rows - distinct} rows stored twice"
        assert "resuming at" in sink.log_tail(400), sink.log_tail(400)
    finally:
        sink.stop()


@pytest.mark.slow
def test_clickhouse_down_for_30_seconds_under_load_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL the ClickHouse endpoint while spans keep coming; start it again 30 s later."""
    server = EmbeddedClickHouse(tmp_path / "own-clickhouse")
    server.start()
    settings = dataclasses.replace(settings, clickhouse_url=server.url)
    asyncio.run(migrate(settings.clickhouse))
    sink = start_sink(settings, "--flush-interval", "0.3")
    transport = SpanTransport(settings.kafka_bootstrap)
    run = settings.sink_group
    stop = threading.Event()
    total_spans = 0

    def produce() -> None:
        nonlocal total_spans
        seed = 100
        while not stop.is_set():
            seed += 1
            batch = make_traces(100, seed, run)
            spans = [s for t in batch for s in t]
            total_spans += len(spans)
            transport.submit_many(spans)
            time.sleep(0.1)

    producer = threading.Thread(target=produce)
    producer.start()
    rss: list[float] = []
    try:
        time.sleep(3)
        assert sink.pid is not None
        server.kill()
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:
            rss.append(rss_mb(sink.pid))
            assert sink.alive(), sink.log_tail()
            time.sleep(1)
        server.start()
        time.sleep(3)
        stop.set()
        producer.join()
        assert transport.flush(60)
        transport.shutdown()
        assert transport.stats.dropped == 0 and transport.stats.failed == 0
        assert wait_until(lambda: counts(settings, run)[1] >= total_spans, timeout=120), counts(settings, run)
        time.sleep(2)
        assert counts(settings, run) == (total_spans, total_spans)
        log = sink.log_tail(400)
        assert "retry" in log, log
        # Memory stays bounded while ClickHouse is away: Kafka holds the data, not the sink. The sink
        # holds one batch and its retries, so memory levels off instead of growing with the outage.
        first_half, second_half = rss[: len(rss) // 2], rss[len(rss) // 2 :]
        assert max(second_half) - max(first_half) < 40, rss
        assert max(rss) < 800, rss
    finally:
        stop.set()
        producer.join()
        sink.stop()
        server.stop()
