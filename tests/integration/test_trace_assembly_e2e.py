"""Trace assembly through real Kafka, the worker and the sink: out-of-order, late, duplicate and orphan
spans, and a trace across two services, each checked in ClickHouse's `traces` table."""

from __future__ import annotations

import asyncio
import random
import time

from kafka_groups import start_groups_at_end

from tracehouse.core.config import Settings
from tracehouse.core.schema import LLMCall, Span, TokenUsage
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

RNG = random.Random(17)


def ids() -> tuple[str, str, str, str]:
    return (f"{RNG.getrandbits(128):032x}", *(f"{RNG.getrandbits(64) | 1:016x}" for _ in range(3)))  # type: ignore[return-value]


def make(trace: str, span_id: str, parent: str, name: str, service: str, offset_ms: int, **kw: object) -> Span:
    now = time.time_ns()
    return Span(
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        service=service,
        start_time_ns=now + offset_ms * 1_000_000,
        end_time_ns=now + (offset_ms + 50) * 1_000_000,
        **kw,  # type: ignore[arg-type]
    )


def test_assembly_cases_through_the_real_pipeline(settings: Settings) -> None:
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = {
        **LocalStack(settings).child_env(),
        "TRACEHOUSE_TRACE_QUIET_S": "1",
        "TRACEHOUSE_TRACE_MAX_AGE_S": "6",
    }
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    client = sync_client(settings.clickhouse)

    def send(*spans: Span) -> None:  # each call is its own Kafka message: arrival order is ours
        transport.submit_many(list(spans))
        assert transport.flush(10)

    def record(trace: str) -> tuple | None:
        rows = client.query(
            "SELECT version, span_count, error_count, complete, orphan_spans, services, root_name, total_tokens"
            " FROM traces FINAL WHERE trace_id = {t:String}",
            parameters={"t": trace},
        ).result_rows
        return rows[0] if rows else None

    def wait_record(trace: str, version: int, timeout: float = 30) -> tuple:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = record(trace)
            if got and got[0] >= version:
                return got
            time.sleep(0.2)
        raise AssertionError(f"trace {trace}: {record(trace)} never reached version {version}")

    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(2)

        # Out of order, two services, a duplicate: the child from service "billing" arrives first,
        # then the root, then the same child again (a producer retry).
        t1, root1, child1, grandchild1 = ids()
        child = make(t1, child1, root1, "charge", "billing", 10, status="ERROR")
        send(
            make(
                t1,
                grandchild1,
                child1,
                "llm",
                "billing",
                20,
                kind="LLM",
                llm=LLMCall(model="gpt-4o"),
                usage=TokenUsage(input=100, output=20),
            )
        )
        send(child)
        send(make(t1, root1, "", "checkout", "shop", 0))
        send(child)
        got = wait_record(t1, 3)
        assert got[1:] == (3, 1, True, 0, ["billing", "shop"], "checkout", 120), got

        # Late span: arrives after the trace was emitted -> a revised record, not a drop.
        send(make(t1, f"{RNG.getrandbits(64) | 1:016x}", root1, "late_tool", "shop", 70, kind="TOOL"))
        got = wait_record(t1, 4)
        assert got[:2] == (4, 4), got

        # Orphan: the parent never arrives; the span is kept and the trace marked incomplete.
        t2, root2, child2, missing = ids()
        send(make(t2, root2, "", "chat", "shop", 0), make(t2, child2, missing, "orphan", "shop", 5))
        got = wait_record(t2, 2)
        assert got[1:5] == (2, 0, False, 1), got

        # No root at all: emitted when the maximum age passes, as an incomplete trace.
        t3, _, child3, parent3 = ids()
        send(make(t3, child3, parent3, "lonely", "shop", 0))
        got = wait_record(t3, 1, timeout=30)
        assert got[1:4] == (1, 0, False) and got[6] == "", got
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()
