"""A 200 from `tracehouse receiver` means Kafka holds the spans: the receiver killed with SIGKILL under OTLP
load (while requests are in flight, and between requests), or stopped with SIGTERM, loses nothing it
acknowledged and doubles nothing.

Everything is real: the receiver, the worker and the sink run as their own processes on the session's
Apache Kafka and ClickHouse engine; the load is protobuf OTLP POSTs of 200 spans from four concurrent
senders (`receiver_load`). After the faults, every span whose POST got 200 must be in `spans` exactly
once (read with FINAL, as the tables' replacing engines define "once"), and every trace whose POST got
200 whole in `traces FINAL`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kafka_groups import start_groups_at_end
from receiver_load import SPANS_PER_TRACE, Ledger, OtlpLoad
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    port: int
    service: str
    receiver: ManagedProcess | None = None
    starts: int = 0

    def start_receiver(self) -> ManagedProcess:
        self.starts += 1
        name = f"receiver-{self.starts}"
        args = ["receiver", "--port", str(self.port)]
        proc = ManagedProcess(name, args, self.settings.data_dir / "logs", self.env).start()
        assert proc.wait_for_log("started on", timeout=60), proc.log_tail()
        self.receiver = proc
        return proc


@pytest.fixture
def stack(settings: Settings) -> Iterator[Stack]:
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = LocalStack(settings).child_env()
    logs = settings.data_dir / "logs"
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.3"], logs, env).start()
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    state = Stack(settings, env, free_port(), f"svc-{settings.sink_group}")
    try:
        assert sink.wait_for_log("started", timeout=60), sink.log_tail()
        assert worker.wait_for_log("started", timeout=60), worker.log_tail()
        state.start_receiver()
        yield state
    finally:
        for proc in (state.receiver, worker, sink):
            if proc is not None:
                proc.stop()


def check_stored(settings: Settings, service: str, ledger: Ledger) -> None:
    """Every acknowledged span once in `spans FINAL`, every acknowledged trace whole in `traces FINAL`."""
    acknowledged = ledger.acknowledged_spans
    assert acknowledged, ledger.answers
    client = sync_client(settings.clickhouse)
    params = {"s": service}

    def stored_spans() -> dict[str, int]:
        rows = client.query(
            "SELECT span_id, count() FROM spans FINAL WHERE service = {s:String} GROUP BY span_id", parameters=params
        ).result_rows
        return {span_id: int(n) for span_id, n in rows}

    def traces() -> dict[str, tuple[int, bool]]:
        rows = client.query(
            "SELECT trace_id, span_count, complete FROM traces FINAL WHERE service = {s:String}", parameters=params
        ).result_rows
        return {trace_id: (int(n), bool(complete)) for trace_id, n, complete in rows}

    try:
        assert wait_until(lambda: acknowledged <= set(stored_spans()), timeout=120), (
            len(acknowledged - set(stored_spans())),
            ledger.answers,
        )
        want = set(ledger.acknowledged)
        assert wait_until(lambda: want <= set(traces()), timeout=120), (len(want - set(traces())), ledger.answers)
        time.sleep(2)  # a late duplicate would land in this time
        doubled = {s: n for s, n in stored_spans().items() if n > 1}
        assert not doubled, list(doubled.items())[:5]
        stored = traces()
        broken = {t: stored[t] for t in want if stored[t] != (SPANS_PER_TRACE, True)}
        assert not broken, list(broken.items())[:5]
        # Spans of POSTs that got no 200 may or may not be stored, but never half a trace of them twice.
        known = acknowledged | {s for spans in ledger.unconfirmed.values() for s in spans}
        assert set(stored_spans()) <= known
    finally:
        client.close()


def more_acknowledged(load: OtlpLoad, traces: int) -> bool:
    """Wait until `traces` more traces were acknowledged (the receiver is up and taking load)."""
    before = len(load.ledger.acknowledged)
    return bool(wait_until(lambda: len(load.ledger.acknowledged) >= before + traces, timeout=60))


def test_receiver_killed_in_flight_and_between_requests_loses_no_acknowledged_span(stack: Stack) -> None:
    load = OtlpLoad(stack.port, stack.service).start()
    try:
        for moment in ("in flight", "between requests", "in flight"):
            assert more_acknowledged(load, 8), (load.ledger.answers, stack.receiver and stack.receiver.log_tail())
            if moment == "between requests":
                load.pause()
            assert stack.receiver is not None
            stack.receiver.kill()
            time.sleep(0.5)  # senders meet a closed port, as exporters would
            stack.start_receiver()
            load.resume()
        assert wait_until(lambda: load.ledger.answers.get("200", 0) >= 40, timeout=60)
    finally:
        ledger = load.stop()
    failures = {a: n for a, n in ledger.answers.items() if a != "200"}
    assert failures, "no request was caught by a kill: the test tested nothing"
    check_stored(stack.settings, stack.service, ledger)


def test_receiver_sigterm_under_load_answers_honestly_and_loses_nothing(stack: Stack) -> None:
    load = OtlpLoad(stack.port, stack.service).start()
    try:
        for _ in range(2):
            assert more_acknowledged(load, 8), (load.ledger.answers, stack.receiver and stack.receiver.log_tail())
            assert stack.receiver is not None
            assert stack.receiver.stop(timeout=30) == 0, stack.receiver.log_tail()  # SIGTERM: flush, exit 0
            assert "were not acknowledged" not in stack.receiver.log_tail(200)
            stack.start_receiver()
        assert wait_until(lambda: load.ledger.answers.get("200", 0) >= 40, timeout=60)
    finally:
        ledger = load.stop()
    check_stored(stack.settings, stack.service, ledger)
