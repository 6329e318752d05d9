"""Budgets per user through the real worker, Kafka and ClickHouse: a user whose traces, spread over
partitions, go over a cost budget fires once and resolves once, with the user on the alert; a user
under the budget fires nothing."""

from __future__ import annotations

import asyncio
import random
import time

from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.schema import LLMCall, Span, TokenUsage
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

WINDOW = 10


def agent_trace(rng: random.Random, service: str, user: str, cost: float) -> list[Span]:
    """A root span naming the user, and an LLM call that costs `cost` and names no user (its trace's)."""
    trace_id = f"{rng.getrandbits(128):032x}"
    root_id = f"{rng.getrandbits(64) | 1:016x}"
    end = time.time_ns() - 10**6
    root = Span(
        trace_id=trace_id,
        span_id=root_id,
        name="agent",
        kind="AGENT",
        service=service,
        start_time_ns=end - 50_000_000,
        end_time_ns=end,
        user_id=user,
        session_id=f"session-{user}",
    )
    call = Span(
        trace_id=trace_id,
        span_id=f"{rng.getrandbits(64) | 1:016x}",
        parent_span_id=root_id,
        name="chat",
        kind="LLM",
        service=service,
        start_time_ns=end - 40_000_000,
        end_time_ns=end - 10_000_000,
        llm=LLMCall(model="gpt-4o-mini", provider="openai"),
        usage=TokenUsage(input=100, output=10),
        cost_usd=cost,
    )
    return [root, call]


def test_a_user_over_a_cost_budget_fires_once_and_resolves_once(settings: Settings) -> None:
    service = f"svc-{settings.worker_group}"
    alice, bob = f"alice-{settings.worker_group}", f"bob-{settings.worker_group}"
    rules = settings.data_dir / "alerts.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(
        f"""
[[rules]]
name = "user-cost-test"
type = "budget"
key = "user"
metric = "cost_usd"
window_seconds = {WINDOW}
threshold = 1.0
severity = "critical"
"""
    )
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_ALERT_RULES": str(rules)}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    rng = random.Random(16)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned

        # One window: alice runs 6 traces at $0.25 (trace ids spread them over the partitions): $1.50,
        # over the $1 budget; bob runs 2: $0.50, under it.
        while not 1.5 < time.time() % WINDOW < 4:
            time.sleep(0.05)
        window = int(time.time()) // WINDOW * WINDOW
        spans = [s for _ in range(6) for s in agent_trace(rng, service, alice, 0.25)]
        spans += [s for _ in range(2) for s in agent_trace(rng, service, bob, 0.25)]
        transport.submit_many(spans)
        assert transport.flush(10)

        def alerts() -> list[tuple]:
            return client.query(
                "SELECT state, value, threshold, user_id, session_id, toUnixTimestamp(window_start),"
                " window_seconds, service, labels['user_id'], message"
                " FROM alerts FINAL WHERE rule = 'user-cost-test' ORDER BY fired_at",
            ).result_rows

        # resolved once the window is over: its end + the partitions' grace (10 s) + the merge delay
        got = wait_until(lambda: len(alerts()) >= 2, timeout=60) and alerts()
        assert got, (alerts(), worker.log_tail())
        time.sleep(3)  # nothing more comes: no second firing, nothing for bob
        got = alerts()
        assert [row[0] for row in got] == ["firing", "resolved"], got
        for _state, value, threshold, user, session, start, seconds, svc, label, message in got:
            assert (user, session, start, seconds, svc, label) == (alice, "", window, WINDOW, "*", alice)
            assert threshold == 1.0 and value > 1.0 and value <= 1.5 + 1e-9
            assert alice in message
        assert abs(got[-1][1] - 1.5) < 1e-9  # the resolved value: the window's whole sum
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()
