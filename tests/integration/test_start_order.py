"""Any start order works: the worker, the sink and the receiver start on a Kafka that has no topics at
all (no init job ran), `tracehouse migrate` runs 10 s later, and a trace posted over OTLP afterwards is
assembled and stored, with no restart. The health endpoints say what each process waits for meanwhile.

Real processes (the `tracehouse` CLI), a real Apache Kafka of the test's own with automatic topic creation
off (so only `migrate` can make the topics), the session's real ClickHouse engine.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from empty_kafka import BrokerWithoutAutoCreate, get, run_migrate
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.topic_admin import existing_topics, run_sync
from tracehouse.infra.kafka_broker import KafkaBroker
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.sinks.clickhouse import sync_client


@pytest.fixture
def empty_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    with BrokerWithoutAutoCreate(tmp_path / "kafka", partitions=1) as broker:
        yield broker


def post_otlp(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def otlp_trace(trace_id: str, service: str) -> tuple[bytes, int]:
    """One trace over OTLP/HTTP JSON: a root span and two children. Returns the body and the span count."""
    now = time.time_ns()
    root = secrets.token_hex(8)

    def span(span_id: str, name: str, parent: str, attributes: dict[str, str]) -> dict[str, Any]:
        return {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent,
            "name": name,
            "kind": 1,
            "startTimeUnixNano": str(now),
            "endTimeUnixNano": str(now + 50_000_000),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()],
            "status": {"code": 1},
        }

    spans = [
        span(root, "answer", "", {"openinference.span.kind": "CHAIN"}),
        span(secrets.token_hex(8), "retrieve", root, {"openinference.span.kind": "RETRIEVER"}),
        span(secrets.token_hex(8), "chat", root, {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o"}),
    ]
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "start-order-test"}, "spans": spans}],
            }
        ]
    }
    return json.dumps(body).encode(), len(spans)


def test_worker_sink_and_receiver_started_before_the_topics_exist(
    settings: Settings, empty_broker: KafkaBroker
) -> None:
    settings = replace(settings, kafka_bootstrap=empty_broker.bootstrap)
    worker_health, sink_health, receiver_port = free_port(), free_port(), free_port()
    env = {
        **LocalStack(settings).child_env(),
        "TRACEHOUSE_SPANS_PARTITIONS": "3",
        "TRACEHOUSE_WORKER_HEALTH_PORT": str(worker_health),
        "TRACEHOUSE_SINK_HEALTH_PORT": str(sink_health),
        "TRACEHOUSE_RECEIVER_PORT": str(receiver_port),
        "TRACEHOUSE_TRACE_QUIET_S": "1",
    }
    logs = settings.data_dir / "logs"
    started = time.monotonic()
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.3"], logs, env).start()
    receiver = ManagedProcess("receiver", ["receiver"], logs, env).start()
    procs = (worker, sink, receiver)
    client = None  # the database does not exist before migrate
    try:
        # Before migrate: alive, not ready, and saying what they wait for.
        for name, port in (("worker", worker_health), ("sink", sink_health)):
            waiting = wait_until(lambda p=port: get(p, "/health/ready")[1].get("reason") == "waiting for Kafka topics")
            assert waiting, (name, get(port, "/health/ready"))
            assert get(port, "/health/ready")[0] == 503
            assert get(port, "/health/live")[0] == 200, name
        assert wait_until(lambda: "waiting for Kafka topics" in worker.log_tail(200), 30), worker.log_tail()
        assert wait_until(lambda: "waiting for Kafka topics" in sink.log_tail(200), 30), sink.log_tail()
        assert run_sync(lambda: existing_topics(empty_broker.bootstrap, topics.ALL)) == {}  # nothing auto-created

        time.sleep(max(0.0, started + 10 - time.monotonic()))
        for proc in procs:
            assert proc.alive(), f"{proc.name} exited before migrate:\n{proc.log_tail()}"
        result = run_migrate(env)
        assert result.returncode == 0, result.stderr
        assert "created: tracehouse.spans, tracehouse.traces" in result.stdout, result.stdout
        client = sync_client(settings.clickhouse)

        # After migrate, without any restart: both become ready, each saying so once.
        for name, port in (("worker", worker_health), ("sink", sink_health)):
            assert wait_until(lambda p=port: get(p, "/health/ready")[0] == 200, 60), (name, get(port, "/health/ready"))
            assert get(port, "/health/live")[0] == 200
        for proc in (worker, sink):
            assert proc.log_tail(400).count("waiting for Kafka topics") == 1, proc.log_tail(400)

        trace_id = secrets.token_hex(16)
        service = f"start-order-{trace_id[:8]}"
        body, span_count = otlp_trace(trace_id, service)
        status = wait_until(lambda: post_otlp(receiver_port, body) == 200, 60, interval=0.5)
        assert status, f"the receiver never accepted the trace:\n{receiver.log_tail()}"
        posted = time.monotonic()

        def count(table: str) -> int:
            assert client is not None
            query = f"SELECT count() FROM {table} WHERE trace_id = {{t:String}}"
            return int(client.query(query, parameters={"t": trace_id}).result_rows[0][0])

        assert wait_until(lambda: count("spans") >= span_count, timeout=max(0.1, posted + 15 - time.monotonic())), (
            f"spans not stored within 15 s\n{sink.log_tail()}"
        )
        assert wait_until(lambda: count("traces FINAL") >= 1, timeout=max(0.1, posted + 25 - time.monotonic())), (
            f"trace not assembled within 25 s\n{worker.log_tail()}"
        )
        assert count("spans") == span_count
        row = client.query(
            "SELECT span_count, root_name FROM traces FINAL WHERE trace_id = {t:String}", parameters={"t": trace_id}
        ).result_rows
        assert row == [(span_count, "answer")]
        assert "Ignoring missing topic" not in worker.log_tail(1000)
    finally:
        if client is not None:
            client.close()
        for proc in procs:
            proc.stop()
