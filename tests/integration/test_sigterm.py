"""SIGTERM under load, as a rolling update or a node drain sends it: the worker or the sink stops in the
middle of a stream and a replacement takes over. Every span must be in `spans` exactly once (counted
without FINAL, so a duplicate row shows) and every trace whole in `traces FINAL`.

Real processes (the `tracehouse` CLI), the session's real Apache Kafka and ClickHouse engine, spans sent
with the SDK's transport while the process stops.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import pytest
from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

SINK_ARGS = ["sink", "--flush-interval", "0.3", "--batch-rows", "2000"]


class Load:
    """Traces of one service sent from a thread, about 400 traces (1,000+ spans) a second."""

    def __init__(self, settings: Settings, service: str) -> None:
        # A seed of its own: the same seed makes the same trace and span ids, which the worker drops as
        # duplicates of another test's spans still in the session's topic.
        self.factory = TraceFactory(TrafficOptions(seed=secrets.randbelow(2**31), prompt_bytes=256))
        self.transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.02)
        self.service = service
        self.sent: dict[str, int] = {}  # trace id -> spans
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load")

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(40):
                trace = self.factory.any()
                for span in trace:
                    span.service = self.service
                self.sent[trace[0].trace_id] = len(trace)
                self.transport.submit_many(trace)
            time.sleep(0.1)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            assert self.transport.flush(60)
        self.transport.shutdown()


@pytest.mark.parametrize("victim", ["sink", "worker"])
def test_sigterm_under_load_loses_and_doubles_nothing(settings: Settings, victim: str) -> None:
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = {
        **LocalStack(settings).child_env(),
        "TRACEHOUSE_TRACE_QUIET_S": "1",
        "TRACEHOUSE_WORKER_HEALTH_PORT": "0",
        "TRACEHOUSE_SINK_HEALTH_PORT": "0",
    }
    logs = settings.data_dir / "logs"
    args = {"sink": SINK_ARGS, "worker": ["worker"]}
    procs = {name: ManagedProcess(f"{name}-a", argv, logs, env).start() for name, argv in args.items()}
    for proc in procs.values():
        assert proc.wait_for_log("started", timeout=60), proc.log_tail()
    service = f"sigterm-{victim}-{settings.sink_group}"
    load = Load(settings, service).start()
    client = sync_client(settings.clickhouse)

    def one(sql: str) -> int:
        return int(client.query(sql, parameters={"s": service}).result_rows[0][0] or 0)

    def traces_stored() -> int:
        return one("SELECT count() FROM traces FINAL WHERE service = {s:String}")

    replacement = None
    try:
        assert wait_until(lambda: traces_stored() > 200, timeout=60), procs[victim].log_tail()
        stopping = procs[victim]
        assert stopping.stop(timeout=60) == 0, f"{victim} did not exit cleanly on SIGTERM:\n{stopping.log_tail()}"
        time.sleep(1)  # spans keep arriving while nothing of this kind runs
        replacement = ManagedProcess(f"{victim}-b", args[victim], logs, env).start()
        assert replacement.wait_for_log("started", timeout=60), replacement.log_tail()
        time.sleep(3)
        load.stop()
        total = sum(load.sent.values())

        assert wait_until(
            lambda: one("SELECT uniqExact(trace_id, span_id) FROM spans WHERE service = {s:String}") >= total,
            timeout=120,
        ), replacement.log_tail()
        assert wait_until(lambda: traces_stored() >= len(load.sent), timeout=120), (traces_stored(), len(load.sent))
        time.sleep(2)  # a duplicate would arrive in this time
        assert one("SELECT count() FROM spans WHERE service = {s:String}") == total, "spans stored twice"
        rows = client.query(
            "SELECT trace_id, span_count, complete FROM traces FINAL WHERE service = {s:String}",
            parameters={"s": service},
        ).result_rows
        stored = {trace_id: (count, complete) for trace_id, count, complete in rows}
        assert set(stored) == set(load.sent)
        broken = {t: (stored[t], n) for t, n in load.sent.items() if stored[t] != (n, True)}
        assert not broken, list(broken.items())[:5]
    finally:
        load.stop()
        client.close()
        for proc in (replacement, *procs.values()):
            if proc is not None:
                proc.stop()
