"""Tail sampling through real Kafka, the worker, the sink and ClickHouse: with keep-errors plus 10 % of the
rest, every error trace is stored whole, the others as the trace-id hash says (about a tenth), `traces`
records every trace with its `sampled` verdict, and the rollups count every span sent."""

from __future__ import annotations

import asyncio
import random
import time

from empty_kafka import get
from kafka_groups import commit_at_end, start_groups_at_end
from waiting import wait_until

from tracehouse.cli.top import TopOptions, read_sampling, sampling_line
from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.schema import LLMCall, Span, TokenUsage
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.pipeline.sampling import keep_by_rate
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

RATE = 0.1


def trace_spans(rng: random.Random, service: str, error: bool) -> list[Span]:
    """A root and two LLM calls, ended a moment ago; with `error`, the second call failed."""
    trace = f"{rng.getrandbits(128):032x}"
    root_id, *child_ids = (f"{rng.getrandbits(64) | 1:016x}" for _ in range(3))
    now = time.time_ns()
    spans = [
        Span(
            trace_id=trace,
            span_id=child_id,
            parent_span_id=root_id,
            name="chat",
            kind="LLM",
            service=service,
            start_time_ns=now - 400_000_000 + i * 100_000_000,
            end_time_ns=now - 300_000_000 + i * 100_000_000,
            status="ERROR" if error and i == 1 else "OK",
            llm=LLMCall(model="gpt-4o-mini", provider="openai"),
            usage=TokenUsage(input=rng.randint(100, 900), output=rng.randint(10, 90)),
        )
        for i, child_id in enumerate(child_ids)
    ]
    root = Span(
        trace_id=trace,
        span_id=root_id,
        name="agent",
        kind="AGENT",
        service=service,
        start_time_ns=now - 500_000_000,
        end_time_ns=now,
    )
    return [*spans, root]


def test_keep_errors_and_a_tenth_of_the_rest(settings: Settings) -> None:
    service = f"svc-{settings.worker_group}"
    rules = settings.data_dir / "alerts.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(f"[sampling]\nkeep_errors = true\nrate = {RATE}\n")
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    asyncio.run(commit_at_end(settings.kafka_bootstrap, settings.sink_group, [topics.SPANS_KEPT]))
    health_port = free_port()
    env = {
        **LocalStack(settings).child_env(),
        "TRACEHOUSE_ALERT_RULES": str(rules),
        "TRACEHOUSE_SAMPLING": "1",
        "TRACEHOUSE_TRACE_QUIET_S": "0.5",
        "TRACEHOUSE_WORKER_HEALTH_PORT": str(health_port),
    }
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

        traces = [trace_spans(rng, service, error=i % 10 == 0) for i in range(600)]
        sent = [s for t in traces for s in t]
        for i in range(0, len(sent), 200):
            transport.submit_many(sent[i : i + 200])
        assert transport.flush(10)
        errors = {t[0].trace_id for t in traces if any(s.status == "ERROR" for s in t)}
        kept = errors | {t[0].trace_id for t in traces if keep_by_rate(t[0].trace_id, RATE)}

        def recorded() -> dict[str, tuple[bool, str]] | None:
            rows = client.query(
                "SELECT trace_id, sampled, sampled_by FROM traces FINAL WHERE service = {s:String}",
                parameters={"s": service},
            ).result_rows
            return {t: (bool(s), by) for t, s, by in rows} if len(rows) == len(traces) else None

        verdicts = wait_until(recorded, timeout=60)
        assert verdicts, worker.log_tail()
        # every trace recorded, with the hash's verdict (or "error")
        assert {t for t, (s, _) in verdicts.items() if s} == kept
        assert all(by == "error" for t, (_, by) in verdicts.items() if t in errors)
        assert all(by == ("rate" if t in kept else "") for t, (_, by) in verdicts.items() if t not in errors)
        # binomial(540, 0.1): mean 54, sd 7; 5 sd either side
        assert 54 - 35 <= len(kept - errors) <= 54 + 35
        # `tracehouse top` reports the fraction kept per rule (the named query `sampling` over `traces`)
        fractions = read_sampling(client, TopOptions(window_seconds=600, by=("service",)))
        rate_kept = len(kept - errors) / len(traces)
        assert fractions == {
            "dropped": round(1 - len(kept) / len(traces), 4),
            "error": 0.1,
            "rate": round(rate_kept, 4),
        }
        line = sampling_line(fractions)
        assert line.startswith(f"sampling: kept {len(kept) / len(traces):.1%} (") and "error 10.0%" in line, line

        def stored() -> dict[str, int] | None:
            rows = client.query(
                "SELECT trace_id, count() FROM spans FINAL WHERE service = {s:String} GROUP BY trace_id",
                parameters={"s": service},
            ).result_rows
            out = {t: int(n) for t, n in rows}
            return out if sum(out.values()) >= 3 * len(kept) else None

        spans_by_trace = wait_until(stored, timeout=30)
        assert spans_by_trace, (worker.log_tail(), sink.log_tail())
        time.sleep(1)  # nothing more arrives
        spans_by_trace = stored()
        assert spans_by_trace == dict.fromkeys(kept, 3)  # kept traces whole, dropped ones not at all

        def rollup() -> tuple | None:  # metrics stay whole: every span sent, kept or not
            rows = client.query(
                "SELECT sum(count), sum(error_count) FROM rollups FINAL"
                " WHERE service = {s:String} AND window_seconds = 10",
                parameters={"s": service},
            ).result_rows
            return rows[0] if rows and rows[0][0] == len(sent) else None

        assert wait_until(rollup, timeout=45) == (len(sent), len(errors)), client.query(
            "SELECT sum(count) FROM rollups FINAL WHERE service = {s:String}", parameters={"s": service}
        ).result_rows
        # The worker's health details say what it kept, per rule (its metrics, for a probe or a scraper).
        kept_by_rule = get(health_port, "/health/ready")[1]["sampling"]
        assert kept_by_rule["error"] > 0 and kept_by_rule["rate"] > 0 and 0 < kept_by_rule["kept"] < 1
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()


def root_only(rng: random.Random, service: str, end_ns: int, duration_ms: float) -> Span:
    """A one-span trace of the group (service, "agent")."""
    return Span(
        trace_id=f"{rng.getrandbits(128):032x}",
        span_id=f"{rng.getrandbits(64) | 1:016x}",
        name="agent",
        kind="AGENT",
        service=service,
        start_time_ns=end_ns - int(duration_ms * 1e6),
        end_time_ns=end_ns,
    )


def test_keep_traces_above_their_groups_p95(settings: Settings) -> None:
    """A minute of the group's traffic, then slow and fast traces: the slow ones are kept by the group's p95
    (from the worker's closed 60 s window, per partition), the fast ones dropped, and `top` says so."""
    service = f"svc-p95-{settings.worker_group}"
    rules = settings.data_dir / "alerts-p95.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text("[sampling]\nlatency_above_quantile = 0.95\nlatency_min_count = 20\nrate = 0.0\n")
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    asyncio.run(commit_at_end(settings.kafka_bootstrap, settings.sink_group, [topics.SPANS_KEPT]))
    env = {
        **LocalStack(settings).child_env(),
        "TRACEHOUSE_ALERT_RULES": str(rules),
        "TRACEHOUSE_SAMPLING": "1",
        "TRACEHOUSE_TRACE_QUIET_S": "0.5",
    }
    logs = settings.data_dir / "logs-p95"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    rng = random.Random(95)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned

        now = time.time_ns()
        # the group's last minute (a window that has ended): 100-300 ms, so its p95 is about 290 ms
        baseline = [
            root_only(rng, service, now - 61_000_000_000 - i * 1_000_000, rng.uniform(100, 300)) for i in range(600)
        ]
        transport.submit_many(baseline)
        assert transport.flush(10)
        time.sleep(1)
        now = time.time_ns()
        slow = [root_only(rng, service, now, 2_000.0) for _ in range(40)]
        fast = [root_only(rng, service, now, rng.uniform(50, 250)) for _ in range(100)]
        transport.submit_many(slow + fast)
        assert transport.flush(10)
        every = baseline + slow + fast

        def recorded() -> dict[str, str] | None:
            rows = client.query(
                "SELECT trace_id, sampled_by FROM traces FINAL WHERE service = {s:String}",
                parameters={"s": service},
            ).result_rows
            return dict(rows) if len(rows) == len(every) else None

        verdicts = wait_until(recorded, timeout=60)
        assert verdicts, worker.log_tail()
        assert {verdicts[s.trace_id] for s in slow} == {"latency_quantile"}
        assert {verdicts[s.trace_id] for s in fast + baseline} == {""}  # the baseline has no earlier window
        fractions = read_sampling(client, TopOptions(window_seconds=600, by=("service",)))
        assert fractions == {"dropped": round(1 - 40 / len(every), 4), "latency_quantile": round(40 / len(every), 4)}

        def stored() -> set[str] | None:
            rows = client.query(
                "SELECT DISTINCT trace_id FROM spans FINAL WHERE service = {s:String}", parameters={"s": service}
            ).result_rows
            return {t for (t,) in rows} if len(rows) >= len(slow) else None

        assert wait_until(stored, timeout=30) == {s.trace_id for s in slow}, sink.log_tail()
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()
