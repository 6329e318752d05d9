"""The web explorer (tracehouse.web): its JSON API against real data, its OpenAPI document, and its UI in
a real headless Chromium.

One database per module (tests/web_dataset.py): seeded RAG, agent and chat traces, a 1,000-span batch
trace, their `traces` rows from the pipeline's own TraceAssembler (plus a stale lower version of one,
which `traces FINAL` must hide), and alerts. The server runs for real on a free port, in a thread with its
own event loop; the API tests speak HTTP to it and compare every answer with values computed in Python
from the same spans.

The browser tests drive Debian's Chromium (/usr/bin/chromium, or TRACEHOUSE_CHROMIUM) through Playwright
for Python. When either is missing they fail with the install command under CI (env CI set) and skip
otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable, price_span
from tracehouse.core.schema import Span
from tracehouse.read.tree import build_tree
from tracehouse.web.app import create_app
from tracehouse.web.openapi import build_openapi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from web_dataset import BIG_TRACE_ID, WebDataset, load
from web_server import ServerThread, get, run_cli

CHROMIUM = os.environ.get("TRACEHOUSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOT = Path("/tmp/tracehouse-web.png")
ANALYSED = ("LLM", "RETRIEVER", "EMBEDDING", "RERANKER")


# ---- the server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(clickhouse_url: str) -> Iterator[WebDataset]:
    dataset = load(clickhouse_url, f"test_{uuid.uuid4().hex[:10]}")
    try:
        yield dataset
    finally:
        dataset.client.command(f"DROP DATABASE IF EXISTS `{dataset.database}`")
        dataset.client.close()


@pytest.fixture(scope="module")
def server(data: WebDataset) -> Iterator[ServerThread]:
    running = ServerThread(data.settings).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def api(server: ServerThread) -> Any:
    def call(path: str, expect: int = 200) -> Any:
        status, body, _ = get(server.url, path)
        assert status == expect, (path, status, body)
        return body

    return call


# ---- Python's answers ------------------------------------------------------------------------------


def trace_with(data: WebDataset, kind: str, *, error: bool | None = None) -> list[Span]:
    for spans in data.traces.values():
        if spans[0].trace_id == BIG_TRACE_ID or not any(s.kind == kind for s in spans):
            continue
        if error is None or any(s.status == "ERROR" and s.events for s in spans) == error:
            return spans
    raise AssertionError(f"the dataset has no trace with a {kind} span (error={error})")


def cost_of(span: Span) -> float:
    return price_span(PriceTable(), span.llm.model if span.llm else "", span.usage, span.cost_usd)[0]


def current_records(data: WebDataset) -> list[Any]:
    return sorted(data.records.values(), key=lambda r: (r.start_time_ns, r.trace_id), reverse=True)


# ---- GET /api/traces -------------------------------------------------------------------------------


def test_traces_lists_every_trace_newest_first_from_the_latest_version(data: WebDataset, api: Any) -> None:
    answer = api("/api/traces?limit=500")
    expected = current_records(data)
    assert [t["trace_id"] for t in answer["traces"]] == [r.trace_id for r in expected]
    assert answer["next_cursor"] is None
    by_id = {t["trace_id"]: t for t in answer["traces"]}
    for record in expected:
        got = by_id[record.trace_id]
        assert (got["root_name"], got["service"], got["span_count"], got["error_count"], got["status"]) == (
            record.root_name, record.service, record.span_count, record.error_count, record.status,
        )  # fmt: skip
        assert got["duration_ns"] == record.duration_ns
        assert got["total_tokens"] == record.total_tokens
        assert got["cost_usd"] == pytest.approx(record.cost_usd, abs=1e-9)
        assert got["start_ms"] == record.start_time_ns // 1_000_000
        assert got["start_time"].endswith("Z")
    # the stale row (version 1) of one trace is hidden by FINAL
    stale = by_id[data.stale_trace]
    assert stale["root_name"] != "stale_partial_assembly" and stale["span_count"] > 1
    assert by_id[BIG_TRACE_ID]["span_count"] == 1000


def test_traces_filters(data: WebDataset, api: Any) -> None:
    records = current_records(data)

    def ids(query: str) -> list[str]:
        return [t["trace_id"] for t in api(f"/api/traces?limit=500&{query}")["traces"]]

    assert ids("service=search-api") == [r.trace_id for r in records if "search-api" in r.services]
    errors = [r.trace_id for r in records if r.status == "ERROR"]
    assert errors and ids("status=ERROR") == errors
    assert ids("min_duration_ms=3000") == [r.trace_id for r in records if r.duration_ns >= 3_000_000_000]
    assert ids("min_cost=0.01") == [r.trace_id for r in records if r.cost_usd >= 0.01]
    session = next(r.session_id for r in records if r.session_id)
    assert ids(f"session_id={session}") == [r.trace_id for r in records if r.session_id == session]
    user = records[3].user_id
    assert ids(f"user_id={user}") == [r.trace_id for r in records if r.user_id == user]
    assert ids(f"q={records[5].trace_id[:8]}") == [records[5].trace_id]
    assert set(ids("q=RAG_PIPE")) == {r.trace_id for r in records if r.root_name == "rag_pipeline"}
    # an absolute range (ISO and epoch milliseconds) holding exactly one trace
    target = records[10]
    since_ms = target.start_time_ns // 1_000_000
    assert ids(f"since={since_ms}&until={since_ms + 1}") == [target.trace_id]
    assert ids("since=1m") == [r.trace_id for r in records if r.start_time_ns >= time.time_ns() - 60_000_000_000]
    assert ids("since=2020-01-01T00:00:00Z&until=2020-01-02T00:00:00") == []


def test_traces_pages_by_cursor(data: WebDataset, api: Any) -> None:
    seen: list[str] = []
    cursor = ""
    for _ in range(20):
        page = api(f"/api/traces?limit=7{'&cursor=' + cursor if cursor else ''}")
        assert len(page["traces"]) <= 7
        seen += [t["trace_id"] for t in page["traces"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [r.trace_id for r in current_records(data)]


# ---- GET /api/traces/{id} --------------------------------------------------------------------------


def test_trace_has_the_tree_and_every_detail(data: WebDataset, api: Any) -> None:
    spans = trace_with(data, "RETRIEVER")
    trace_id = spans[0].trace_id
    answer = api(f"/api/traces/{trace_id}")
    t0 = min(s.start_time_ns for s in spans)
    assert answer["span_count"] == len(spans) and answer["start_ns"] == str(t0)
    assert answer["duration_ns"] == max(s.end_time_ns for s in spans) - t0
    # the same tree order as the terminal's (tracehouse.read.tree), depth first
    got = answer["spans"]
    root = next(s for s in spans if not s.parent_span_id)
    assert got[0]["span_id"] == root.span_id and got[0]["depth"] == 0
    assert got[0]["child_count"] == len(spans) - 1
    assert all(s["depth"] == 1 and not s["orphan"] for s in got[1:])
    by_id = {s["span_id"]: s for s in got}
    for span in spans:
        shown = by_id[span.span_id]
        assert shown["offset_ns"] == span.start_time_ns - t0
        assert shown["duration_ns"] == span.duration_ns
        assert (shown["name"], shown["kind"], shown["status"]) == (span.name, span.kind, span.status)
        assert shown["input"] == span.input and shown["output"] == span.output
        assert shown["attributes"] == span.attributes
        assert shown["cost_usd"] == pytest.approx(cost_of(span), abs=1e-12)
    retriever = next(s for s in spans if s.kind == "RETRIEVER")
    assert [(d["position"], d["id"], d["score"], d["content"], d["metadata"]) for d in
            by_id[retriever.span_id]["documents"]] == [
        (d.position, d.id, d.score, d.content, d.metadata) for d in retriever.documents
    ]  # fmt: skip
    llm = next(s for s in spans if s.kind == "LLM")
    shown_llm = by_id[llm.span_id]["llm"]
    assert (shown_llm["model"], shown_llm["provider"], shown_llm["temperature"], shown_llm["max_tokens"],
            shown_llm["top_p"], shown_llm["system_prompt"]) == (
        llm.llm.model, llm.llm.provider, llm.llm.temperature, llm.llm.max_tokens, llm.llm.top_p,
        llm.llm.system_prompt,
    )  # fmt: skip
    assert [(m["role"], m["content"]) for m in shown_llm["input_messages"]] == [
        (m.role, m.content) for m in llm.llm.input_messages
    ]
    assert by_id[llm.span_id]["prompt"] == {
        "template": llm.prompt.name, "version": llm.prompt.version, "text": llm.prompt.template,
        "variables": llm.prompt.variables,
    }  # fmt: skip
    usage = llm.usage
    assert (by_id[llm.span_id]["input_tokens"], by_id[llm.span_id]["cached_tokens"]) == (usage.input, usage.cached)
    assert [(s["name"], s["value"], s["source"]) for s in by_id[root.span_id]["scores"]] == [
        (s.name, s.value, s.source) for s in root.scores
    ]
    assert by_id[root.span_id]["tags"] == root.tags
    assert by_id[retriever.span_id]["llm"] is None and by_id[root.span_id]["prompt"] is None


def test_trace_exceptions_carry_type_message_and_stack(data: WebDataset, api: Any) -> None:
    spans = trace_with(data, "LLM", error=True)
    failed = next(s for s in spans if s.status == "ERROR" and s.events)
    answer = api(f"/api/traces/{spans[0].trace_id}")
    t0 = min(s.start_time_ns for s in spans)
    shown = next(s for s in answer["spans"] if s["span_id"] == failed.span_id)
    [event] = failed.events
    assert shown["exceptions"] == [{
        "offset_ns": event.time_ns - t0,
        "type": event.attributes["exception.type"],
        "message": event.attributes["exception.message"],
        "stacktrace": event.attributes["exception.stacktrace"],
    }]  # fmt: skip
    assert shown["events"] == [] and shown["error_type"] == "rate_limit"
    assert answer["error_count"] == sum(s.status == "ERROR" for s in spans)


def test_cli_trace_json_is_the_api_answer(data: WebDataset, api: Any) -> None:
    """One read model: `tracehouse trace ID --json` prints exactly the body of `GET /api/traces/{ID}`, for a
    trace with documents, one with a failed LLM call, one with scores on the trace and on a span, and the
    1,000-span trace."""
    traces = [
        trace_with(data, "RETRIEVER"),
        trace_with(data, "LLM", error=True),
        data.conversation[1],
        data.conversation[2],
        data.traces[BIG_TRACE_ID],
    ]
    for spans in traces:
        trace_id = spans[0].trace_id
        done = run_cli(data.settings, data.database, "trace", trace_id, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == api(f"/api/traces/{trace_id}")
    # and the terminal's waterfall is drawn from the same view: its scores in the header
    done = run_cli(data.settings, data.database, "trace", data.conversation[1][0].trace_id, columns=120)
    assert done.returncode == 0, done.stderr
    assert "user_feedback=0 (thumbs_down)" in done.stdout


def test_thousand_span_trace(data: WebDataset, api: Any) -> None:
    started = time.perf_counter()
    answer = api(f"/api/traces/{BIG_TRACE_ID}")
    elapsed = time.perf_counter() - started
    spans = answer["spans"]
    assert len(spans) == answer["span_count"] == 1000 and not answer["spans_truncated"]
    assert [s["depth"] for s in spans[:11]] == [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    assert [s["name"] for s in spans[1:3]] == ["item_000", "plan"]
    assert Counter(s["depth"] for s in spans) == {0: 1, 1: 111, 2: 888}
    assert answer["error_count"] == 2
    # the same order the terminal shows
    expected = build_tree(BIG_TRACE_ID, [_node(s) for s in data.traces[BIG_TRACE_ID]])
    assert [s["span_id"] for s in spans] == [n.span_id for n in expected.spans]
    assert elapsed < 10, f"GET of a 1,000-span trace took {elapsed:.1f}s"


def _node(span: Span) -> Any:
    from tracehouse.read.tree import SpanNode

    return SpanNode(span.span_id, span.parent_span_id, span.name, span.kind, span.service, span.start_time_ns,
                    span.duration_ns, span.status, "", "", "", 0, 0.0)  # fmt: skip


def test_long_texts_are_cut_and_the_span_endpoint_gives_them_whole(data: WebDataset, api: Any) -> None:
    spans = trace_with(data, "LLM")
    llm = next(s for s in spans if s.kind == "LLM" and len(s.input) > 100)
    answer = api(f"/api/traces/{llm.trace_id}?max_chars=40")
    shown = next(s for s in answer["spans"] if s["span_id"] == llm.span_id)
    assert shown["input"] == llm.input[:40] and shown["input_chars"] == len(llm.input)
    assert all(len(m["content"]) <= 40 for m in shown["llm"]["input_messages"])
    assert answer["max_chars"] == 40
    full = api(f"/api/traces/{llm.trace_id}/spans/{llm.span_id}")
    assert full["input"] == llm.input and full["offset_ns"] == shown["offset_ns"]
    assert full["llm"]["input_messages"][-1]["content"] == llm.llm.input_messages[-1].content
    api(f"/api/traces/{llm.trace_id}/spans/{'0' * 16}", expect=404)


# ---- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code", "says"),
    [
        ("/api/traces/not-a-trace", 400, "bad_parameter", "32 hex digits"),
        ("/api/traces/" + "0" * 32, 404, "not_found", "not found"),
        ("/api/traces?servce=x", 400, "bad_parameter", "unknown parameter 'servce'"),
        ("/api/traces?limit=lots", 400, "bad_parameter", "limit must be an integer"),
        ("/api/traces?limit=0", 400, "bad_parameter", "at least 1"),
        ("/api/traces?min_cost=-1", 400, "bad_parameter", "min_cost"),
        ("/api/traces?min_duration_ms=nan", 400, "bad_parameter", "finite"),
        ("/api/traces?status=FAILED", 400, "bad_parameter", "OK, ERROR, UNSET"),
        ("/api/traces?since=yesterday", 400, "bad_parameter", "duration back from now"),
        ("/api/traces?since=1h&until=2h", 400, "bad_parameter", "must be before"),
        ("/api/traces?cursor=garbage", 400, "bad_parameter", "cursor"),
        ("/api/traces?q=x' OR 1=1 --", 200, None, None),  # a bound value, never SQL
        ("/api/rollups?by=colour", 400, "bad_parameter", "model, service, kind, name"),
        ("/api/rollups?step_seconds=60&since=30d", 400, "bad_parameter", "more than"),
        ("/api/alerts?limit=-5", 400, "bad_parameter", "limit"),
        ("/api/nothing-here", 404, "not_found", "openapi.json"),
    ],
)
def test_errors_are_clear_json(
    server: ServerThread, path: str, status: int, code: str | None, says: str | None
) -> None:
    got_status, body, headers = get(server.url, path.replace(" ", "%20").replace("'", "%27"))
    assert got_status == status, body
    assert headers["Content-Type"].startswith("application/json")
    if code is not None:
        assert body["error"]["status"] == status and body["error"]["code"] == code
        assert says in body["error"]["message"], body
        assert "Traceback" not in json.dumps(body)


def test_wrong_method_is_json_405(server: ServerThread) -> None:
    status, body, _ = get(server.url, "/api/traces", method="POST")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


# Each case the hostile-client review found (issue 17), on every endpoint that takes a time: a 400 in the
# error form naming the parameter and what it accepts, never a 500, a 502 or a silently different filter.
BAD_TIMES = ("99999999999999999", "9" * 5000, "99999999999999999999d", "\u00b2", "\u0661\u0662", "\uff11h",
             "-5", "1e3", "0x10", "2025-13-01", "1h 1h")  # fmt: skip
TIME_PARAMS = {"/api/traces": ("since", "until"), "/api/rollups": ("since", "until"), "/api/alerts": ("since",),
               "/api/services": ("since",)}  # fmt: skip


def _bad(server: ServerThread, path: str, name: str) -> dict[str, Any]:
    status, body, headers = get(server.url, path)
    assert status == 400, (path[:120], status, body)
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"]["status"] == 400 and body["error"]["code"] == "bad_parameter", body
    assert body["error"]["message"].startswith(name), body
    assert len(body["error"]["message"]) < 1000  # 5,000 nines are not echoed back
    return body["error"]


@pytest.mark.parametrize("endpoint", sorted(TIME_PARAMS))
def test_bad_times_are_400_naming_the_parameter_and_range(server: ServerThread, endpoint: str) -> None:
    for name in TIME_PARAMS[endpoint]:
        for value in BAD_TIMES:
            error = _bad(server, f"{endpoint}?{urllib.parse.urlencode({name: value})}", name)
            assert "0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z" in error["message"]


@pytest.mark.parametrize("value", ["1e308", "99999999999999999999", "9223372036855", "inf", "-inf", "nan", "1_0",
                                   "\u00b2", "-1"])  # fmt: skip
def test_min_duration_out_of_int64_nanoseconds_is_400(server: ServerThread, value: str) -> None:
    error = _bad(server, f"/api/traces?{urllib.parse.urlencode({'min_duration_ms': value})}", "min_duration_ms")
    assert "at most 9223372036854" in error["message"]


def test_largest_min_duration_is_a_real_filter(api: Any) -> None:
    assert api("/api/traces?min_duration_ms=9223372036854")["traces"] == []
    assert api("/api/traces?min_cost=1e308")["traces"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/traces?limit=99999999999999999999",
        "/api/traces?limit=\u0661",
        "/api/traces?min_cost=inf",
        "/api/traces?limit=5&limit=6",
        "/api/traces?q=" + "x" * 1025,
        "/api/traces/" + "0" * 32 + "?max_chars=1e30",
        "/api/rollups?step_seconds=99999999999999999999",
        "/api/rollups?max_groups=nan",
        "/api/alerts?limit=1e308",
    ],
)
def test_other_numbers_out_of_range_are_400(server: ServerThread, path: str) -> None:
    name = path.split("?")[1].split("=")[0]
    _bad(server, urllib.parse.quote(path, safe="/?=&"), name)


def test_forged_cursors_are_400(server: ServerThread) -> None:
    for text in (f"{10**30}:{'a' * 32}", f"\u0661:{'a' * 32}", f"{2**63}:{'a' * 32}"):
        cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        _bad(server, f"/api/traces?cursor={cursor}", "cursor")


def test_times_past_what_the_tables_hold_are_clamped(data: WebDataset, api: Any) -> None:
    """until=9999-12-31 (and since=0001-01-01) mean 'no bound': clamped to the column type's range, which
    holds every stored row, so the answer is every trace, and says the range it used."""
    everything = [r.trace_id for r in current_records(data)]
    wide = api("/api/traces?limit=500&since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z")
    assert [t["trace_id"] for t in wide["traces"]] == everything
    assert (wide["since"], wide["until"]) == ("1900-01-01T00:00:00.000Z", "2262-04-11T23:47:16.854Z")
    assert [t["trace_id"] for t in api("/api/traces?limit=500&until=9999-12-31T23:59:59Z")["traces"]] == everything
    # rollups and services: DateTime and UInt32 seconds, 1970-01-01 to 2106-02-07
    spans = [s for t in data.traces.values() for s in t]
    for query in ("since=0001-01-01T00:00:00Z", "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
                  "since=1900-01-01T00:00:00Z&until=2200-01-01T00:00:00Z"):  # fmt: skip
        rollups = api(f"/api/rollups?{query}&kind=*&max_groups=50")
        assert rollups["since_s"] == 0 and 0 < rollups["until_s"] <= 2**32 - 1
        assert sum(s["calls"] for s in rollups["series"]) == len(spans)
    assert api("/api/rollups?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z")["until"].startswith("2106-02-07")
    services = api("/api/services?since=0001-01-01T00:00:00Z")
    assert services["since"] == "1970-01-01T00:00:00.000Z"
    assert {s["name"]: s["calls"] for s in services["services"]} == dict(Counter(s.service for s in spans))
    alerts = api("/api/alerts?since=0001-01-01T00:00:00Z")
    assert len(alerts["recent"]) == len(data.alerts)
    assert api("/api/alerts?since=9999-12-31T23:59:59Z")["recent"] == []
    # a range wholly beyond what the table holds is empty once clamped: a 400 that says so
    api("/api/traces?since=2300-01-01T00:00:00Z&until=2400-01-01T00:00:00Z", expect=400)
    api("/api/rollups?since=1800-01-01T00:00:00Z&until=1900-01-01T00:00:00Z", expect=400)


def test_clickhouse_down_or_schema_missing_is_503(clickhouse_url: str) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    for settings, code in (
        (Settings.from_env(clickhouse_url=f"http://127.0.0.1:{dead}"), "clickhouse_unavailable"),
        (Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database="no_such_db"), "schema_missing"),
    ):
        running = ServerThread(settings).start()
        try:
            status, body, _ = get(running.url, "/api/traces")
            assert status == 503, body
            assert body["error"]["code"] == code
            assert "Traceback" not in body["error"]["message"] and "Stack trace" not in body["error"]["message"]
            status, body, _ = get(running.url, "/api/traces/" + "a" * 32)
            assert status == 503 and body["error"]["code"] == code
        finally:
            running.stop()


# ---- rollups, alerts, services -----------------------------------------------------------------------


def test_rollups_match_the_spans(data: WebDataset, api: Any) -> None:
    answer = api("/api/rollups?since=1h&max_groups=50")
    assert answer["step_seconds"] == 60 and answer["groups_omitted"] == 0
    spans = [s for t in data.traces.values() for s in t if s.kind in ANALYSED]
    groups: dict[str, list[Span]] = {}
    for span in spans:
        groups.setdefault((span.llm.model if span.llm and span.llm.model else "") or span.kind, []).append(span)
    got = {s["group"]: s for s in answer["series"]}
    assert set(got) == set(groups)
    for group, members in groups.items():
        series = got[group]
        assert series["calls"] == len(members)
        assert series["errors"] == sum(s.status == "ERROR" for s in members)
        assert series["cost_usd"] == pytest.approx(sum(map(cost_of, members)), abs=1e-9)
        points = series["points"]
        assert [p["t"] for p in points] == sorted(p["t"] for p in points)
        assert all(p["t"] % 60 == 0 for p in points)
        for point in points:
            in_step = [s for s in members if point["t"] <= s.start_time_ns // 1_000_000_000 < point["t"] + 60]
            assert point["calls"] == len(in_step)
            longest = max(s.duration_ns for s in in_step) / 1e6
            assert point["max_ms"] == pytest.approx(longest, abs=0.001)
            assert 0 < point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"] <= longest + 0.001
    # busiest first; every kind and a coarser step
    assert [s["calls"] for s in answer["series"]] == sorted((s["calls"] for s in answer["series"]), reverse=True)
    every = api("/api/rollups?since=1h&by=service&kind=*&step_seconds=600")
    assert every["step_seconds"] == 600 and all(p["t"] % 600 == 0 for s in every["series"] for p in s["points"])
    assert sum(s["calls"] for s in every["series"]) == sum(len(t) for t in data.traces.values())
    top = api("/api/rollups?since=1h&max_groups=2")
    assert len(top["series"]) == 2 and top["groups_omitted"] == len(groups) - 2
    retrievers = api("/api/rollups?since=1h&kind=retriever&by=kind")
    assert [s["group"] for s in retrievers["series"]] == ["RETRIEVER"]


def test_rollups_pick_a_step_for_the_range(api: Any) -> None:
    assert api("/api/rollups?since=24h")["step_seconds"] == 600
    assert api("/api/rollups?since=7d")["step_seconds"] == 3600


def test_alerts(data: WebDataset, api: Any) -> None:
    answer = api("/api/alerts")
    assert [(a["rule"], a["service"], a["group"], a["severity"]) for a in answer["firing"]] == [
        ("error-rate", "search-api", "", "critical"),
        ("model-latency", "*", "gpt-4o", "info"),
    ]
    assert [(a["rule"], a["state"]) for a in answer["recent"]] == [
        (a.rule, a.state) for a in sorted(data.alerts, key=lambda a: float(a.fired_at), reverse=True)
    ]
    assert all(a["fired_at"].endswith("Z") for a in answer["recent"])
    assert len(api("/api/alerts?limit=1")["recent"]) == 1


def test_services(data: WebDataset, api: Any) -> None:
    answer = api("/api/services")
    spans = [s for t in data.traces.values() for s in t]
    assert {s["name"]: s["calls"] for s in answer["services"]} == dict(Counter(s.service for s in spans))
    assert {k["name"] for k in answer["kinds"]} == {s.kind for s in spans}
    assert {m["name"] for m in answer["models"]} == {s.llm.model for s in spans if s.llm and s.llm.model}


# ---- the OpenAPI document ----------------------------------------------------------------------------


def test_openapi_is_valid_and_covers_every_route(server: ServerThread, data: WebDataset) -> None:
    from openapi_spec_validator import validate

    status, spec, _ = get(server.url, "/api/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.1")
    validate(spec)
    assert spec == json.loads(json.dumps(build_openapi()))
    routes = {r.resource.canonical for r in create_app(data.settings).router.routes() if r.method in ("GET", "POST")}
    assert {p for p in routes if p.startswith("/api/")} == set(spec["paths"])


def test_openapi_gives_every_parameter_its_type_and_bounds_and_the_server_enforces_them(
    server: ServerThread,
) -> None:
    """The parameters come from the Structs the server reads queries into: every one has a type and a
    bound, and a value just past a documented bound is the 400 the document promises."""
    spec = build_openapi()
    seen = set()
    for template, operations in spec["paths"].items():
        base = template.replace("{trace_id}", "0" * 32).replace("{span_id}", "0" * 16).replace("{session_id}", "s")
        for parameter in operations.get("get", {}).get("parameters", []):  # POST scores: test_scores.py
            schema, name = parameter["schema"], parameter["name"]
            seen.add((template, name))
            assert parameter["description"] and schema["type"] in ("string", "integer", "number"), parameter
            if parameter["in"] == "path":
                assert "pattern" in schema
                continue
            if schema["type"] == "string":
                assert "maxLength" in schema or "enum" in schema, parameter
                _bad(server, f"{base}?{name}={'x' * (schema.get('maxLength', 8) + 1)}", name)
                continue
            assert "minimum" in schema and "maximum" in schema, parameter
            for value in (schema["minimum"] - 1, schema["maximum"] * 2 + 1):
                _bad(server, f"{base}?{name}={value:.17g}", name)
    assert ("/api/traces", "min_duration_ms") in seen and ("/api/rollups", "until") in seen
    assert ("/api/alerts", "since") in seen and ("/api/services", "since") in seen


def test_answers_match_their_openapi_schemas(server: ServerThread, data: WebDataset) -> None:
    """Every endpoint's real answer validates against the schema the document gives it."""
    spec = build_openapi()
    llm = next(s for s in trace_with(data, "LLM") if s.kind == "LLM")
    session = next(r.session_id for r in data.records.values() if r.session_id)
    cases = {
        "/api/traces": "/api/traces?limit=5",
        "/api/traces/{trace_id}": f"/api/traces/{llm.trace_id}",
        "/api/traces/{trace_id}/spans/{span_id}": f"/api/traces/{llm.trace_id}/spans/{llm.span_id}",
        "/api/rollups": "/api/rollups?since=1h",
        "/api/alerts": "/api/alerts",
        "/api/services": "/api/services",
        "/api/sessions": "/api/sessions",
        "/api/sessions/{session_id}": f"/api/sessions/{session}",
    }
    assert set(cases) | {"/api/openapi.json"} == {p for p, ops in spec["paths"].items() if "get" in ops}
    for template, path in cases.items():
        for status, url in ((200, path), (400, path.split("?")[0] + "?bogus=1")):
            got_status, body, _ = get(server.url, url)
            assert got_status == status
            schema = spec["paths"][template]["get"]["responses"][str(status)]["content"]["application/json"]["schema"]
            jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(body)


# ---- static files and the command --------------------------------------------------------------------


def test_ui_is_served_with_a_strict_policy(server: ServerThread) -> None:
    status, html, headers = get(server.url, "/")
    assert status == 200 and '<script type="module" src="/static/js/app.js">' in html
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, script, headers = get(server.url, "/static/js/waterfall.js")
    assert status == 200 and "export class Waterfall" in script
    assert "javascript" in headers["Content-Type"]


def test_tracehouse_web_command(data: WebDataset) -> None:
    """`tracehouse web --port 0` says where it listens, serves, and exits 0 on SIGTERM."""
    env = {**os.environ, "TRACEHOUSE_CLICKHOUSE_DATABASE": data.database}
    command = [sys.executable, "-m", "tracehouse.cli.main", "web", "--port", "0", "--clickhouse",
               data.settings.clickhouse_url]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "started on" not in line and time.monotonic() < deadline:
            line = process.stderr.readline() if process.stderr else ""
            if not line and process.poll() is not None:
                break
        assert line.startswith("tracehouse web started on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        status, answer, _ = get(url, "/api/traces?limit=1")
        assert status == 200 and len(answer["traces"]) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- the UI in a real browser ------------------------------------------------------------------------


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed: pip install playwright (no `playwright install` needed)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set TRACEHOUSE_CHROMIUM)")
    with sync_playwright() as playwright:  # the UI's CSP forbids eval: tests wait with locators, not JS strings
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.set_default_timeout(15_000)
    page.errors = errors
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page reported errors: {errors}"


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def test_browser_list_trace_waterfall_and_documents(
    page: Any, server: ServerThread, data: WebDataset, tmp_path: Path
) -> None:
    page.goto(f"{server.url}/#/traces")
    page.wait_for_selector("tr[data-trace-id]")
    shown = page.eval_on_selector_all("tr[data-trace-id]", "rows => rows.map(r => r.dataset.traceId)")
    assert shown == [r.trace_id for r in current_records(data)]
    spans = trace_with(data, "RETRIEVER")
    trace_id = spans[0].trace_id
    row = page.locator(f'tr[data-trace-id="{trace_id}"]')
    assert "rag_pipeline" in row.inner_text()

    row.click()
    page.wait_for_selector(".wf-row")
    assert page.url.endswith(f"#/trace/{trace_id}") or f"#/trace/{trace_id}?" in page.url
    rows = page.locator(".wf-row")
    assert rows.count() == len(spans)
    assert sorted(page.eval_on_selector_all(".wf-row", "rows => rows.map(r => r.dataset.spanId)")) == sorted(
        s.span_id for s in spans
    )
    # bars are placed on the timeline: the root's bar spans it, later spans start further right
    lefts = page.eval_on_selector_all(".wf-row .bar", "bars => bars.map(b => parseFloat(b.style.left))")
    trace_start = min(s.start_time_ns for s in spans)
    trace_ns = max(s.end_time_ns for s in spans) - trace_start
    expected = sorted(100 * (s.start_time_ns - trace_start) / trace_ns for s in spans)
    assert lefts[0] == 0 and max(lefts) > 5
    assert sorted(lefts) == pytest.approx(expected, abs=0.2)  # each bar where its span starts
    assert page.locator(".trace-head").inner_text().count(str(len(spans))) >= 1

    retriever = next(s for s in spans if s.kind == "RETRIEVER")
    page.locator('.wf-row[data-kind="RETRIEVER"]').click()
    page.wait_for_selector(".span-panel .doc")
    assert page.locator(".span-panel h2").inner_text() == retriever.name
    docs = page.locator(".span-panel .doc")
    assert docs.count() == len(retriever.documents)
    for i, document in enumerate(retriever.documents):
        text = docs.nth(i).inner_text()
        assert f"#{document.position}" in text and f"{document.score:.4f}" in text and document.id in text
    assert page.locator(".wf-row.selected").get_attribute("data-span-id") == retriever.span_id
    assert f"span={retriever.span_id}" in page.url
    page.screenshot(path=str(tmp_path / "trace-retriever.png"))
    page.screenshot(path=str(SCREENSHOT))

    # the keyboard moves the selection down the waterfall
    order = page.eval_on_selector_all(".wf-row", "rows => rows.map(r => r.dataset.spanId)")
    page.locator(".wf-body").focus()
    page.keyboard.press("ArrowDown")
    expected_next = order[order.index(retriever.span_id) + 1]
    expect(page.locator(".wf-row.selected")).to_have_attribute("data-span-id", expected_next)

    # the LLM span: parameters, messages, prompt template with its variables
    llm = next(s for s in spans if s.kind == "LLM")
    page.locator(f'.wf-row[data-span-id="{llm.span_id}"]').click()
    panel = page.locator(".span-panel")
    page.wait_for_selector(".span-panel .messages")
    text = panel.inner_text()
    assert "LLM PARAMETERS" in text.upper() and llm.llm.model in text and "PROMPT TEMPLATE" in text.upper()
    assert llm.prompt.name in text and llm.prompt.variables["question"] in text
    assert page.locator(".span-panel pre.template mark").count() == len(llm.prompt.variables)


def test_browser_exception_shows_its_stack(page: Any, server: ServerThread, data: WebDataset) -> None:
    spans = trace_with(data, "LLM", error=True)
    failed = next(s for s in spans if s.status == "ERROR" and s.events)
    page.goto(f"{server.url}/#/trace/{failed.trace_id}?span={failed.span_id}")
    page.wait_for_selector(".span-panel .exception")
    text = page.locator(".span-panel .exception").inner_text()
    assert failed.events[0].attributes["exception.type"] in text and "Traceback" in text
    assert page.locator(f'.wf-row.is-error[data-span-id="{failed.span_id}"] .bar.is-error').count() == 1


def test_browser_renders_a_thousand_span_trace_quickly(
    page: Any, server: ServerThread, data: WebDataset, tmp_path: Path
) -> None:
    page.goto(f"{server.url}/#/alerts")
    page.wait_for_selector(".alert-card")
    started = time.perf_counter()
    page.evaluate(f"location.hash = '#/trace/{BIG_TRACE_ID}'")
    page.wait_for_selector(".wf-row[data-span-id] .bar")
    page.wait_for_selector(".span-panel h2")
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"a 1,000-span trace took {elapsed:.2f}s to show"
    assert "1000 spans" in page.locator(".wf-name-head").inner_text()
    rendered = page.locator(".wf-row").count()
    assert 10 < rendered < 200, f"{rendered} rows in the DOM: the waterfall should draw only what is visible"
    # the last span is reachable by scrolling, and selectable
    page.eval_on_selector(".wf-body", "body => body.scrollTop = body.scrollHeight")
    last = data.traces[BIG_TRACE_ID][-1]
    page.locator(f'.wf-row[data-span-id="{last.span_id}"]').click()
    expect(page.locator(".span-panel h2")).to_have_text(last.name)
    # collapsing the root hides the other 999 rows
    page.eval_on_selector(".wf-body", "body => body.scrollTop = 0")
    page.locator('.wf-row[data-index="0"] .twisty').click()
    expect(page.locator(".wf-row")).to_have_count(1)
    # keyboard: next error selects the rate-limited call
    page.locator(".wf-tools button").click()
    page.wait_for_selector(".span-panel .exception")
    page.screenshot(path=str(tmp_path / "big-trace.png"))


def test_browser_filters_charts_and_alerts(page: Any, server: ServerThread, data: WebDataset, tmp_path: Path) -> None:
    page.goto(f"{server.url}/#/traces")
    page.wait_for_selector("tr[data-trace-id]")
    page.select_option("select[name=status]", "ERROR")
    errors = [r.trace_id for r in current_records(data) if r.status == "ERROR"]
    expect(page.locator("tr[data-trace-id]")).to_have_count(len(errors))
    assert page.eval_on_selector_all("tr[data-trace-id]", "rows => rows.map(r => r.dataset.traceId)") == errors
    assert "status=ERROR" in page.url
    page.wait_for_selector("select[name=service] option[value=support-bot]", state="attached")
    page.select_option("select[name=service]", "support-bot")
    wanted = [r.trace_id for r in current_records(data) if r.status == "ERROR" and "support-bot" in r.services]
    if wanted:
        expect(page.locator("tr[data-trace-id]")).to_have_count(len(wanted))
        assert page.eval_on_selector_all("tr[data-trace-id]", "rows => rows.map(r => r.dataset.traceId)") == wanted
    else:
        expect(page.locator(".traces-card .empty")).to_be_visible()
    assert "service=support-bot" in page.url

    page.goto(f"{server.url}/#/charts?since=1h")
    page.wait_for_selector(".chart-card svg")
    assert page.locator(".chart-card").count() == 7
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        assert page.locator(f'.chart-card[data-chart="{key}"] svg path').count() >= 1
    for key in ("calls", "errors", "total_tokens", "cost_usd"):
        assert page.locator(f'.chart-card[data-chart="{key}"] svg rect').count() >= 2
    legend = page.locator(".chart-legend").inner_text()
    assert "gpt-4o-mini" in legend and "RETRIEVER" in legend
    page.screenshot(path=str(tmp_path / "charts.png"))

    page.goto(f"{server.url}/#/alerts")
    page.wait_for_selector(".alert-card")
    cards = page.locator(".alert-card")
    assert cards.count() == 2
    assert "error-rate" in cards.nth(0).inner_text() and "critical" in cards.nth(0).inner_text().lower()
    assert page.locator("table.grid tbody tr").count() == len(data.alerts)
    assert page.locator("#firing-badge").inner_text() == "2"
    page.screenshot(path=str(tmp_path / "alerts.png"))


def test_browser_shows_api_errors(page: Any, server: ServerThread) -> None:
    page.goto(f"{server.url}/#/trace/{'0' * 32}")
    page.wait_for_selector(".error-box")
    assert "not found" in page.locator(".error-box").inner_text()
    page.errors.clear()  # the 404 the console logged is the point of this test
