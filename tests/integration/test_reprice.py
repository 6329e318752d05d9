"""Prices from a file and re-pricing, through the real pipeline: spans go through Kafka, the worker and the
sink priced by price file A; `tracehouse reprice` then brings spans, traces, rollups and the per-minute
aggregates to price file B, exactly as B says per token class, without adding or losing a row, and a second
run changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.cli.reprice import RepriceInterrupted, reprice
from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable, load_price_file, parse_price_file, price_span
from tracehouse.core.schema import LLMCall, Span, TokenUsage
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.pipeline.assembly import TraceAssembler
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, TRACE_COLUMNS, encode_rows, span_row, trace_row

TODAY = dt.datetime.now(dt.timezone.utc).date()

PRICES_A = """
version = "prices-a"

[[prices]]
model = "gpt-4o"
input = 2.0
output = 8.0
cached_input = 1.0
"""

# B: new rates for every token class of gpt-4o from yesterday on (a later entry not yet in effect), and a
# model A did not know.
PRICES_B = f"""
[[prices]]
model = "gpt-4o"
input = 2.0
output = 8.0
cached_input = 1.0

[[prices]]
model = "gpt-4o"
input = 3.0
output = 12.0
cached_input = 0.3
cache_write = 3.75
reasoning = 15.0
effective_from = {TODAY - dt.timedelta(days=1)}

[[prices]]
model = "gpt-4o"
input = 100.0
output = 100.0
effective_from = {TODAY + dt.timedelta(days=2)}

[[prices]]
model = "acme-large"
input = 0.5
output = 1.5
cache_write = 0.6
"""


def make_traces(rng: random.Random, service: str, count: int) -> list[Span]:
    """Traces of an agent root and two LLM calls: gpt-4o with every token class, and acme-large (unknown to
    A) or, in every fifth trace, a call that carries its own cost."""
    spans: list[Span] = []
    now = time.time_ns()
    for n in range(count):
        trace_id = f"{rng.getrandbits(128):032x}"
        root_id = f"{rng.getrandbits(64) | 1:016x}"
        start = now - rng.randint(2, 5) * 1_000_000_000
        end = start + 1_500_000_000
        spans.append(Span(trace_id=trace_id, span_id=root_id, name="agent", kind="AGENT", service=service,
                          start_time_ns=start, end_time_ns=end))  # fmt: skip
        for i, model in enumerate(("gpt-4o", "acme-large")):
            inp = rng.randint(500, 20_000)
            cached, write = rng.randint(0, inp // 3), rng.randint(0, inp // 4)
            out = rng.randint(50, 3_000)
            carried = 0.0123 if model == "acme-large" and n % 5 == 0 else None
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=f"{rng.getrandbits(64) | 1:016x}",
                    parent_span_id=root_id,
                    name=f"call-{i}",
                    kind="LLM",
                    service=service,
                    start_time_ns=start + (i + 1) * 100_000_000,
                    end_time_ns=start + (i + 1) * 600_000_000,
                    llm=LLMCall(model=model, provider="test"),
                    usage=TokenUsage(
                        input=inp, output=out, cached=cached, reasoning=rng.randint(0, out), cache_write=write
                    ),
                    cost_usd=carried,
                )
            )
    return spans


def expected_cost(prices: PriceTable, span: Span) -> tuple[float, str]:
    return price_span(prices, span.llm.model if span.llm else "", span.usage, span.cost_usd, span.start_time_ns)


def stored_spans(client: Client, service: str) -> dict[str, tuple[float, str, str]]:
    rows = client.query(
        "SELECT span_id, cost_usd, cost_source, price_version FROM spans FINAL WHERE service = {s:String}",
        parameters={"s": service},
    ).result_rows
    return {span_id: (cost, source, version) for span_id, cost, source, version in rows}


def counts(client: Client) -> tuple[int, ...]:
    """Rows per table (`spans_minutely` is left out: it holds partial aggregate states, and re-pricing adds
    one holding the difference of the sums)."""
    return tuple(int(client.command(f"SELECT count() FROM {table}")) for table in ("spans", "traces", "rollups"))


def test_prices_from_a_file_then_reprice_to_another(settings: Settings, tmp_path: Path) -> None:
    file_a, file_b = tmp_path / "a.toml", tmp_path / "b.toml"
    file_a.write_text(PRICES_A)
    file_b.write_text(PRICES_B)
    prices_a, prices_b = load_price_file(file_a), load_price_file(file_b)
    service = f"svc-{settings.worker_group}"
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_PRICES": str(file_a), "TRACEHOUSE_TRACE_QUIET_S": "1"}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    spans = make_traces(random.Random(7), service, 60)
    llm = [s for s in spans if s.llm]
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned
        transport.submit_many(spans)
        assert transport.flush(10)

        def rollup_count() -> int:
            return int(
                client.command(
                    f"SELECT sum(count) FROM rollups FINAL WHERE service = '{service}' AND window_seconds = 10"
                )
            )

        assert wait_until(lambda: len(stored_spans(client, service)) == len(spans), timeout=60), worker.log_tail()
        assert wait_until(lambda: client.command("SELECT count() FROM traces FINAL") == 60, timeout=60)
        assert wait_until(lambda: rollup_count() == len(spans), timeout=60), rollup_count()
        sink.stop()  # at rest: nothing else writes while the costs change
        worker.stop()

        # Ingest: priced by file A, per span, with A's version; carried costs and unknown models flagged.
        stored = stored_spans(client, service)
        for span in llm:
            cost, source = expected_cost(prices_a, span)
            assert stored[span.span_id] == (cost, source, "prices-a" if source != "span" else ""), span.llm
        assert {v for (v,) in client.query("SELECT DISTINCT price_version FROM traces").result_rows} == {"prices-a"}
        before = counts(client)

        # A dry run prints the summary and writes nothing.
        cli_env = {**os.environ, **env, "TRACEHOUSE_PRICES": str(file_b)}
        dry = subprocess.run(
            [sys.executable, "-m", "tracehouse.cli.main", "reprice", "--since", "1h", "--dry-run"],
            env=cli_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        changed_gpt = sum(1 for s in llm if s.llm.model == "gpt-4o")
        changed_acme = sum(1 for s in llm if s.llm.model == "acme-large" and s.cost_usd is None)
        lines = {line.split()[0]: line.split() for line in dry.stdout.splitlines() if line.strip()}
        assert lines["gpt-4o"][1:3] == [str(changed_gpt), str(changed_gpt)], dry.stdout
        assert lines["acme-large"][1:3] == [str(changed_acme), str(changed_acme)], dry.stdout
        assert "dry run: nothing written" in dry.stdout
        assert stored_spans(client, service) == stored and counts(client) == before

        # One model only: its spans change, the other model's stay as A priced them.
        only = asyncio.run(reprice(settings.clickhouse, prices_b, time.time_ns() - 3600 * 10**9, model="acme-large"))
        assert [(m.model, m.changed) for m in only.models] == [("acme-large", changed_acme)] and only.applied
        partly = stored_spans(client, service)
        for span in llm:
            table = prices_b if span.llm.model == "acme-large" else prices_a
            assert partly[span.span_id][:2] == expected_cost(table, span), span.llm
        assert counts(client) == before

        # The rest, through the command.
        run = subprocess.run(
            [sys.executable, "-m", "tracehouse.cli.main", "reprice", "--since", "1h"],
            env=cli_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert f"updated: {changed_gpt} spans, 60 traces" in run.stdout, run.stdout

        # Spans: exactly B's cost, per token class, by the entry in effect at their start; B's version.
        after = stored_spans(client, service)
        for span in llm:
            cost, source = expected_cost(prices_b, span)
            assert after[span.span_id] == (cost, source, prices_b.version if source != "span" else ""), span.llm
        assert counts(client) == before  # no row added, none lost

        # Traces: the sum of their spans' new costs, B's version, acme-large no longer unpriced.
        by_trace: dict[str, float] = {}
        for span in llm:
            by_trace[span.trace_id] = by_trace.get(span.trace_id, 0.0) + expected_cost(prices_b, span)[0]
        rows = client.query("SELECT trace_id, cost_usd, price_version, unpriced_models FROM traces FINAL").result_rows
        assert len(rows) == 60
        for trace_id, cost, version, unpriced in rows:
            assert math.isclose(cost, by_trace[trace_id], rel_tol=1e-9), trace_id
            assert version == prices_b.version and unpriced == []

        # Rollups (each window size) and the per-minute aggregates: the new total, counts unchanged.
        total_b = sum(by_trace.values())
        llm_ids = {span.span_id for span in llm}
        for seconds in (10, 60):
            # Per window (by span end): a window the worker closed holds exactly its spans at B's prices; the
            # 10 s windows all closed (waited for above), a 60 s window may still be open when the worker stops.
            expected: dict[int, list[float]] = {}
            for span in spans:
                window = expected.setdefault(span.end_time_ns // 1_000_000_000 // seconds * seconds, [0, 0.0])
                window[0] += 1
                window[1] += expected_cost(prices_b, span)[0] if span.span_id in llm_ids else 0.0
            got = client.query(
                "SELECT toUnixTimestamp(window_start), sum(count), sum(cost_usd) FROM rollups FINAL"
                " WHERE window_seconds = {w:UInt32} AND service = {s:String} GROUP BY window_start",
                parameters={"w": seconds, "s": service},
            ).result_rows
            if seconds == 10:
                assert sum(n for _, n, _ in got) == len(spans), got
            for start, n, cost in got:
                assert n == expected[start][0] and math.isclose(cost, expected[start][1], rel_tol=1e-9), (
                    seconds,
                    start,
                )
        calls, minutely = client.query(
            "SELECT countMerge(calls), sumMerge(sum_cost_usd) FROM spans_minutely"
        ).result_rows[0]
        assert calls == len(spans) and math.isclose(minutely, total_b, rel_tol=1e-9)

        work = "SELECT count() FROM system.tables WHERE database = currentDatabase() AND startsWith(name, '_reprice_')"
        assert client.command(work) == 0  # a finished run leaves nothing behind

        # Again: nothing left to change.
        again = asyncio.run(reprice(settings.clickhouse, prices_b, time.time_ns() - 3600 * 10**9))
        assert again.changed == 0 and not again.applied
        assert stored_spans(client, service) == after and counts(client) == before
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()


def test_a_run_stopped_halfway_makes_the_next_one_refuse(settings: Settings) -> None:
    """The rollups step fails (the table is gone): traces hold the differences, spans do not. The run says
    so, and the next run refuses instead of adding the differences to traces a second time."""
    prices_a, prices_b = parse_price_file(PRICES_A), parse_price_file(PRICES_B)
    service = "svc-halfway"
    spans = make_traces(random.Random(5), service, 10)
    asyncio.run(migrate(settings.clickhouse))
    client = sync_client(settings.clickhouse)
    try:
        client.raw_insert("spans", SPAN_COLUMNS, encode_rows([span_row(s, prices_a) for s in spans]), fmt=SPAN_FORMAT)
        assembler = TraceAssembler(prices_a)
        for offset, span in enumerate(spans):
            assembler.add(span, offset)
        records = [trace_row(t) for t in assembler.flush_all()]
        client.raw_insert("traces", TRACE_COLUMNS, encode_rows(records), fmt="JSONEachRow")
        before_spans = stored_spans(client, service)
        client.command("DROP TABLE rollups")
        since = time.time_ns() - 3600 * 10**9

        with pytest.raises(RepriceInterrupted, match=r"stopped at rollups .*already updated: traces;"):
            asyncio.run(reprice(settings.clickhouse, prices_b, since))
        assert stored_spans(client, service) == before_spans  # spans keep their old costs
        halfway = dict(client.query("SELECT trace_id, cost_usd FROM traces FINAL").result_rows)
        assert halfway != {r.trace_id: r.cost_usd for r in records}  # traces got the differences

        for _ in range(2):  # refuses, and keeps refusing: nothing changes
            with pytest.raises(RepriceInterrupted, match=r"stopped halfway \(it had updated: traces;"):
                asyncio.run(reprice(settings.clickhouse, prices_b, since))
            assert dict(client.query("SELECT trace_id, cost_usd FROM traces FINAL").result_rows) == halfway
            assert stored_spans(client, service) == before_spans
    finally:
        client.close()
