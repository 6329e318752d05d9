"""A worker killed with SIGKILL in the middle of a stream, on real Apache Kafka: when it (or another
worker) takes over, no trace is lost and no rollup counts a span twice."""

from __future__ import annotations

import asyncio
import threading
import time

from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate


def test_worker_killed_mid_stream_loses_no_trace(settings: Settings) -> None:
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = LocalStack(settings).child_env()
    logs = settings.data_dir / "logs"
    service = f"svc-{settings.worker_group}"
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.3"], logs, env).start()
    worker = ManagedProcess("worker-a", ["worker"], logs, env).start()
    assert worker.wait_for_log("started", timeout=60), worker.log_tail()

    factory = TraceFactory(TrafficOptions(seed=5, prompt_bytes=256))
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.02)
    sent: dict[str, int] = {}
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            for _ in range(40):
                trace = factory.any()
                for span in trace:
                    span.service = service
                sent[trace[0].trace_id] = len(trace)
                transport.submit_many(trace)
            time.sleep(0.1)

    producer = threading.Thread(target=produce)
    producer.start()
    client = sync_client(settings.clickhouse)

    def traces_stored() -> int:
        return int(
            client.query(
                "SELECT count() FROM traces FINAL WHERE service = {s:String}", parameters={"s": service}
            ).result_rows[0][0]
        )

    replacement = None
    try:
        assert wait_until(lambda: traces_stored() > 50, timeout=60), worker.log_tail()
        time.sleep(6)  # past a checkpoint, so the replacement restores windows and replays from a commit
        worker.kill()  # mid-stream: open traces and held events die with it
        replacement = ManagedProcess("worker-b", ["worker"], logs, env).start()
        assert replacement.wait_for_log("started", timeout=60), replacement.log_tail()
        time.sleep(4)
        stop.set()
        producer.join()
        assert transport.flush(60)
        transport.shutdown()
        assert wait_until(lambda: traces_stored() >= len(sent), timeout=120), (traces_stored(), len(sent))
        rows = client.query(
            "SELECT trace_id, span_count, complete FROM traces FINAL WHERE service = {s:String}",
            parameters={"s": service},
        ).result_rows
        stored = {trace_id: (count, complete) for trace_id, count, complete in rows}
        assert set(stored) == set(sent)
        wrong = {t: (stored[t], n) for t, n in sent.items() if stored[t] != (n, True)}
        assert not wrong, list(wrong.items())[:5]

        # Rollups: every span counted exactly once across the 10-second windows, despite the replay.
        total = sum(sent.values())

        def rolled_up() -> int:
            return int(
                client.query(
                    "SELECT sum(count) FROM rollups FINAL WHERE service = {s:String} AND window_seconds = 10",
                    parameters={"s": service},
                ).result_rows[0][0]
                or 0
            )

        assert wait_until(lambda: rolled_up() >= total, timeout=60), (rolled_up(), total)
        time.sleep(3)
        assert rolled_up() == total
        assert "restored up to offset" in replacement.log_tail(400), replacement.log_tail(400)
    finally:
        stop.set()
        producer.join()
        client.close()
        for proc in (replacement, worker, sink):
            if proc is not None:
                proc.stop()
