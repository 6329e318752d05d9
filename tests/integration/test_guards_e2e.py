"""An in-flight guard through the real SDK, Kafka, worker, sink and ClickHouse: an agent calling the same
tool with the same input six times trips the built-in loop guard while its root span is still open,
the app's guard consumer sees it within a second of the fifth call and stops the agent, and the alert
is published and stored once, with the trace's id, service, user and session."""

from __future__ import annotations

import asyncio
import random
import time

from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core.alerts import Alert
from tracehouse.core.config import Settings
from tracehouse.core.partitioning import partition_for
from tracehouse.core.schema import Span
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers import GuardTripped, configure, guards
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

TOOL_INPUT = '{"query": "where is my refund"}'


def looping_trace(trace_id: str, service: str, calls: int) -> list[Span]:
    """`calls` TOOL spans of one open trace (the root never sent): what warms a partition up."""
    now = time.time_ns()
    return [
        Span(
            trace_id=trace_id,
            span_id=f"{i + 2:016x}",
            parent_span_id=f"{1:016x}",
            name="search",
            kind="TOOL",
            service=service,
            start_time_ns=now - 10**6,
            end_time_ns=now,
            input=TOOL_INPUT,
        )
        for i in range(calls)
    ]


def test_a_looping_agent_trips_the_loop_guard_before_its_root_ends(settings: Settings) -> None:
    service = f"guarded-{settings.worker_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = LocalStack(settings).child_env()  # no rules file: the built-in rules, with the loop guard
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    seen: list[Alert] = []
    guard = guards(service, bootstrap=settings.kafka_bootstrap, on_alert=seen.append)
    tracer = configure(
        service=service, bootstrap=settings.kafka_bootstrap, transport_options={"linger_s": 0.01}, set_global=False
    )
    warmup = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    rng = random.Random(16)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        assert guard.wait_ready(30)

        with tracer.start_span("agent", kind="AGENT") as root:
            root.set_user("user-42")
            root.set_session("session-7")
            trace_id = root.trace_id
            # Warm the trace's partition up: a looping trace there, until the worker owns the partition and
            # its guard alert comes back (first-message costs are not what the 1 s is about).
            partition = partition_for(trace_id, settings.spans_partitions)
            other = next(
                t
                for t in (f"{rng.getrandbits(128):032x}" for _ in range(1000))
                if partition_for(t, settings.spans_partitions) == partition
            )
            warmup.submit_many(looping_trace(other, service, 5))
            assert warmup.flush(10)
            assert wait_until(lambda: guard.tripped(other), timeout=60), (guard.stats, worker.log_tail())

            stopped_at = None
            for call in range(1, 8):
                try:
                    if call != 6:  # the agent misses one check: a sixth identical call must not fire again
                        guard.check()  # between steps: raises once a guard fired for this trace
                except GuardTripped as tripped:
                    stopped_at = (call, tripped.alert)
                    break
                with tracer.start_span("search", kind="TOOL") as tool:
                    tool.set_input(TOOL_INPUT)
                if call == 5:
                    fifth_ended = time.monotonic()
                    assert tracer.flush(10)
                    # Bounded wait: the guard alert is back in the app within 1 s of the fifth call's end.
                    got = wait_until(
                        lambda: guard.tripped(trace_id),
                        timeout=max(0.0, fifth_ended + 1.0 - time.monotonic()),
                        interval=0.01,
                    )
                    latency = time.monotonic() - fifth_ended
                    assert got, (f"no guard alert {latency:.2f} s after the 5th call", guard.stats)
                    print(f"guard alert in the app {latency * 1000:.0f} ms after the 5th call ended")
            assert stopped_at is not None and stopped_at[0] == 7  # stopped after six calls
            assert not root.ended  # all of it while the agent's root span is still open
        assert tracer.flush(10)

        _, alert = stopped_at
        assert (alert.rule, alert.trace_id, alert.service) == ("tool-loop", trace_id, service)
        assert (alert.user_id, alert.session_id, alert.value, alert.threshold) == ("user-42", "session-7", 5.0, 5.0)
        assert alert.fired_at < time.time() * 1000

        def stored() -> list[tuple]:
            return client.query(
                "SELECT rule, service, user_id, session_id, value, state, labels['subject'] FROM alerts"
                " WHERE trace_id = {t:String}",
                parameters={"t": trace_id},
            ).result_rows

        assert wait_until(stored, timeout=30), stored()
        # The trace is emitted (its root has ended) and nothing more fires for it.
        assert wait_until(
            lambda: client.query(
                "SELECT count() FROM traces WHERE trace_id = {t:String}", parameters={"t": trace_id}
            ).result_rows[0][0],
            timeout=30,
        )
        time.sleep(1.0)
        assert stored() == [("tool-loop", service, "user-42", "session-7", 5.0, "firing", "search")]
        assert [a.trace_id for a in seen].count(trace_id) == 1
    finally:
        guard.close()
        tracer.shutdown(timeout=5)
        warmup.shutdown()
        client.close()
        sink.stop()
        worker.stop()


def test_a_worker_restarted_mid_trace_does_not_fire_again(settings: Settings) -> None:
    """A worker killed (SIGKILL) after a guard fired and a checkpoint covered it: its replacement replays the
    open trace from Kafka, rebuilds its counters, and publishes nothing more for it, even on a sixth call."""
    service = f"restarted-{settings.worker_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_CHECKPOINT_S": "0.5"}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker-a", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    seen: list[Alert] = []
    guard = guards(service, bootstrap=settings.kafka_bootstrap, on_alert=seen.append)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    trace_id = f"{random.Random(61).getrandbits(128):032x}"
    replacement = None
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        assert guard.wait_ready(30)
        spans = looping_trace(trace_id, service, 6)
        transport.submit_many(spans[:5])
        assert transport.flush(10)
        assert wait_until(lambda: guard.tripped(trace_id), timeout=60), (guard.stats, worker.log_tail())
        time.sleep(3)  # several checkpoints: the next owner restores the partition past the breach
        worker.kill()
        replacement = ManagedProcess("worker-b", ["worker"], logs, env).start()
        assert replacement.wait_for_log("started", timeout=60), replacement.log_tail()
        now = time.time_ns()
        root = Span(
            trace_id=trace_id,
            span_id=f"{1:016x}",
            name="agent",
            kind="AGENT",
            service=service,
            start_time_ns=now - 10**9,
            end_time_ns=now,
        )
        transport.submit_many([spans[5], root])
        assert transport.flush(10)

        def stored_trace() -> int:
            rows = client.query(
                "SELECT max(span_count) FROM traces WHERE trace_id = {t:String}", parameters={"t": trace_id}
            ).result_rows
            return int(rows[0][0] or 0) if rows else 0

        # The replacement rebuilt the whole trace (replayed from before the breach) and emitted it.
        assert wait_until(lambda: stored_trace() == 7, timeout=90), (stored_trace(), replacement.log_tail())
        time.sleep(1.0)
        assert [a.trace_id for a in seen].count(trace_id) == 1, seen
        rows = client.query("SELECT count() FROM alerts WHERE trace_id = {t:String}", parameters={"t": trace_id})
        assert rows.result_rows[0][0] == 1
    finally:
        guard.close()
        transport.shutdown()
        client.close()
        sink.stop()
        if replacement is not None:
            replacement.stop()
        worker.stop()
