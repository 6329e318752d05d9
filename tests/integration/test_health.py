"""Health endpoints of the worker and the sink (real processes, the session's real Kafka and ClickHouse):
live while running, not ready before they consume their assigned partitions, ready after, and gone once
SIGTERM stopped them."""

from __future__ import annotations

import asyncio
import time

from empty_kafka import get
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.sinks.migrate import migrate


def watch_until_ready(port: int, timeout: float = 90.0) -> list[tuple[int, dict]]:
    """Every answer of /health/ready (and a check of /health/live each time) until it says ready."""
    seen: list[tuple[int, dict]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get(port, "/health/ready")
        if status:
            seen.append((status, body))
            assert get(port, "/health/live")[0] == 200, seen[-1]
            if status == 200:
                break
        time.sleep(0.1)
    return seen


def test_worker_and_sink_are_ready_once_they_consume_their_partitions(settings: Settings) -> None:
    worker_port, sink_port = free_port(), free_port()
    env = {
        **LocalStack(settings).child_env(),
        "TRACEHOUSE_WORKER_HEALTH_PORT": str(worker_port),
        "TRACEHOUSE_SINK_HEALTH_PORT": str(sink_port),
    }
    logs = settings.data_dir / "logs"
    # The sink starts before its database exists (no migrate yet): live, but not ready.
    sink = ManagedProcess("sink", ["sink"], logs, env).start()
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    try:
        worker_seen = watch_until_ready(worker_port)
        assert worker_seen and worker_seen[-1][0] == 200, (worker_seen[-3:], worker.log_tail())
        not_ready = [body for status, body in worker_seen if status == 503]
        assert not_ready, "the worker said ready before it had its partitions"
        assert {body["reason"] for body in not_ready} <= {
            "waiting for Kafka topics",
            "waiting for partition assignment",
            "restoring state",
        }
        assert worker_seen[-1][1]["partitions"] >= 4  # all of tracehouse.spans: it is alone in its group

        assert wait_until(lambda: get(sink_port, "/health/ready")[1].get("reason") == "waiting for ClickHouse", 60)
        status, body = get(sink_port, "/health/ready")
        assert status == 503 and body["partitions"] == 0
        assert get(sink_port, "/health/live")[0] == 200
        asyncio.run(migrate(settings.clickhouse))
        sink_seen = watch_until_ready(sink_port)
        assert sink_seen and sink_seen[-1][0] == 200, (sink_seen[-3:], sink.log_tail())
        # spans, traces, rollups, alerts, scores, score rollups
        assert sink_seen[-1][1]["partitions"] == 4 + 4 + 1 + 1 + 4 + 1

        for proc, port in ((sink, sink_port), (worker, worker_port)):
            assert proc.stop(timeout=60) == 0, proc.log_tail()
            assert get(port, "/health/live")[0] == 0  # stopped: nothing answers
    finally:
        sink.stop()
        worker.stop()
