"""`tracehouse replay` through the real pipeline: re-deriving a time range of the span log reproduces the
stored traces exactly (no row doubled once ClickHouse collapses the versions), and with a new price file
re-derives them at the new prices."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from kafka_groups import start_groups_at_end
from test_reprice import PRICES_A, PRICES_B, expected_cost, make_traces
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.pricing import load_price_file
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate


def traces(client: Client, service: str) -> dict[str, dict[str, Any]]:
    """The stored traces of `service` as ClickHouse collapses them, every column but the emission time."""
    result = client.query(
        "SELECT * EXCEPT emitted_at FROM traces FINAL WHERE service = {s:String}", parameters={"s": service}
    )
    return {row[0]: dict(zip(result.column_names, row, strict=True)) for row in result.result_rows}


def rows(client: Client, service: str) -> int:
    return int(client.command(f"SELECT count() FROM traces WHERE service = '{service}'"))


def run_replay(env: dict[str, str], since_ms: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "replay", "--from", str(since_ms)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_replay_reproduces_traces_and_reprices_them(settings: Settings, tmp_path: Path) -> None:
    file_a, file_b = tmp_path / "a.toml", tmp_path / "b.toml"
    file_a.write_text(PRICES_A)
    file_b.write_text(PRICES_B)
    service = f"svc-{settings.worker_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_PRICES": str(file_a), "TRACEHOUSE_TRACE_QUIET_S": "1"}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    spans = make_traces(random.Random(9), service, 40)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned
        since_ms = time.time_ns() // 1_000_000 - 1_000
        transport.submit_many(spans)
        assert transport.flush(10)
        assert wait_until(lambda: len(traces(client, service)) == 40, timeout=60), worker.log_tail()
        worker.stop()  # what remains is the log in Kafka and the sink
        stored = traces(client, service)
        assert rows(client, service) == 40

        # The same prices: every trace re-derived (published again: a second row each until a merge) and
        # what ClickHouse answers is exactly what it answered before.
        out = run_replay(env, since_ms)
        assert "traces published" in out, out
        assert wait_until(lambda: rows(client, service) == 80, timeout=60), rows(client, service)
        assert traces(client, service) == stored
        client.command("OPTIMIZE TABLE traces FINAL")
        assert rows(client, service) == 40  # the versions collapse: nothing doubled

        # New prices: the same traces at B's costs and version.
        prices_b = load_price_file(file_b)
        run_replay({**env, "TRACEHOUSE_PRICES": str(file_b)}, since_ms)
        assert wait_until(lambda: rows(client, service) == 80, timeout=60)
        after = traces(client, service)
        by_trace: dict[str, float] = {}
        for span in spans:
            if span.llm:
                by_trace[span.trace_id] = by_trace.get(span.trace_id, 0.0) + expected_cost(prices_b, span)[0]
        for trace_id, row in after.items():
            assert math.isclose(row["cost_usd"], by_trace[trace_id], rel_tol=1e-9) and row["unpriced_models"] == []
            assert row["price_version"] == prices_b.version
            unchanged = {k: v for k, v in row.items() if k not in ("cost_usd", "price_version", "unpriced_models")}
            assert unchanged == {k: v for k, v in stored[trace_id].items() if k in unchanged}
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()
