"""A worker killed with SIGKILL while scores stream in, on real Apache Kafka: its replacement restores the
score windows' snapshot and replays the rest, so every score is counted exactly once in `score_rollups`
(summed over its groups: a replayed score whose trace the new worker does not know counts under OTHER),
retries of a score_id included."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from kafka_groups import start_groups_at_end
from test_rollups_alerts_e2e import llm_span
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.scores import Score
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate


def test_worker_killed_mid_stream_counts_every_score_once(settings: Settings) -> None:
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = LocalStack(settings).child_env()
    logs = settings.data_dir / "logs"
    service = f"svc-{settings.worker_group}"
    name = f"fb-{settings.worker_group}"  # this test's scores only
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.3"], logs, env).start()
    worker = ManagedProcess("worker-a", ["worker"], logs, env).start()
    assert worker.wait_for_log("started", timeout=60), worker.log_tail()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.02)
    rng = random.Random(16)
    spans = [llm_span(rng, service, time.time_ns() - 10**6, 100.0, False) for _ in range(20)]
    transport.submit_many(spans)
    assert transport.flush(10)
    traces = [s.trace_id for s in spans]

    sent: dict[str, Score] = {}
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            batch = [Score(trace_id=rng.choice(traces), name=name, value=rng.random()) for _ in range(5)]
            sent.update((s.score_id, s) for s in batch)
            retries = [rng.choice(list(sent.values())) for _ in range(2)]  # same ids: counted once
            for score in [*batch, *retries]:
                transport.submit_score(score)
            time.sleep(0.1)

    def counted() -> int:
        query = "SELECT sum(count) FROM score_rollups FINAL WHERE name = {n:String} AND window_seconds = 10"
        return int(client.query(query, parameters={"n": name}).result_rows[0][0] or 0)

    producer = threading.Thread(target=produce)
    replacement = None
    try:
        time.sleep(4)  # the traces emitted: the worker knows their service and model
        producer.start()
        assert wait_until(lambda: counted() > 50, timeout=60), worker.log_tail()
        time.sleep(6)  # past a checkpoint, so the replacement restores windows and replays from a commit
        worker.kill()  # mid-stream: the windows since the last snapshot and the held events die with it
        replacement = ManagedProcess("worker-b", ["worker"], logs, env).start()
        assert replacement.wait_for_log("started", timeout=60), replacement.log_tail()
        time.sleep(4)
        stop.set()
        producer.join()
        assert transport.flush(60)
        total = len(sent)
        assert wait_until(lambda: counted() >= total, timeout=90), (counted(), total)
        time.sleep(3)
        assert counted() == total
        assert ": windows restored to" in replacement.log_tail(400), replacement.log_tail(400)
        by_service = dict(
            client.query(
                "SELECT service, sum(count) FROM score_rollups FINAL WHERE name = {n:String} AND window_seconds = 10"
                " GROUP BY service",
                parameters={"n": name},
            ).result_rows
        )
        assert by_service.get(service, 0) > 0, by_service  # before the crash, the traces were known
    finally:
        stop.set()
        if producer.is_alive():
            producer.join()
        transport.shutdown()
        client.close()
        for proc in (replacement, worker, sink):
            if proc is not None:
                proc.stop()
