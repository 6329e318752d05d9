"""Every named query, and the `query`, `trace` and `alerts` commands, checked against Python's own answers.

One database per module: realistic traces from a seeded TraceFactory (plus an orphan span, a
1,000-span trace three hours back, and a few alerts) are priced and inserted straight into `spans`, with start times
a fixed number of minutes before the test starts so the queries' `since` windows hold them. Each query's
answer is compared with values computed in Python from the same spans: orders, durations, costs from
tracehouse.core.pricing, exception types, documents with score and position, LLM parameters, template
counts, and latency percentiles (exact linear interpolation for `quantile`, rank tolerance for the
t-digest of the per-minute aggregates). The CLI is run as a subprocess against the same database.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import datetime as dt
import io
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from rich.console import Console

from tracehouse.cli.query import UsageError, build_request
from tracehouse.cli.trace_view import show_trace
from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable, price_span
from tracehouse.core.prompt_identity import template_key
from tracehouse.core.rollups import Rollup, ScoreRollup
from tracehouse.core.schema import Span
from tracehouse.core.sketch import LatencySketch
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.read.queries import QUERIES, run_query
from tracehouse.read.tree import SpanNode, build_tree
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.record_routes import AlertRow
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, encode_rows, span_row

SEED = 20251127
MINUTE_NS = 60 * 1_000_000_000
TRACES = 160
ORPHAN_SPAN_ID = "0badc0ffee000001"
MISSING_PARENT = "feedfacefeedface"
BIG_TRACE_ID = "b16" + "0" * 28 + "1"
ANALYSED_KINDS = ("LLM", "RETRIEVER", "EMBEDDING", "RERANKER")


@dataclass
class Dataset:
    settings: Settings
    client: Client
    spans: list[Span]  # the generated traces (the 1,000-span trace is kept apart)
    traces: dict[str, list[Span]]
    orphan_trace: str
    big_trace: list[Span]
    alerts: list[AlertRow]
    now_ms: int

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database


def _big_trace(base_ns: int) -> list[Span]:
    """A batch job of 1,000 spans: a CHAIN root over 200 items of (AGENT -> TOOL x2 -> LLM -> RETRIEVER)."""
    spans = [
        Span(trace_id=BIG_TRACE_ID, span_id="b" * 16, name="batch_job", kind="CHAIN", service="batch",
             start_time_ns=base_ns, end_time_ns=base_ns + 90_000_000_000, status="OK")
    ]  # fmt: skip
    for i in range(200):
        start = base_ns + i * 400_000_000
        item = f"{0xA000000000000000 + i:016x}"
        spans.append(Span(trace_id=BIG_TRACE_ID, span_id=item, parent_span_id="b" * 16, name=f"item_{i}",
                          kind="AGENT", service="batch", start_time_ns=start, end_time_ns=start + 350_000_000,
                          status="OK"))  # fmt: skip
        for j, (kind, name) in enumerate((("TOOL", "fetch"), ("TOOL", "parse"), ("LLM", "summarise"),
                                          ("RETRIEVER", "lookup"))):  # fmt: skip
            sub = start + (j + 1) * 60_000_000
            spans.append(Span(trace_id=BIG_TRACE_ID, span_id=f"{0xC000000000000000 + i * 8 + j:016x}",
                              parent_span_id=item, name=name, kind=kind, service="batch", start_time_ns=sub,
                              end_time_ns=sub + 50_000_000, status="ERROR" if (i, j) == (7, 2) else "OK"))  # fmt: skip
    assert len(spans) == 1001
    return spans[:1000]


def _alerts(now_ms: int) -> list[AlertRow]:
    def row(minutes_ago: float, rule: str, service: str, state: str, severity: str = "warning", **labels: str):
        at = now_ms - int(minutes_ago * 60_000)
        return AlertRow(
            f"{at // 1000}.{at % 1000:03d}", rule, service, severity, 7000.0, 5000.0, state, f"{rule} {state}",
            at // 1000 // 60 * 60, 60, {"metric": "latency_p95_ms", "count": "40", **labels},
        )  # fmt: skip

    return [
        row(120, "llm-latency-p95", "support-bot", "firing"),
        row(90, "llm-latency-p95", "support-bot", "resolved"),  # fired, then resolved: not firing
        row(30, "llm-latency-p95", "search-api", "firing"),
        row(10, "error-rate", "search-api", "firing", "critical"),
        row(5, "model-latency", "*", "firing", "info", model="gpt-4o"),
        row(4, "model-latency", "*", "resolved", "info", model="gpt-4o-mini"),  # another group resolved
        row(60 * 30, "traffic-stopped", "batch", "firing", "critical"),  # 30 h ago, still firing
    ]


@pytest.fixture(scope="module")
def data(clickhouse_url: str) -> Iterator[Dataset]:
    settings = Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database=f"test_{uuid.uuid4().hex[:10]}")
    asyncio.run(migrate(settings.clickhouse))
    base = (time.time_ns() // MINUTE_NS - 40) * MINUTE_NS  # fixed "now" for the factory: 40 minutes ago
    factory = TraceFactory(TrafficOptions(seed=SEED, error_ratio=0.15))
    traces: dict[str, list[Span]] = {}
    for i in range(TRACES):
        trace = factory.any(base + i * 9_000_000_000)
        traces[trace[0].trace_id] = trace
    rag = next(t for t in traces.values() if any(s.kind == "RETRIEVER" for s in t))
    orphan_trace = rag[0].trace_id
    root = next(s for s in rag if not s.parent_span_id)
    rag.append(
        Span(trace_id=orphan_trace, span_id=ORPHAN_SPAN_ID, parent_span_id=MISSING_PARENT, name="late_webhook",
             kind="TOOL", service=root.service, start_time_ns=root.start_time_ns + 5_000_000,
             end_time_ns=root.start_time_ns + 25_000_000, status="OK")
    )  # fmt: skip
    spans = [s for t in traces.values() for s in t]
    big = _big_trace(base - 180 * MINUTE_NS)  # outside every `since 1h` window: the aggregates stay exact
    prices = PriceTable()
    client = sync_client(settings.clickhouse)
    rows = [span_row(s, prices, partition=0, offset=i) for i, s in enumerate(spans + big)]
    client.raw_insert("spans", SPAN_COLUMNS, encode_rows(rows), fmt=SPAN_FORMAT)
    now_ms = int(time.time() * 1000)
    alerts = _alerts(now_ms)
    client.raw_insert("alerts", insert_block=encode_rows(alerts), fmt="JSONEachRow")
    try:
        yield Dataset(settings, client, spans, traces, orphan_trace, big, alerts, now_ms)
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")
        client.close()


def ask(data: Dataset, name: str, **values: Any) -> list[dict[str, Any]]:
    result = run_query(data.client, QUERIES[name], values)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


# ---- Python's answers ---------------------------------------------------------------------------------


def model_of(span: Span) -> str:
    return span.llm.model if span.llm else ""


def cost_of(span: Span) -> float:
    return price_span(PriceTable(), model_of(span), span.usage, span.cost_usd)[0]


def linear_quantile(values: list[int], level: float) -> float:
    """The exact quantile with linear interpolation between ranks (what `quantile` gives below 8,192 values)."""
    ordered = sorted(values)
    index = level * (len(ordered) - 1)
    low = math.floor(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def rank_bounds(values: list[int], level: float, slack: int) -> tuple[float, float]:
    """The values `slack` ranks either side of the exact quantile: where an approximate sketch may land."""
    ordered = sorted(values)
    index = level * (len(ordered) - 1)
    return ordered[max(math.floor(index) - slack, 0)], ordered[min(math.ceil(index) + slack, len(ordered) - 1)]


def epoch_seconds(value: dt.datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()


def latest_trace_with(data: Dataset, kind: str) -> str:
    return max((s for s in data.spans if s.kind == kind), key=lambda s: s.start_time_ns).trace_id


# ---- every named query -------------------------------------------------------------------------------

TESTED: set[str] = set()


def covers(name: str) -> Any:
    TESTED.add(name)
    return lambda func: func


@covers("slowest-calls")
def test_slowest_calls(data: Dataset) -> None:
    expected = sorted((s for s in data.spans if s.kind in ("LLM", "RETRIEVER")), key=lambda s: -s.duration_ns)[:15]
    got = ask(data, "slowest-calls", since="1h", limit=15)
    assert [(r["trace_id"], r["name"], r["kind"]) for r in got] == [(s.trace_id, s.name, s.kind) for s in expected]
    assert [r["duration_ms"] for r in got] == [round(s.duration_ns / 1e6, 1) for s in expected]
    tools = sorted((s for s in data.spans if s.kind == "TOOL"), key=lambda s: -s.duration_ns)[:5]
    got_tools = ask(data, "slowest-calls", since="1h", limit=5, kind="TOOL")
    assert [(r["trace_id"], r["name"]) for r in got_tools] == [(s.trace_id, s.name) for s in tools]


@covers("slowest-llm")
def test_slowest_llm(data: Dataset) -> None:
    expected = sorted((s for s in data.spans if s.kind == "LLM"), key=lambda s: -s.duration_ns)[:10]
    got = ask(data, "slowest-llm", since="1h", limit=10)
    assert [r["span_id"] for r in got] == [s.span_id for s in expected]
    for row, span in zip(got, expected, strict=True):
        assert row["duration_ms"] == round(span.duration_ns / 1e6, 1)
        assert row["model"] == model_of(span)
        assert (row["input_tokens"], row["output_tokens"]) == (span.usage.input, span.usage.output)
        assert row["status"] == span.status


@covers("expensive-calls")
def test_expensive_calls_are_priced_with_every_token_class(data: Dataset) -> None:
    by_key = {(s.trace_id, s.name): s for s in data.spans}
    costs = sorted((c for c in map(cost_of, data.spans) if c > 0), reverse=True)
    got = ask(data, "expensive-calls", since="1h", limit=25)
    # the query rounds to 6 decimals (ClickHouse's rounding, not Python's): compare within that
    assert [r["cost_usd"] for r in got] == pytest.approx(costs[:25], abs=1.01e-6)
    for row in got:
        span = by_key[(row["trace_id"], row["name"])]
        assert row["cost_usd"] == pytest.approx(cost_of(span), abs=1.01e-6)
        usage = span.usage
        assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
            usage.input, usage.cached, usage.output, usage.reasoning,
        )  # fmt: skip
        assert row["cost_source"] == "price_table"
    # the classes are really priced apart: some expensive call used cached or reasoning tokens
    assert any(r["cached_tokens"] or r["reasoning_tokens"] for r in got)


@covers("exceptions")
def test_exceptions(data: Dataset) -> None:
    events = [(s, e) for s in data.spans for e in s.events if e.name == "exception"]
    assert events, "the seed should give some rate limits"
    got = ask(data, "exceptions", since="1h", limit=10_000)
    assert len(got) == len(events)
    assert Counter(r["exception_type"] for r in got) == Counter(e.attributes["exception.type"] for _, e in events)
    assert Counter((r["trace_id"], r["span"]) for r in got) == Counter((s.trace_id, s.name) for s, _ in events)
    assert {r["error_type"] for r in got} == {"rate_limit"}
    times = [r["time"] for r in got]
    assert times == sorted(times, reverse=True)
    assert len(ask(data, "exceptions", since="1h", limit=3)) == 3


def _expected_documents(data: Dataset, trace_id: str) -> list[tuple]:
    spans = sorted((s for s in data.traces[trace_id] if s.documents), key=lambda s: s.start_time_ns)
    return [
        (s.name, s.kind, d.position, d.id, round(d.score, 4))
        for s in spans
        for d in sorted(s.documents, key=lambda d: d.position)
    ]


@covers("retrieved-docs")
def test_retrieved_docs_with_score_and_position(data: Dataset) -> None:
    trace_id = data.orphan_trace
    got = ask(data, "retrieved-docs", trace_id=trace_id)
    expected = _expected_documents(data, trace_id)
    assert len(expected) == 8  # 5 retrieved, 3 reranked
    assert [(r["span"], r["kind"], r["position"], r["document_id"], r["score"]) for r in got] == expected
    latest = latest_trace_with(data, "RETRIEVER")
    got_latest = ask(data, "retrieved-docs", since="1h")
    assert [(r["span"], r["position"], r["document_id"]) for r in got_latest] == [
        (e[0], e[2], e[3]) for e in _expected_documents(data, latest)
    ]


def _expected_llm_params(data: Dataset, trace_id: str) -> list[tuple]:
    spans = sorted((s for s in data.traces[trace_id] if s.kind == "LLM"), key=lambda s: s.start_time_ns)
    return [
        (s.name, s.llm.model, s.llm.provider, s.llm.temperature, s.llm.max_tokens, s.llm.top_p,
         s.llm.system_prompt[:60], len(s.llm.input_messages), s.llm.finish_reason)
        for s in spans
    ]  # fmt: skip


@covers("llm-params")
def test_llm_params(data: Dataset) -> None:
    agent = max(
        (t for t in data.traces.values() if sum(s.kind == "LLM" for s in t) >= 3),
        key=lambda t: sum(s.kind == "LLM" for s in t),
    )
    trace_id = agent[0].trace_id
    columns = ("name", "model", "provider", "temperature", "max_tokens", "top_p", "system_prompt",
               "input_messages", "finish_reason")  # fmt: skip
    got = ask(data, "llm-params", trace_id=trace_id)
    assert [tuple(r[c] for c in columns) for r in got] == _expected_llm_params(data, trace_id)
    latest = latest_trace_with(data, "LLM")
    got_latest = ask(data, "llm-params", since="1h")
    assert [tuple(r[c] for c in columns) for r in got_latest] == _expected_llm_params(data, latest)


@covers("prompt-templates")
def test_prompt_templates_per_version(data: Dataset) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    cost: dict[tuple[str, str], float] = defaultdict(float)
    for span in data.spans:
        if span.prompt:  # a template without a name is listed by the hash of its text
            key = (template_key(span.prompt.name, span.prompt.template), span.prompt.version)
            calls[key] += 1
            cost[key] += cost_of(span)
    got = ask(data, "prompt-templates", since="1h")
    assert {(r["template"], r["version"]): r["calls"] for r in got} == dict(calls)
    assert [r["calls"] for r in got] == sorted(calls.values(), reverse=True)
    for row in got:
        assert row["cost_usd"] == pytest.approx(cost[(row["template"], row["version"])], abs=1e-4)
        variables = ast.literal_eval(row["example_variables"])
        assert set(variables) in ({"question", "context"}, {"question", "findings"})
        assert row["template"].startswith("#") == (set(variables) == {"question", "findings"})


def _latency_groups(data: Dataset, by: str) -> dict[str, list[Span]]:
    groups: dict[str, list[Span]] = defaultdict(list)
    for span in data.spans:
        if span.kind in ANALYSED_KINDS:
            key = {"service": span.service, "kind": span.kind, "name": span.name}.get(by) or model_of(span) or span.kind
            groups[key].append(span)
    return groups


@covers("latency-percentiles")
@pytest.mark.parametrize("by", ["model", "kind", "service"])
def test_latency_percentiles(data: Dataset, by: str) -> None:
    groups = _latency_groups(data, by)
    got = {r["group"]: r for r in ask(data, "latency-percentiles", since="1h", by=by)}
    assert set(got) == set(groups)
    for group, spans in groups.items():
        row = got[group]
        durations = [s.duration_ns for s in spans]
        assert row["calls"] == len(spans)
        assert row["errors"] == sum(s.status == "ERROR" for s in spans)
        for level, column in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            exact = linear_quantile(durations, level) / 1e6
            assert row[column] == pytest.approx(exact, rel=0.01, abs=0.11), (group, column)
    p95 = [r["p95_ms"] for r in ask(data, "latency-percentiles", since="1h", by=by)]
    assert p95 == sorted(p95, reverse=True)


@covers("latency-by-minute")
def test_latency_by_minute_from_the_aggregates(data: Dataset) -> None:
    groups: dict[tuple[int, str], list[Span]] = defaultdict(list)
    for span in data.spans:
        if span.kind in ANALYSED_KINDS:
            minute = span.start_time_ns // MINUTE_NS * 60
            groups[(minute, model_of(span) or span.kind)].append(span)
    got = {(int(epoch_seconds(r["time"])), r["group"]): r for r in ask(data, "latency-by-minute", since="1h")}
    assert set(got) == set(groups)
    for key, spans in groups.items():
        row = got[key]
        durations = [s.duration_ns for s in spans]
        assert row["calls"] == len(spans)
        assert row["errors"] == sum(s.status == "ERROR" for s in spans)
        assert row["input_tokens"] == sum(s.usage.input for s in spans if s.usage)
        assert row["output_tokens"] == sum(s.usage.output for s in spans if s.usage)
        assert row["cost_usd"] == pytest.approx(sum(map(cost_of, spans)), abs=2e-6)
        assert row["max_ms"] == round(max(durations) / 1e6, 1)
        for level, column in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            low, high = rank_bounds(durations, level, slack=2)  # a t-digest: within two ranks of exact
            assert low / 1e6 - 0.06 <= row[column] <= high / 1e6 + 0.06, (key, column)
    # rolled up to 10-minute steps, for LLM calls by service: the same spans, fewer buckets
    rolled = ask(data, "latency-by-minute", since="1h", by="service", kind="LLM", step_seconds=600)
    expected: Counter[tuple[int, str]] = Counter(
        (s.start_time_ns // (10 * MINUTE_NS) * 600, s.service) for s in data.spans if s.kind == "LLM"
    )
    assert {(int(epoch_seconds(r["time"])), r["group"]): r["calls"] for r in rolled} == dict(expected)


@covers("trace")
def test_trace_returns_every_span_in_order(data: Dataset) -> None:
    for trace_id in (data.orphan_trace, *list(data.traces)[:20]):
        spans = sorted(data.traces[trace_id], key=lambda s: (s.start_time_ns, s.span_id))
        got = ask(data, "trace", trace_id=trace_id)
        assert [r["span_id"] for r in got] == [s.span_id for s in spans]
        assert [r["start_ns"] for r in got] == [s.start_time_ns for s in spans]
        assert [r["duration_ns"] for r in got] == [s.duration_ns for s in spans]
        assert [r["parent_span_id"] for r in got] == [s.parent_span_id for s in spans]
    assert ask(data, "trace", trace_id="0" * 32) == []
    assert len(ask(data, "trace", trace_id=BIG_TRACE_ID)) == 1000


@covers("trace-details")
def test_trace_details(data: Dataset) -> None:
    errored = next(
        t for t in data.traces.values() if any(s.kind == "LLM" and s.status == "ERROR" for s in t) and
        any(s.kind == "RETRIEVER" for s in t)
    )  # fmt: skip
    trace_id = errored[0].trace_id
    got = {r["span_id"]: r for r in ask(data, "trace-details", trace_id=trace_id)}
    for span in errored:
        wanted = bool(span.llm or span.prompt or span.documents or span.events or span.status == "ERROR")
        assert (span.span_id in got) == wanted, span.name
    llm = next(s for s in errored if s.kind == "LLM")
    row = got[llm.span_id]
    assert (row["model"], row["temperature"], row["max_tokens"], row["top_p"], row["system_prompt"]) == (
        llm.llm.model, llm.llm.temperature, llm.llm.max_tokens, llm.llm.top_p, llm.llm.system_prompt,
    )  # fmt: skip
    assert (row["prompt_template"], row["prompt_version"], row["prompt_variables"]) == (
        llm.prompt.name, llm.prompt.version, llm.prompt.variables,
    )  # fmt: skip
    [exception] = row["exceptions"]
    [event] = llm.events
    assert exception["time_ns"] == event.time_ns
    assert exception["type"] == event.attributes["exception.type"]
    assert exception["message"] == event.attributes["exception.message"]
    assert exception["stacktrace"].startswith("Traceback")
    retriever = next(s for s in errored if s.kind == "RETRIEVER")
    docs = got[retriever.span_id]["documents"]
    assert [(d["id"], d["score"], d["position"]) for d in docs] == [
        (d.id, d.score, d.position) for d in retriever.documents
    ]


@covers("alerts")
def test_recent_alerts(data: Dataset) -> None:
    got = ask(data, "alerts", since="24h")
    recent = [a for a in data.alerts if float(a.fired_at) * 1000 >= data.now_ms - 86_400_000]
    assert len(got) == len(recent) == len(data.alerts) - 1
    assert [(r["rule"], r["service"], r["state"]) for r in got] == [
        (a.rule, a.service, a.state) for a in sorted(recent, key=lambda a: float(a.fired_at), reverse=True)
    ]
    assert {r["group"] for r in got if r["rule"] == "model-latency"} == {"gpt-4o", "gpt-4o-mini"}
    assert len(ask(data, "alerts", since="24h", limit=2)) == 2


@covers("alerts-firing")
def test_firing_alerts_are_the_latest_state_per_rule_and_group(data: Dataset) -> None:
    got = ask(data, "alerts-firing")
    assert [(r["rule"], r["service"], r["group"], r["severity"]) for r in got] == [
        ("error-rate", "search-api", "", "critical"),
        ("traffic-stopped", "batch", "", "critical"),  # fired 30 h ago and never resolved: still firing
        ("llm-latency-p95", "search-api", "", "warning"),
        ("model-latency", "*", "gpt-4o", "info"),
    ]


@covers("top")
def test_top_reads_the_newest_rollup_windows(data: Dataset) -> None:
    """Rollups built in Python from the dataset's spans (10 s windows of end time, per service, kind, name
    and model, as the worker groups them); the query must sum the newest minute of them per group."""
    rows: dict[tuple[int, str, str, str, str], list[Span]] = defaultdict(list)
    for span in data.spans:
        rows[(span.end_time_ns // 10**10 * 10, span.service, span.kind, span.name, model_of(span))].append(span)
    rollups = []
    for (start, service, kind, name, model), spans in rows.items():
        sketch = LatencySketch()
        for span in spans:
            sketch.add(span.duration_ns / 1e6)
        p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
        rollups.append(
            Rollup(window_start=start, window_seconds=10, service=service, kind=kind, name=name, model=model,
                   count=len(spans), error_count=sum(s.status == "ERROR" for s in spans), rate_limit_count=0,
                   latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99, latency_max_ms=sketch.max,
                   latency_sketch=base64.b64encode(sketch.to_bytes()).decode(),
                   input_tokens=sum(s.usage.input for s in spans if s.usage),
                   output_tokens=sum(s.usage.output for s in spans if s.usage), cached_tokens=0,
                   reasoning_tokens=0, cost_usd=sum(map(cost_of, spans)))
        )  # fmt: skip
    data.client.raw_insert("rollups", insert_block=encode_rows(rollups), fmt="JSONEachRow")
    newest = max(start for start, *_ in rows)
    recent = {key: spans for key, spans in rows.items() if key[0] > newest - 60}
    p95_of = {(r.window_start, r.service, r.kind, r.name, r.model): r.latency_p95_ms for r in rollups}
    for by_model in (1, 0):
        groups: dict[tuple[str, str], list[tuple[int, str, str, str, str]]] = defaultdict(list)
        for key in recent:
            groups[(key[1], key[4] if by_model else "*")].append(key)
        got = {(r["service"], r["model"]): r for r in ask(data, "top", by_model=by_model)}
        assert set(got) == set(groups)
        for group, keys in groups.items():
            spans = [s for key in keys for s in recent[key]]
            row = got[group]
            assert row["calls"] == len(spans) and row["spans_per_second"] == round(len(spans) / 60, 3)
            assert row["errors"] == sum(s.status == "ERROR" for s in spans)
            assert row["input_tokens"] == sum(s.usage.input for s in spans if s.usage)
            assert row["cost_usd"] == pytest.approx(sum(map(cost_of, spans)), abs=2e-6)
            assert row["max_ms"] == round(max(s.duration_ns for s in spans) / 1e6, 1)
            assert row["worst_p95_ms"] == round(max(p95_of[key] for key in keys), 1)
            assert row["windows"] == len({key[0] for key in keys}) and row["seconds"] == 60
            assert epoch_seconds(row["window_to"]) == newest + 10 and row["latency_sketches"] == []
    with_sketches = ask(data, "top", sketches=1, window_seconds=30)
    assert sum(len(r["latency_sketches"]) for r in with_sketches) == sum(1 for k in recent if k[0] > newest - 30)


@covers("scores")
def test_scores_per_name_source_and_service(data: Dataset) -> None:
    """Scores land in `scores` from spans (`add_score`, through the view: source sdk) and from the topic
    (here inserted as the sink writes them); the query averages per name, source and service."""
    from tracehouse.core.scores import Score
    from tracehouse.sinks.record_routes import score_row

    in_spans = [(s.trace_id, sc) for s in data.spans for sc in s.scores]
    assert in_spans, "the generated traffic carries scores in spans"
    sdk = ask(data, "scores", source="sdk", since="30d")
    assert sum(r["scores"] for r in sdk) == len(in_spans)
    assert {r["name"] for r in sdk} == {sc.name for _, sc in in_spans}
    trace_id, spans = next(iter(data.traces.items()))
    service = next(s for s in spans if s.is_root).service
    evals = [
        Score(trace_id=trace_id, name="q-eval", value=v, label=lb, source="eval")
        for v, lb in ((1.0, "good"), (0.0, "bad"), (0.5, "good"))
    ]
    unknown = Score(trace_id="f" * 32, name="q-eval", label="bad", source="eval")
    rows = [score_row(s, 0) for s in (*evals, unknown, evals[0])]  # the first one twice: stored once
    data.client.raw_insert("scores", insert_block=encode_rows(rows), fmt="JSONEachRow")

    def scores(**values: Any) -> list[dict[str, Any]]:  # `name` is a parameter of the query, not of ask()
        result = run_query(data.client, QUERIES["scores"], values)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    got = {r["service"]: r for r in scores(name="q-eval", source="eval")}
    assert set(got) == {service, "(trace not stored yet)"}, got
    row = got[service]
    assert (row["scores"], row["with_value"], row["avg_value"]) == (3, 3, 0.5)
    assert (row["min_value"], row["max_value"], row["top_labels"][0]) == (0.0, 1.0, "good")
    other = got["(trace not stored yet)"]
    assert (other["scores"], other["with_value"], other["avg_value"], other["top_labels"]) == (1, 0, None, ["bad"])
    assert scores(name="q-eval", source="human") == []


@pytest.fixture(scope="module")
def assembled(data: Dataset) -> dict[str, Any]:
    """The `traces` rows the worker would write for the dataset's traces (its own assembler), inserted once
    for the queries that read `traces` FINAL (sessions, session, top-users)."""
    from tracehouse.pipeline.assembly import TraceAssembler
    from tracehouse.sinks.rows import trace_row

    assembler = TraceAssembler(PriceTable())
    for offset, span in enumerate(data.spans):
        assembler.add(span, offset, now=0.0)
    records = {r.trace_id: r for r in assembler.flush_all(now=1.0)}
    data.client.raw_insert("traces", insert_block=encode_rows([trace_row(r) for r in records.values()]),
                           fmt="JSONEachRow")  # fmt: skip
    return records


@covers("top-users")
def test_top_users_totals_per_user(data: Dataset, assembled: dict[str, Any]) -> None:
    per_user: dict[str, list[Any]] = defaultdict(list)
    for record in assembled.values():
        if record.user_id:
            per_user[record.user_id].append(record)
    assert len(per_user) > 3, "the generated traffic has users"
    rows = ask(data, "top-users", since="1h", limit=1000)
    assert [r["user_id"] for r in rows] == sorted(
        per_user, key=lambda u: (-round(sum(r.cost_usd for r in per_user[u]), 6), -sum(r.total_tokens for r in
                                 per_user[u]), u)
    )  # fmt: skip
    for row in rows:
        records = per_user[row["user_id"]]
        assert row["traces"] == len(records)
        assert row["sessions"] == len({r.session_id for r in records if r.session_id})
        assert row["errors"] == sum(r.error_count for r in records)
        assert row["failed_traces"] == sum(r.status == "ERROR" for r in records)
        assert row["total_tokens"] == sum(r.total_tokens for r in records)
        assert row["cost_usd"] == pytest.approx(sum(r.cost_usd for r in records), abs=2e-6)
    assert len(ask(data, "top-users", since="1h", limit=2)) == 2
    assert ask(data, "top-users", since="1h", service="no-such-service") == []


@covers("sampling")
def test_sampling_verdicts_of_traces_recorded_with_sampling_off(data: Dataset, assembled: dict[str, Any]) -> None:
    # with sampling on, tests/integration/test_sampling_e2e.py checks each rule's fraction through `tracehouse top`
    rows = ask(data, "sampling", since="1h")
    assert rows == [{"verdict": "all", "traces": len(assembled), "fraction": 1.0}]
    assert ask(data, "sampling", since="1h", service="no-such-service") == []


@covers("sessions")
@covers("session")
def test_sessions_and_one_session(data: Dataset, assembled: dict[str, Any]) -> None:
    per_session: dict[str, list[Any]] = defaultdict(list)
    for record in assembled.values():
        if record.session_id:
            per_session[record.session_id].append(record)
    assert any(len(turns) >= 2 for turns in per_session.values()), "the generated chats have several turns"
    rows = ask(data, "sessions", limit=1000)
    newest = {s: max(r.start_time_ns for r in turns) for s, turns in per_session.items()}
    assert [r["session_id"] for r in rows] == sorted(per_session, key=lambda s: (newest[s], s), reverse=True)
    for row in rows:
        turns = per_session[row["session_id"]]
        assert (row["turns"], row["last_ns"]) == (len(turns), newest[row["session_id"]])
        assert row["total_tokens"] == sum(r.total_tokens for r in turns)
        assert row["user_ids"] == sorted({r.user_id for r in turns if r.user_id})
    longest = max(per_session, key=lambda s: (len(per_session[s]), s))
    turns = ask(data, "session", session_id=longest)
    expected = sorted(per_session[longest], key=lambda r: (r.start_time_ns, r.trace_id))
    assert [t["trace_id"] for t in turns] == [r.trace_id for r in expected]
    for turn in turns:
        spans = data.traces[turn["trace_id"]]
        root = next(s for s in spans if not s.parent_span_id)
        first_input = min((s for s in spans if s.input), key=lambda s: s.start_time_ns, default=None)
        wanted = root.input or (first_input.input if first_input else "")
        assert (turn["input_cut"], turn["input_chars"]) == (wanted[:2000], len(wanted))
    assert ask(data, "session", session_id="x' OR 1=1 --") == []


@covers("score-windows")
def test_score_windows_average_per_name_service_and_model(data: Dataset) -> None:
    """The worker's score windows (`score_rollups`, written here as the sink writes them): sums over the
    windows of the period, the average weighted by the scores with a value, a revised row counted once."""
    minute = int(time.time()) // 60 * 60 - 120

    def row(start: int, count: int, values: list[float], labels: dict[str, int]) -> ScoreRollup:
        return ScoreRollup(
            window_start=start, window_seconds=60, name="q-feedback", service="q-bot", model="m", count=count,
            value_count=len(values), value_sum=sum(values), value_avg=sum(values) / len(values) if values else 0.0,
            value_min=min(values, default=0.0), value_max=max(values, default=0.0), label_counts=labels,
            value_counts={},
        )  # fmt: skip

    rows = [
        row(minute, 2, [1.0], {"thumbs_up": 1}),  # replaced by its revision below
        row(minute, 3, [1.0, 0.0], {"thumbs_up": 1, "thumbs_down": 1}),
        row(minute + 60, 2, [0.5], {"thumbs_down": 1}),
    ]
    data.client.raw_insert("score_rollups", insert_block=encode_rows(rows[:1]), fmt="JSONEachRow")
    data.client.raw_insert("score_rollups", insert_block=encode_rows(rows[1:]), fmt="JSONEachRow")
    result = run_query(data.client, QUERIES["score-windows"], {"name": "q-feedback"})
    (got,) = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
    assert (got["service"], got["model"], got["scores"], got["with_value"]) == ("q-bot", "m", 5, 3)
    assert (got["avg_value"], got["min_value"], got["max_value"]) == (0.5, 0.0, 1.0)
    assert got["label_counts"] == {"thumbs_up": 1, "thumbs_down": 2}


def test_every_named_query_is_tested() -> None:
    # the web API's own queries (`web-*`) are tested through the API, in tests/test_web*.py
    named = {name for name in QUERIES if not name.startswith("web-")}
    assert named == TESTED, f"untested queries: {sorted(named - TESTED)}"


# ---- the span tree ---------------------------------------------------------------------------------------


def _node(span_id: str, parent: str, start: int, duration: int = 10) -> SpanNode:
    return SpanNode(span_id, parent, f"s{span_id}", "CHAIN", "svc", start, duration, "OK", "", "", "", 0, 0.0)


def test_build_tree_orders_depth_first_and_keeps_orphans_and_loops() -> None:
    nodes = [
        _node("r", "", 0, 100),
        _node("b", "r", 20),
        _node("a", "r", 10),
        _node("a1", "a", 11),
        _node("o", "missing", 5),  # its parent never arrived
        _node("x", "y", 50),  # x and y are each other's parent
        _node("y", "x", 60),
    ]
    tree = build_tree("t", nodes)
    assert [(n.span_id, n.depth, n.orphan) for n in tree.spans] == [
        ("r", 0, False), ("a", 1, False), ("a1", 2, False), ("b", 1, False),
        ("o", 0, True), ("x", 0, True), ("y", 1, False),
    ]  # fmt: skip
    assert tree.orphan_count == 2 and tree.duration_ns == 100


def test_build_tree_handles_a_chain_deeper_than_the_recursion_limit() -> None:
    depth = sys.getrecursionlimit() + 100
    nodes = [_node(f"{i}", f"{i - 1}" if i else "", i) for i in range(depth)]
    tree = build_tree("t", nodes)
    assert tree.spans[-1].depth == depth - 1


def test_trace_view_renders_a_thousand_span_trace_quickly(data: Dataset) -> None:
    out = io.StringIO()
    started = time.perf_counter()
    show_trace(data.settings, BIG_TRACE_ID, console=Console(file=out, width=160, color_system=None))
    elapsed = time.perf_counter() - started
    text = out.getvalue()
    assert "1000 spans" in text and "1 error" in text
    assert sum("summarise" in line for line in text.splitlines()) >= 200
    assert elapsed < 15, f"rendering 1,000 spans took {elapsed:.1f}s"


# ---- the CLI as users run it ---------------------------------------------------------------------------


def cli(data: Dataset, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRACEHOUSE_CLICKHOUSE_DATABASE": data.database, "COLUMNS": "200"}
    command = [sys.executable, "-m", "tracehouse.cli.main", *args, "--clickhouse", data.settings.clickhouse_url]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_cli_query_json(data: Dataset) -> None:
    done = cli(data, "query", "slowest-llm", "--since", "1h", "--limit", "5", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    expected = sorted((s for s in data.spans if s.kind == "LLM"), key=lambda s: -s.duration_ns)[:5]
    assert [r["span_id"] for r in rows] == [s.span_id for s in expected]
    assert [r["duration_ms"] for r in rows] == [round(s.duration_ns / 1e6, 1) for s in expected]
    assert all(r["start_time"].endswith("Z") for r in rows)

    done = cli(data, "query", "retrieved-docs", "--trace", data.orphan_trace, "--jsonl")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["position"], r["document_id"]) for r in lines] == [
        (e[2], e[3]) for e in _expected_documents(data, data.orphan_trace)
    ]

    done = cli(data, "query", "latency-by-minute", "--by", "kind", "-p", "kind=LLM", "-p", "step_seconds=3600")
    assert done.returncode == 0, done.stderr
    assert "latency-by-minute" in done.stdout and "LLM" in done.stdout


def test_cli_query_mistakes_are_explained(data: Dataset) -> None:
    done = cli(data, "query", "slowest-everything")
    assert done.returncode == 2
    assert "no query named 'slowest-everything'" in done.stderr and "slowest-llm" in done.stderr
    done = cli(data, "query", "slowest-calls", "--since", "an hour")
    assert done.returncode == 2 and "bad --since" in done.stderr
    done = cli(data, "query", "trace", "--since", "1h")
    assert done.returncode == 2 and "does not take --since" in done.stderr
    done = cli(data, "query", "alerts", "-p", "limit=lots")
    assert done.returncode == 2 and "limit" in done.stderr
    # hostile input is a bound value, never SQL
    done = cli(data, "query", "retrieved-docs", "--trace", "x' OR 1=1 --", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_cli_query_list_and_sql(data: Dataset) -> None:
    done = cli(data, "query", "--list")
    assert done.returncode == 0, done.stderr
    for name in QUERIES:
        assert name in done.stdout
    assert "trace-details.sql" in done.stdout
    done = cli(data, "query", "latency-by-minute", "--sql")
    assert done.returncode == 0
    assert done.stdout.startswith("-- name: latency-by-minute") and "{step_seconds:UInt32}" in done.stdout
    with pytest.raises(UsageError, match="valid names"):
        build_request("nope")


def test_cli_trace_json(data: Dataset) -> None:
    done = cli(data, "trace", data.orphan_trace, "--json")
    assert done.returncode == 0, done.stderr
    tree = json.loads(done.stdout)
    spans = data.traces[data.orphan_trace]
    assert tree["span_count"] == len(spans) and tree["orphan_count"] == 1
    assert tree["duration_ns"] == max(s.end_time_ns for s in spans) - min(s.start_time_ns for s in spans)
    by_id = {s["span_id"]: s for s in tree["spans"]}
    assert set(by_id) == {s.span_id for s in spans}
    root = next(s for s in spans if not s.parent_span_id)
    assert tree["spans"][0]["span_id"] == root.span_id and tree["spans"][0]["depth"] == 0
    orphan = by_id[ORPHAN_SPAN_ID]
    assert orphan["orphan"] is True and orphan["depth"] == 0
    for span in spans:
        if span.parent_span_id == root.span_id:
            assert by_id[span.span_id]["depth"] == 1
    llm = next(s for s in spans if s.kind == "LLM")
    shown = by_id[llm.span_id]
    assert shown["llm"]["temperature"] == llm.llm.temperature
    assert shown["llm"]["system_prompt"] == llm.llm.system_prompt
    prompt = shown["prompt"]  # the API's span (GET /api/traces/{id}), whose prompt also has its text
    assert (prompt["template"], prompt["version"], prompt["variables"]) == (
        llm.prompt.name, llm.prompt.version, llm.prompt.variables
    )  # fmt: skip
    retriever = next(s for s in spans if s.kind == "RETRIEVER")
    assert [(d["position"], d["score"]) for d in by_id[retriever.span_id]["documents"]] == [
        (d.position, d.score) for d in retriever.documents
    ]


def test_cli_trace_waterfall(data: Dataset) -> None:
    errored = next(t for t in data.traces.values() if any(s.status == "ERROR" and s.events for s in t))
    done = cli(data, "trace", errored[0].trace_id)
    assert done.returncode == 0, done.stderr
    for span in errored:
        assert span.name in done.stdout
    assert "Exceptions" in done.stdout  # each provider's own rate-limit error (google's says RESOURCE_EXHAUSTED)
    assert "RateLimitError" in done.stdout or "RESOURCE_EXHAUSTED" in done.stdout
    assert "█" in done.stdout
    done = cli(data, "trace", data.orphan_trace)
    assert done.returncode == 0, done.stderr
    assert "late_webhook (orphan)" in done.stdout and "Retrieved documents" in done.stdout


def test_cli_trace_unknown_id_exits_1(data: Dataset) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    done = cli(data, "trace", missing)
    assert done.returncode == 1
    assert f"trace {missing} not found" in done.stderr and data.database in done.stderr
    assert done.stdout == ""
    done = cli(data, "trace", "not-a-trace", "--json")
    assert done.returncode == 1 and "32 hex digits" in done.stderr


def test_cli_alerts_json(data: Dataset) -> None:
    done = cli(data, "alerts", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [(a["rule"], a["service"]) for a in answer["firing"]] == [
        ("error-rate", "search-api"), ("traffic-stopped", "batch"), ("llm-latency-p95", "search-api"),
        ("model-latency", "*"),
    ]  # fmt: skip
    assert len(answer["recent"]) == len(data.alerts) - 1
    done = cli(data, "alerts")
    assert done.returncode == 0, done.stderr
    assert "Firing now (4)" in done.stdout
