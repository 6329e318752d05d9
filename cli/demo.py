"""`tracehouse demo`: the whole pipeline on this machine in one command.

Starts what is missing (embedded Kafka and ClickHouse, the worker, the sink), sends a few thousand spans of
realistic RAG, agent and chat traces through the SDK's transport, waits with a progress bar until every
span is queryable in ClickHouse, prints answers to the six questions tracing exists for, stops what it
started and exits 0. A non-zero exit means something was lost or broke: the demo doubles as a smoke test.
"""

from __future__ import annotations

import time
import uuid

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tracehouse.core.config import Settings
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.queries import QUERIES, run_query

DEMO_ANSWERS = (
    ("1. Latency: slowest LLM and retriever calls", "slowest-calls", {"limit": 5}),
    ("1. Latency percentiles by model", "latency-percentiles", {}),
    ("2. Most expensive calls (cached and reasoning tokens priced)", "expensive-calls", {"limit": 5}),
    ("3. Runtime exceptions", "exceptions", {"limit": 5}),
    ("4. Retrieved documents of the latest RAG trace", "retrieved-docs", {}),
    ("5. LLM parameters of the latest RAG trace", "llm-params", {}),
    ("6. Prompt templates and their variables", "prompt-templates", {"limit": 5}),
)


def _print_table(console: Console, title: str, columns: list[str], rows: list[tuple]) -> None:
    table = Table(title=title, title_justify="left", title_style="bold", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold", max_width=48)
    for row in rows:
        table.add_row(*("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in row))
    console.print(table)


def run_demo(
    settings: Settings, *, spans: int = 5000, partitions: int | None = None, keep: bool = False
) -> int:
    console = Console()
    run_id = uuid.uuid4().hex[:12]
    console.print(
        f"[bold]tracehouse demo[/] (run {run_id}): {spans} spans through Kafka -> Faust -> ClickHouse"
    )
    with console.status("starting the local stack..."):
        t0 = time.monotonic()
        stack = LocalStack(settings, partitions=partitions).start()
    try:
        for line in stack.started:
            console.print(f"  [green]started[/] {line}")
        console.print(f"  stack ready in {time.monotonic() - t0:.1f}s; logs in {stack.log_dir}")
        settings = stack.settings
        client = sync_client(settings.clickhouse)
        transport = SpanTransport(settings.kafka_bootstrap)
        factory = TraceFactory(TrafficOptions(error_ratio=0.05))
        sent = 0
        trace_count = 0
        started = time.monotonic()
        for trace in factory.spans(spans):
            for span in trace:
                span.resource = {"tracehouse.demo.run": run_id}
            sent += transport.submit_many(trace)
            trace_count += 1
        count_sql = (
            "SELECT count() FROM spans WHERE resource_attributes['tracehouse.demo.run'] = {run:String}"
        )
        landed = 0
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("spans in ClickHouse", total=sent)
            deadline = time.monotonic() + 120
            while landed < sent and time.monotonic() < deadline:
                stack.check()
                landed = int(client.query(count_sql, parameters={"run": run_id}).result_rows[0][0])
                progress.update(task, completed=landed)
                if landed < sent:
                    time.sleep(0.2)
        elapsed = time.monotonic() - started
        transport.shutdown()
        stats = transport.stats
        console.print(
            f"{landed}/{sent} spans of {trace_count} traces queryable in {elapsed:.1f}s "
            f"({landed / elapsed:,.0f} spans/s end to end); producer: {stats.sent} sent in {stats.messages} "
            f"Kafka messages, {stats.dropped} dropped, {stats.failed} failed",
            soft_wrap=True,
        )
        if landed != sent:
            console.print(f"[red]lost or late spans: {sent - landed}[/]")
            return 1
        by_kind = client.query(
            "SELECT kind, count() AS spans, round(avg(duration_ns) / 1e6, 1) AS avg_ms, countIf(status = 'ERROR')"
            " AS errors, sum(total_tokens) AS tokens, round(sum(cost_usd), 4) AS cost_usd FROM spans"
            " WHERE resource_attributes['tracehouse.demo.run'] = {run:String} GROUP BY kind ORDER BY spans DESC",
            parameters={"run": run_id},
        )
        _print_table(console, "What landed, by kind", list(by_kind.column_names), by_kind.result_rows)
        for title, name, params in DEMO_ANSWERS:
            query = QUERIES[name]
            result = run_query(client, query, {**params, "since": "1h"})
            _print_table(console, title, list(result.column_names), result.result_rows)
        console.print(
            f"Query it yourself: curl '{settings.clickhouse_url}/?query=SELECT+kind,count()+FROM+tracehouse.spans"
            "+GROUP+BY+kind'" + ("" if keep else "  (while `tracehouse up` runs)")
        )
        client.close()
        if keep:
            console.print("stack left running (--keep); Ctrl-C to stop")
            while True:
                stack.check()
                time.sleep(1)
        return 0
    finally:
        with console.status("stopping what the demo started..."):
            stack.stop()
