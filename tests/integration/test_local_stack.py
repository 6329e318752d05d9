"""The embedded defaults, as a user meets them: `tracehouse demo` and `tracehouse up` on noida-db and the
embedded ClickHouse engine, started by tracehouse itself on free ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tracehouse.core.config import parse_clickhouse_url
from tracehouse.infra.ports import free_port
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client


def embedded_env(tmp_path: Path) -> dict[str, str]:
    """Addresses where nothing answers, so tracehouse starts its embedded broker and server there."""
    env = dict(os.environ)
    env.update(
        TRACEHOUSE_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        TRACEHOUSE_CLICKHOUSE_URL=f"http://127.0.0.1:{free_port()}",
        TRACEHOUSE_DATA_DIR=str(tmp_path / "data"),
        TRACEHOUSE_RECEIVER_PORT=str(free_port()),
        TRACEHOUSE_WEB_PORT=str(free_port()),
        COLUMNS="160",
    )
    env.pop("TRACEHOUSE_CLICKHOUSE_DATABASE", None)
    return env


def curl(url: str, sql: str) -> str:
    with urllib.request.urlopen(f"{url}/?query={urllib.parse.quote(sql)}", timeout=10) as response:
        return response.read().decode()


def test_demo_runs_on_the_embedded_defaults_and_exits_zero(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "demo", "--spans", "1500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "started Kafka (noida-db)" in out and "started ClickHouse (embedded engine)" in out
    assert "queryable" in out and "0 dropped, 0 failed" in out
    for title in (
        "Latency",
        "Most expensive calls",
        "Runtime exceptions",
        "Retrieved documents",
        "LLM parameters",
        "Prompt templates",
        "What the stream processor made of it",
        "One trace",
        "tracehouse top",
        "alert rate-limits",
        "Keep going",
        "tracehouse up",
    ):
        assert title in out, title
    history = re.search(r"sent (\d+) spans in (\d+) traces dated", out)
    total = re.search(r"(\d+)/(\d+) spans of (\d+) traces queryable", out)
    assert history and total, out[-3000:]
    history_spans = int(history.group(1))
    sent_spans, sent_traces = int(total.group(2)), int(total.group(3))
    assert int(total.group(1)) == sent_spans >= history_spans
    # It stopped what it started: nothing answers at either address any more.
    kafka_port = int(env["TRACEHOUSE_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    clickhouse = parse_clickhouse_url(env["TRACEHOUSE_CLICKHOUSE_URL"])
    for port in (kafka_port, clickhouse.port):
        probe = subprocess.run(
            [sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"],
            capture_output=True,
        )
        assert probe.returncode != 0, f"port {port} still answers"

    # What the stream processor made of it is stored, and agrees with what was sent.
    by_window = (
        "SELECT r.w AS w, r.c AS rolled, s.c AS stored FROM"
        " (SELECT window_start AS w, sum(count) AS c FROM tracehouse.rollups FINAL WHERE window_seconds = 10"
        "  GROUP BY w) AS r"
        " LEFT JOIN (SELECT toStartOfInterval(end_time, INTERVAL 10 SECOND) AS w, count() AS c"
        "  FROM tracehouse.spans GROUP BY w) AS s USING w"
    )
    sql = (
        "SELECT (SELECT count() FROM tracehouse.spans), (SELECT count() FROM tracehouse.traces FINAL),"
        f" (SELECT countIf(rolled > stored) FROM ({by_window})),"
        f" (SELECT sumIf(rolled, rolled = stored) FROM ({by_window})),"
        " (SELECT count() FROM tracehouse.alerts FINAL WHERE rule = 'rate-limits' AND state = 'firing')"
        " FORMAT TSV"
    )
    after = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "sql", sql], env=env, capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0, after.stderr[-3000:]
    spans, traces, over, matched, alerts = map(int, after.stdout.split())
    assert spans == sent_spans
    assert traces == sent_traces  # every trace assembled, the live ones too
    assert over == 0  # no window counts a span twice
    assert history_spans <= matched <= sent_spans  # every window of the past minute's traffic is closed and exact
    assert alerts >= 1  # the burst tripped the built-in rate-limit rule


def test_up_serves_sql_while_running_and_keeps_the_data_afterwards(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "tracehouse.cli.main", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = env["TRACEHOUSE_CLICKHOUSE_URL"]
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = up.stdout.readline() if up.stdout else ""
            lines.append(line)
            if "Ctrl-C stops" in line or (not line and up.poll() is not None):
                break
        assert any("Ctrl-C stops" in line for line in lines), "".join(lines)

        factory = TraceFactory(TrafficOptions(seed=21))
        spans = [s for _ in range(100) for s in factory.any()]
        for span in spans:
            span.service = "up-test"
        transport = SpanTransport(env["TRACEHOUSE_KAFKA_BOOTSTRAP"])
        transport.submit_many(spans)
        assert transport.flush(30)
        transport.shutdown()

        sql = "SELECT count() FROM tracehouse.spans WHERE service = 'up-test'"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and curl(url, sql).strip() != str(len(spans)):
            time.sleep(0.3)
        assert curl(url, sql).strip() == str(len(spans))  # plain HTTP, as curl sends it
        client = sync_client(parse_clickhouse_url(url))  # and clickhouse-connect
        assert client.query(sql).result_rows[0][0] == len(spans)
        # ... but nobody without the writer's password changes the data (`up` gave the server its users)
        with pytest.raises(Exception, match=r"(?i)readonly"):
            client.command("DROP TABLE tracehouse.spans")
        client.close()
        password_file = Path(env["TRACEHOUSE_DATA_DIR"]) / "clickhouse-writer.password"
        assert password_file.stat().st_mode & 0o077 == 0  # this OS user's only
        # ... and the explorer that `up` serves lists the traces.
        web = f"http://127.0.0.1:{env['TRACEHOUSE_WEB_PORT']}/api/traces?service=up-test&since=1h"
        deadline = time.monotonic() + 30
        listed: list = []
        while time.monotonic() < deadline and not listed:
            with urllib.request.urlopen(web, timeout=10) as response:
                listed = json.loads(response.read())["traces"]
            time.sleep(0.5)
        assert listed, "the web explorer lists no trace"
    finally:
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output[-3000:]

    # Afterwards, with nothing running, the data is still there: `sql` opens the local data itself.
    after = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracehouse.cli.main",
            "sql",
            "SELECT count() FROM tracehouse.spans WHERE service = 'up-test' FORMAT TSV",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert after.returncode == 0, after.stderr[-3000:]
    assert after.stdout.strip().splitlines()[-1] == str(len(spans))


def test_loadgen_holds_its_rate_and_reports_what_it_sent(kafka_bootstrap: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracehouse.cli.main",
            "loadgen",
            "--kafka",
            kafka_bootstrap,
            "--rate",
            "3000",
            "--duration",
            "3",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stderr.strip().splitlines()[-1]
    assert "0 dropped, 0 failed" in summary, summary
    sent = int(summary.split()[1].replace(",", ""))
    assert 8_000 <= sent <= 10_000, summary  # 3 s at 3,000 spans/s, whole traces
