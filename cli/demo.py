"""`tracehouse demo`: the whole pipeline on this machine in one command, ending with everything it makes.

Starts what is missing (embedded Kafka and ClickHouse, the worker, the sink), then plays the last minute
of three LLM applications (RAG, agent, chat; text from a small built-in corpus) through the SDK's
transport, with a burst of rate-limited calls that trips the built-in `rate-limits` alert rule. The
traffic is dated over the past minute so the demo need not wait a minute for a rule's window to end;
while it waits, a trickle of live traffic keeps the stream's event time moving, which is what closes the
last windows (a window closes on event time plus a grace, see pipeline/partition_windows.py).

It waits, with a bound, until every span is queryable, every trace is assembled in `traces`, the 10 s
windows of its traffic are closed in `rollups` with counts that match what it sent, and the alert has
fired; then prints the answers to the six questions, one trace's waterfall, the `top` table and the alert,
and how to keep going. `--keep` leaves the stack (with the receiver and the web explorer) running. A
non-zero exit means something was lost or late: the demo doubles as a smoke test.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from tracehouse.cli.query import print_table
from tracehouse.core import settings as env
from tracehouse.core.config import Settings
from tracehouse.core.schema import Span
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.traffic import TraceFactory, TrafficOptions, shift_trace, trace_end_ns
from tracehouse.producers.transport import SpanTransport
from tracehouse.read.queries import QUERIES, run_query
from tracehouse.sinks.clickhouse import sync_client

DEMO_ANSWERS = (
    ("1. Latency: slowest LLM and retriever calls", "slowest-calls", {"limit": 5}),
    ("1. Latency percentiles by model", "latency-percentiles", {}),
    ("2. Most expensive calls (cached and reasoning tokens priced)", "expensive-calls", {"limit": 5}),
    ("3. Runtime exceptions", "exceptions", {"limit": 5}),
    ("4. Retrieved documents of the latest RAG trace", "retrieved-docs", {}),
    ("5. LLM parameters of the latest RAG trace", "llm-params", {}),
    ("6. Prompt templates and their variables", "prompt-templates", {"limit": 5}),
)
HISTORY_SECONDS = 60  # the demo's traffic ends over the past minute
MAX_TRACE_SECONDS = 40  # longer traces would reach back past what the worker accepts as late data
BURST_SERVICE = "support-bot"
BURST_CALLS = 15  # rate-limited calls in one minute: the built-in rule fires above 10
ALERT_RULE = "rate-limits"
WINDOW_SECONDS = 10
TRICKLE_EVERY_S = 0.5
TRICKLE_TRACES = 3
WAIT_SECONDS = 60
RUN_ATTRIBUTE = "tracehouse.demo.run"


@dataclass
class Sent:
    """What the demo sent, to check what landed against."""

    spans: int = 0
    trace_ids: list[str] = field(default_factory=list)
    history_spans: int = 0
    history_traces: int = 0
    per_window: Counter[int] = field(default_factory=Counter)  # 10 s window start -> spans ending in it


def _send(transport: SpanTransport, trace: list[Span], run_id: str, sent: Sent) -> None:
    for span in trace:
        span.resource = {RUN_ATTRIBUTE: run_id}
        sent.per_window[span.end_time_ns // 10**9 // WINDOW_SECONDS * WINDOW_SECONDS] += 1
    sent.spans += transport.submit_many(trace)
    sent.trace_ids.append(trace[0].trace_id)


def _history(factory: TraceFactory, spans: int, history_end_s: int, burst_end_s: int) -> list[list[Span]]:
    """Traces ending over the minute before `history_end_s`, plus the rate-limit burst before `burst_end_s`."""
    traces: list[list[Span]] = []
    made = 0
    rng = factory.rng
    while made < spans:
        trace = factory.any(10**18)
        if trace_end_ns(trace) - min(s.start_time_ns for s in trace) > MAX_TRACE_SECONDS * 10**9:
            continue
        end = int((history_end_s - rng.uniform(0.05, HISTORY_SECONDS)) * 10**9)
        traces.append(shift_trace(trace, end - trace_end_ns(trace)))
        made += len(trace)
    for i in range(BURST_CALLS):  # a retry storm: one service, a few seconds, every call refused
        trace = factory.chat_turn(10**18, rate_limited=True)
        end = int((burst_end_s - 8 + i * 0.4) * 10**9)
        traces.append(shift_trace(trace, end - trace_end_ns(trace)))
    return traces


def _live(factory: TraceFactory) -> list[Span]:
    trace = factory.chat_turn(10**18)
    return shift_trace(trace, time.time_ns() - trace_end_ns(trace))


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%H:%M:%S")


@dataclass
class Progress:
    spans: int = 0
    traces: int = 0
    rollup_spans: int = 0
    alert: dict | None = None

    def line(self, sent: Sent) -> str:
        alert = "fired" if self.alert else "waiting"
        return (
            f"spans {self.spans}/{sent.history_spans} · traces {self.traces}/{sent.history_traces} assembled · "
            f"10 s windows {self.rollup_spans}/{sent.history_spans} spans · alert {alert}"
        )


def run_demo(settings: Settings, *, spans: int = 5000, partitions: int | None = None, keep: bool = False) -> int:
    console = Console()
    run_id = uuid.uuid4().hex[:12]
    console.print(f"[bold]tracehouse demo[/] (run {run_id}): about {spans} spans through Kafka -> Faust -> ClickHouse")
    _stop_on_signals()
    t0 = time.monotonic()
    stack = LocalStack(settings, partitions=partitions, with_receiver=keep, with_web=keep)
    try:
        with console.status("starting the local stack..."):
            stack.start()  # a failure half way still stops what it started (the `finally` below)
        for line in stack.started:
            console.print(f"  [green]started[/] {line}")
        console.print(f"  stack ready in {time.monotonic() - t0:.1f}s; logs in {stack.log_dir}")
        settings = stack.settings
        client = sync_client(settings.clickhouse)
        transport = SpanTransport(settings.kafka_bootstrap)
        factory = TraceFactory(TrafficOptions(error_ratio=0.03))
        live_factory = TraceFactory(TrafficOptions(error_ratio=0.0))

        now = time.time()
        history_end = int(now) // WINDOW_SECONDS * WINDOW_SECONDS  # every history span ends before this
        minute = history_end // 60 * 60  # the burst lands in the minute that ended here
        sent = Sent()
        started = time.monotonic()
        for trace in _history(factory, spans, history_end, minute):
            _send(transport, trace, run_id, sent)
        sent.history_spans, sent.history_traces = sent.spans, len(sent.trace_ids)
        history_ids = list(sent.trace_ids)
        lo = min(sent.per_window)
        console.print(
            f"sent {sent.history_spans} spans in {sent.history_traces} traces dated {_utc(lo)}-{_utc(history_end)} "
            f"UTC, with a burst of {BURST_CALLS} rate-limited calls from {BURST_SERVICE} before {_utc(minute)}; "
            "live traffic keeps flowing while the pipeline catches up"
        )
        progress = Progress()
        ok = False
        last_trickle = 0.0
        deadline = time.monotonic() + WAIT_SECONDS
        with console.status(progress.line(sent)) as status:
            while time.monotonic() < deadline:
                stack.check()
                if time.monotonic() - last_trickle >= TRICKLE_EVERY_S:
                    for _ in range(TRICKLE_TRACES):
                        _send(transport, _live(live_factory), run_id, sent)
                    last_trickle = time.monotonic()
                _poll(client, run_id, history_ids, lo, history_end, minute, progress)
                status.update(progress.line(sent))
                ok = (
                    progress.spans >= sent.history_spans
                    and progress.traces >= sent.history_traces
                    and progress.rollup_spans >= sent.history_spans
                    and progress.alert is not None
                )
                if ok:
                    break
                time.sleep(0.25)
        transport.flush(30)
        elapsed = time.monotonic() - started
        landed = _count(client, "SELECT count() FROM spans WHERE resource_attributes[{a:String}] = {run:String}",
                        a=RUN_ATTRIBUTE, run=run_id)  # fmt: skip
        deadline = time.monotonic() + 15
        while landed < sent.spans and time.monotonic() < deadline:
            time.sleep(0.2)
            landed = _count(client, "SELECT count() FROM spans WHERE resource_attributes[{a:String}] = {run:String}",
                            a=RUN_ATTRIBUTE, run=run_id)  # fmt: skip
        # the live traces too: each is assembled once its root ended and no span came for the quiet period
        traces_sql = "SELECT count() FROM traces FINAL WHERE trace_id IN {ids:Array(String)}"
        assembled = _count(client, traces_sql, ids=sent.trace_ids)
        while ok and assembled < len(sent.trace_ids) and time.monotonic() < deadline:
            time.sleep(0.25)
            assembled = _count(client, traces_sql, ids=sent.trace_ids)
        transport.shutdown()
        stats = transport.stats
        console.print(
            f"{landed}/{sent.spans} spans of {len(sent.trace_ids)} traces queryable ({sent.spans - sent.history_spans}"
            f" of them live); pipeline caught up in {elapsed:.1f}s; producer: {stats.sent} sent in "
            f"{stats.messages} Kafka messages, {stats.dropped} dropped, {stats.failed} failed"
        )
        if landed != sent.spans:
            console.print(f"[red]lost or late spans: {sent.spans - landed}[/]")
            return 1
        if not ok:
            console.print(f"[red]the pipeline did not catch up in {WAIT_SECONDS}s: {progress.line(sent)}[/]")
            console.print(f"worker log: {stack.log_dir / 'worker.log'}")
            return 1
        _print_answers(console, client, run_id)
        _print_card(console, client, settings, sent, progress, history_ids, lo, history_end, minute)
        client.close()
        _print_next_steps(console, settings, keep)
        if keep:
            console.print("stack left running (--keep); Ctrl-C stops it")
            while True:
                stack.check()
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 130 if not keep else 0
    finally:
        with console.status("stopping what the demo started..."):
            stack.stop()


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop what the demo started (the `finally` below), also when the shell started
    the demo in the background with SIGINT ignored."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _count(client, sql: str, **parameters: object) -> int:  # type: ignore[no-untyped-def]
    value = client.query(sql, parameters=parameters).result_rows[0][0]
    return int(value or 0)


def _poll(client, run_id: str, ids: list[str], lo: int, hi: int, minute: int, progress: Progress) -> None:  # type: ignore[no-untyped-def]
    """One look at each thing the demo waits for that is not there yet."""
    progress.spans = _count(
            client,
            "SELECT count() FROM spans WHERE resource_attributes[{a:String}] = {run:String}"
        " AND end_time < toDateTime64({hi:UInt32}, 9)",
        a=RUN_ATTRIBUTE, run=run_id, hi=hi,
    )  # fmt: skip
    progress.traces = _count(client, "SELECT count() FROM traces FINAL WHERE trace_id IN {ids:Array(String)}", ids=ids)
    progress.rollup_spans = _count(
        client,
        "SELECT sum(count) FROM rollups FINAL WHERE window_seconds = {w:UInt32}"
        " AND window_start >= toDateTime({lo:UInt32}) AND window_start < toDateTime({hi:UInt32})",
        w=WINDOW_SECONDS, lo=lo, hi=hi,
    )  # fmt: skip
    if progress.alert is None:
        result = client.query(
            "SELECT rule, service, severity, value, threshold, message, toUnixTimestamp64Milli(fired_at) AS fired_ms,"
            " toUnixTimestamp(window_start) AS window_start, window_seconds FROM alerts FINAL"
            " WHERE rule = {rule:String} AND state = 'firing' AND service = {service:String}"
            " AND window_start = toDateTime({start:UInt32}) ORDER BY fired_at LIMIT 1",
            parameters={"rule": ALERT_RULE, "service": BURST_SERVICE, "start": minute - 60},
        )
        if result.result_rows:
            progress.alert = dict(zip(result.column_names, result.result_rows[0], strict=True))


def _print_answers(console: Console, client, run_id: str) -> None:  # type: ignore[no-untyped-def]
    by_kind = client.query(
        "SELECT kind, count() AS spans, round(avg(duration_ns) / 1e6, 1) AS avg_ms, countIf(status = 'ERROR')"
        " AS errors, sum(total_tokens) AS tokens, round(sum(cost_usd), 4) AS cost_usd FROM spans"
        " WHERE resource_attributes[{a:String}] = {run:String} GROUP BY kind ORDER BY spans DESC",
        parameters={"a": RUN_ATTRIBUTE, "run": run_id},
    )
    print_table(console, "What landed, by kind", list(by_kind.column_names), by_kind.result_rows)
    for title, name, params in DEMO_ANSWERS:
        result = run_query(client, QUERIES[name], {**params, "since": "1h"})
        print_table(console, title, list(result.column_names), result.result_rows)


def _print_card(console: Console, client, settings: Settings, sent: Sent, progress: Progress,  # type: ignore[no-untyped-def]
                ids: list[str], lo: int, hi: int, minute: int) -> None:  # fmt: skip
    """What the stream processor made of the traffic: traces, windows, one waterfall, top, the alert."""
    from tracehouse.cli.top import TopOptions, read_snapshot, render, top_request
    from tracehouse.cli.trace_view import _summary, waterfall
    from tracehouse.read.traces import load_trace

    all_traces = _count(
        client, "SELECT count() FROM traces FINAL WHERE trace_id IN {ids:Array(String)}", ids=sent.trace_ids
    )
    windows = _count(
        client,
        "SELECT uniqExact(window_start) FROM rollups FINAL WHERE window_seconds = {w:UInt32}"
        " AND window_start >= toDateTime({lo:UInt32}) AND window_start < toDateTime({hi:UInt32})",
        w=WINDOW_SECONDS, lo=lo, hi=hi,
    )  # fmt: skip
    console.print()
    console.print("[bold]What the stream processor made of it[/]")
    console.print(
        f"traces: {len(sent.trace_ids)} sent, {all_traces} assembled in `traces` (a trace is written once its "
        "root has ended and no span came for 3 s; late spans revise it)"
    )
    console.print(
        f"rollups: {windows} closed 10 s windows ({_utc(lo)}-{_utc(hi)} UTC) count {progress.rollup_spans} spans; "
        f"{sent.history_spans} were sent in them"
    )
    # one waterfall: the richest agent trace
    row = client.query(
        "SELECT trace_id FROM traces FINAL WHERE trace_id IN {ids:Array(String)} AND root_name = 'research_agent'"
        " ORDER BY span_count DESC, error_count LIMIT 1",
        parameters={"ids": ids},
    ).result_rows
    if row:
        tree = load_trace(client, row[0][0])
        if tree is not None:
            console.print()
            console.print(f"[bold]One trace[/] (tracehouse trace {tree.trace_id})")
            console.print(_summary(tree))
            for line in waterfall(tree, console.width):
                console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
    options = TopOptions(60, ("service", "model"))
    snapshot = read_snapshot(client, top_request(options), options, settings.clickhouse.database)
    console.print()
    console.print("[bold]tracehouse top[/] (the newest minute of rollups)")
    console.print(render(snapshot, width=console.width))
    alert = progress.alert
    if alert:
        window_end = alert["window_start"] + alert["window_seconds"]
        fired = alert["fired_ms"] / 1000
        console.print()
        console.print(
            f"[bold yellow]alert[/] {alert['rule']} ({alert['severity']}) firing for {alert['service']}: "
            f"{alert['message']}"
        )
        console.print(
            f"  window {_utc(alert['window_start'])}-{_utc(window_end)} UTC; fired at {_utc(fired)}, "
            f"{fired - window_end:.1f} s after its window ended (the demo dates its traffic over the past minute, so "
            "that window had ended before its spans were sent; with live traffic an alert fires seconds after its "
            "window ends)"
        )


def _print_next_steps(console: Console, settings: Settings, keep: bool) -> None:
    web_port = env.get(env.WEB_PORT)
    receiver_port = env.get(env.RECEIVER_PORT)
    steps = [
        *([] if keep else [("tracehouse up", "the stack in the foreground, with the explorer and the receiver")]),
        (f"http://127.0.0.1:{web_port}/", "the web explorer: traces, waterfalls, charts, alerts"),
        ("tracehouse loadgen", "steady traffic (--rate 2000); watch it with `tracehouse top`"),
        (f"http://127.0.0.1:{receiver_port}/v1/traces", "OTLP/HTTP: point any OpenTelemetry app here"),
        ("tracehouse trace ID", "any trace id (or the prefix a table shows); also query, alerts, sql"),
    ]
    console.print()
    console.print("[bold]Keep going[/]")
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 2))
    table.add_column(no_wrap=True, style="cyan")
    table.add_column(overflow="fold")
    for command, what in steps:
        table.add_row(command, what)
    console.print(table)
    console.print(
        f"  e.g. OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:{receiver_port}/v1/traces python app.py;"
        f" ClickHouse answers at {settings.clickhouse_url} while the stack runs"
    )
