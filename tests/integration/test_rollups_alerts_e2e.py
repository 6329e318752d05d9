"""Windowed rollups and alerts through the real worker, Kafka and ClickHouse: a rollup's counts and
quantiles against exact values computed here, and an alert that fires once and resolves once."""

from __future__ import annotations

import asyncio
import math
import random
import time

from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable, price_span
from tracehouse.core.schema import Event, LLMCall, Span, TokenUsage
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

WINDOW = 10


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def llm_span(rng: random.Random, service: str, end_ns: int, duration_ms: float, rate_limited: bool) -> Span:
    start = end_ns - int(duration_ms * 1_000_000)
    attributes = {"error.type": "rate_limit"} if rate_limited else {}
    events = (
        [Event("exception", end_ns, {"exception.type": "RateLimitError", "exception.message": "429"})]
        if rate_limited
        else []
    )
    return Span(
        trace_id=f"{rng.getrandbits(128):032x}",
        span_id=f"{rng.getrandbits(64) | 1:016x}",
        name="chat",
        kind="LLM",
        service=service,
        start_time_ns=start,
        end_time_ns=end_ns,
        status="ERROR" if rate_limited else "OK",
        attributes=attributes,
        events=events,
        llm=LLMCall(model="gpt-4o-mini", provider="openai"),
        usage=None if rate_limited else TokenUsage(input=rng.randint(100, 900), output=rng.randint(10, 90), cached=50),
    )


def test_rollup_matches_exact_values_and_an_alert_fires_and_resolves(settings: Settings) -> None:
    service = f"svc-{settings.worker_group}"
    rules = settings.data_dir / "alerts.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(
        f"""
[[rules]]
name = "rate-limits-test"
metric = "rate_limit_count"
window_seconds = {WINDOW}
comparison = ">"
threshold = 2
severity = "critical"
filters = {{ service = "{service}" }}
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
    rng = random.Random(3)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned

        # Window 1: 200 LLM calls with known latencies, 5 of them rate limited.
        while not 1.5 < time.time() % WINDOW < 4:  # every span (ending up to 1 s ago) inside one window
            time.sleep(0.05)
        window1 = int(time.time()) // WINDOW * WINDOW
        now_ns = time.time_ns()
        latencies = [rng.lognormvariate(6.5, 0.6) for _ in range(200)]
        spans = [llm_span(rng, service, now_ns - rng.randint(0, 10**9), ms, i < 5) for i, ms in enumerate(latencies)]
        transport.submit_many(spans)
        assert transport.flush(10)

        # Window 2 (and 3, to be sure one is evaluated): healthy traffic, so the alert resolves.
        while int(time.time()) // WINDOW * WINDOW == window1:
            time.sleep(0.1)
        for _ in range(2):
            time.sleep(1)
            healthy = [llm_span(rng, service, time.time_ns() - 10**6, 300.0, False) for _ in range(20)]
            transport.submit_many(healthy)
            assert transport.flush(10)
            time.sleep(WINDOW - 1)

        def rollup() -> tuple | None:
            rows = client.query(
                "SELECT count, error_count, rate_limit_count, latency_p50_ms, latency_p95_ms, latency_p99_ms,"
                " latency_max_ms, input_tokens, output_tokens, cached_tokens, cost_usd FROM rollups FINAL"
                " WHERE service = {s:String} AND window_seconds = {w:UInt32} AND window_start = {t:UInt32}",
                parameters={"s": service, "w": WINDOW, "t": window1},
            ).result_rows
            return rows[0] if rows and rows[0][0] == len(spans) else None

        row = wait_until(rollup, timeout=30)
        assert row, client.query(
            "SELECT window_start, count FROM rollups WHERE service = {s:String}", parameters={"s": service}
        ).result_rows
        count, errors, rate_limits, p50, p95, p99, max_ms, tokens_in, tokens_out, cached, cost = row
        assert (count, errors, rate_limits) == (200, 5, 5)
        for got, q in ((p50, 0.5), (p95, 0.95), (p99, 0.99)):
            assert math.isclose(got, exact_quantile(latencies, q), rel_tol=0.02), (q, got)
        assert math.isclose(max_ms, max(latencies), rel_tol=0.001)
        assert tokens_in == sum(s.usage.input for s in spans if s.usage)
        assert tokens_out == sum(s.usage.output for s in spans if s.usage)
        assert cached == sum(s.usage.cached for s in spans if s.usage)
        prices = PriceTable()
        assert math.isclose(cost, sum(price_span(prices, "gpt-4o-mini", s.usage, None)[0] for s in spans), rel_tol=1e-9)

        def alerts() -> list[tuple]:
            return client.query(
                "SELECT state, value, threshold, toUnixTimestamp64Milli(fired_at), toUnixTimestamp(window_start)"
                " FROM alerts FINAL"
                " WHERE rule = 'rate-limits-test' AND service = {s:String} ORDER BY fired_at",
                parameters={"s": service},
            ).result_rows

        got = wait_until(lambda: len(alerts()) >= 2, timeout=30) and alerts()
        assert got, alerts()
        states = [(state, value, window) for state, value, _, _, window in got]
        assert states[0] == ("firing", 5.0, window1)
        assert states[1][0] == "resolved"
        assert len(states) == 2, states  # fired once, resolved once: no storm
        delay_ms = got[0][3] - (window1 + WINDOW) * 1000
        assert delay_ms < 2000, f"alert {delay_ms} ms after its window closed"
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()
