"""Conversations as sessions and scores where people look, in the web explorer: `GET /api/sessions`,
`GET /api/sessions/{id}`, the latest scores on traces (list, header, span panel), the traces list's score
filter, their OpenAPI description, and in a real Chromium the sessions page and a thumbs-down posted from
the trace view.

The data is tests/web_dataset.py's (its three-turn conversation `CONVERSATION` with scores stored in
`scores`); the server runs for real (tests/web_server.py) with writes on for the browser test, so a
thumbs-down goes through Kafka and the sink's own route into `scores` before the page shows it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tracehouse.sinks.sink import Sink, SinkOptions
from tracehouse.web.app import create_app
from tracehouse.web.openapi import build_openapi
from tracehouse.web.writes import WEB_WRITE_TOKEN_ENV, WEB_WRITES_ENV, WebWrites

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import test_sink_dead_letters as sink_helpers
import test_web as web_tests
from web_dataset import CONVERSATION, CONVERSATION_USER, QUESTIONS, WebDataset, load
from web_server import ServerThread, get, run_cli


@pytest.fixture(scope="module")
def data(clickhouse_url: str) -> Iterator[WebDataset]:
    dataset = load(clickhouse_url, f"test_{uuid.uuid4().hex[:10]}", traces=12)
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


def sessions_of(data: WebDataset) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for record in data.records.values():
        if record.session_id:
            found.setdefault(record.session_id, []).append(record)
    return found


def test_sessions_list_newest_first_with_totals_and_latest_scores(data: WebDataset, api: Any) -> None:
    answer = api("/api/sessions?limit=500")
    expected = sessions_of(data)
    order = sorted(expected, key=lambda s: (max(r.start_time_ns for r in expected[s]), s), reverse=True)
    assert [s["session_id"] for s in answer["sessions"]] == order
    got = {s["session_id"]: s for s in answer["sessions"]}
    for session_id, records in expected.items():
        row = got[session_id]
        assert row["turns"] == len(records)
        assert row["total_tokens"] == sum(r.total_tokens for r in records)
        assert row["cost_usd"] == pytest.approx(sum(r.cost_usd for r in records))
        assert row["errors"] == sum(r.error_count for r in records)
    conv = got[CONVERSATION]
    assert (conv["turns"], conv["user_id"], conv["first_name"]) == (3, CONVERSATION_USER, "chat_turn")
    first, last = data.conversation[0][0], data.conversation[-1][0]
    assert conv["duration_ns"] == last.end_time_ns - first.start_time_ns
    latest = {s["name"]: s for s in conv["scores"]}
    # the newest user_feedback over the session is turn 2's change of mind
    assert (latest["user_feedback"]["value"], latest["user_feedback"]["label"]) == (0.0, "thumbs_down")
    assert latest["user_feedback"]["count"] == 3
    assert latest["correctness"]["label"] == "correct"

    only = api(f"/api/sessions?user_id={CONVERSATION_USER}")
    assert [s["session_id"] for s in only["sessions"]] == [CONVERSATION]


def test_sessions_page_by_cursor(data: WebDataset, api: Any) -> None:
    everything = [s["session_id"] for s in api("/api/sessions?limit=500")["sessions"]]
    assert len(everything) >= 3
    seen: list[str] = []
    cursor = ""
    while True:
        page = api(f"/api/sessions?limit=2{'&cursor=' + cursor if cursor else ''}")
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == everything


def test_session_is_the_conversation_in_order_with_inputs_outputs_and_scores(data: WebDataset, api: Any) -> None:
    answer = api(f"/api/sessions/{CONVERSATION}")
    assert (answer["session_id"], answer["user_id"], answer["turn_count"]) == (CONVERSATION, CONVERSATION_USER, 3)
    turns = answer["turns"]
    assert [t["trace_id"] for t in turns] == [turn[0].trace_id for turn in data.conversation]
    assert [(t["turn"], t["input"], t["output"]) for t in turns] == [
        (i, q, a) for i, (q, a) in enumerate(QUESTIONS, start=1)
    ]
    assert [t["total_tokens"] for t in turns] == [data.records[t["trace_id"]].total_tokens for t in turns]
    scores = [{s["name"]: (s["value"], s["label"]) for s in t["scores"]} for t in turns]
    assert scores == [
        {"user_feedback": (1.0, "thumbs_up")},
        {"user_feedback": (0.0, "thumbs_down")},
        {"correctness": (None, "correct")},
    ]
    assert turns[1]["scores"][0]["comment"] == "it said the old key stops at once"
    cut = api(f"/api/sessions/{CONVERSATION}?max_chars=5")["turns"][0]
    assert (cut["input"], cut["input_chars"]) == (QUESTIONS[0][0][:5], len(QUESTIONS[0][0]))
    # any text is a session id: quoted, it is a bound value, and an unknown one is a 404
    api(f"/api/sessions/{urllib.parse.quote('x/y' + chr(39) + ' OR 1=1 --', safe='')}", 404)


def test_trace_carries_its_latest_scores_for_the_header_and_the_span_panel(data: WebDataset, api: Any) -> None:
    second = api(f"/api/traces/{data.conversation[1][0].trace_id}")
    assert [(s["name"], s["value"], s["label"], s["count"]) for s in second["scores"]] == [
        ("user_feedback", 0.0, "thumbs_down", 2)
    ]
    assert second["span_scores"] == []
    third = data.conversation[2]
    answer = api(f"/api/traces/{third[0].trace_id}")
    assert [(s["name"], s["span_id"]) for s in answer["span_scores"]] == [("correctness", third[1].span_id)]
    assert [s["name"] for s in answer["scores"]] == ["correctness"]
    # scores a span carries (the SDK's add_score) reach `scores` too, and show the same way
    carried = next((spans for spans in data.traces.values() if any(s.scores for s in spans)), None)
    if carried is not None:
        detail = api(f"/api/traces/{carried[0].trace_id}")
        names = {sc.name for s in carried for sc in s.scores}
        assert names == {s["name"] for s in detail["scores"]} == {s["name"] for s in detail["span_scores"]}


def test_traces_list_has_a_score_column_and_filters_by_score(data: WebDataset, api: Any) -> None:
    def ids(query: str) -> set[str]:
        return {t["trace_id"] for t in api(f"/api/traces?limit=500&{query}")["traces"]}

    turn = [t[0].trace_id for t in data.conversation]
    listed = {t["trace_id"]: t for t in api("/api/traces?limit=500")["traces"]}
    assert [(s["name"], s["label"]) for s in listed[turn[1]]["scores"]] == [("user_feedback", "thumbs_down")]
    assert ids("score_name=user_feedback&score_label=thumbs_down") == {turn[1]}
    assert ids("score_name=user_feedback&score_max=0.5") == {turn[1]}  # its latest, not its first
    assert ids("score_name=user_feedback&score_min=0.5") == {turn[0]}
    assert ids("score_name=user_feedback") == {turn[0], turn[1]}
    assert ids("score_label=correct") == {turn[2]}
    assert ids("score_name=user_feedback&score_min=2") == set()
    assert ids(f"session_id={CONVERSATION}&score_name=user_feedback&score_min=0&score_max=1") == {turn[0], turn[1]}


@pytest.mark.parametrize(
    "path, name",
    [
        ("/api/sessions?limit=0", "limit"),
        ("/api/sessions?limit=501", "limit"),
        ("/api/sessions?since=yesterday", "since"),
        ("/api/sessions?cursor=bm9wZQ", "cursor"),
        ("/api/sessions?sesion=1", "sesion"),
        (f"/api/sessions/{CONVERSATION}?max_chars=-1", "max_chars"),
        (f"/api/sessions/{'x' * 1100}", "session id"),
        ("/api/traces?score_min=abc", "score_min"),
        ("/api/traces?score_max=1e16", "score_max"),
        ("/api/traces?score_label=" + "x" * 1025, "score_label"),
    ],
)
def test_bad_parameters_are_400s(server: ServerThread, path: str, name: str) -> None:
    status, body, _ = get(server.url, path)
    assert status == 400, body
    assert body["error"]["code"] == "bad_parameter" and name in body["error"]["message"]


def test_openapi_lists_the_session_endpoints_with_typed_bounded_parameters(server: ServerThread) -> None:
    spec = build_openapi()
    paths = spec["paths"]
    assert {"/api/sessions", "/api/sessions/{session_id}"} <= set(paths)
    listed = {p["name"]: p["schema"] for p in paths["/api/sessions"]["get"]["parameters"]}
    assert set(listed) == {"service", "user_id", "since", "until", "limit", "cursor"}
    assert (listed["limit"]["type"], listed["limit"]["minimum"], listed["limit"]["maximum"]) == ("integer", 1, 500)
    assert all("maxLength" in s for n, s in listed.items() if n != "limit")
    one = {p["name"]: p["schema"] for p in paths["/api/sessions/{session_id}"]["get"]["parameters"]}
    assert one["session_id"]["maxLength"] == 1024 and one["max_chars"]["maximum"] == 1_000_000
    traces = {p["name"]: p["schema"] for p in paths["/api/traces"]["get"]["parameters"]}
    assert traces["score_min"]["type"] == "number" and "minimum" in traces["score_min"]
    assert "maxLength" in traces["score_name"] and "maxLength" in traces["score_label"]


def test_session_answers_match_their_openapi_schemas(server: ServerThread, data: WebDataset) -> None:
    spec = build_openapi()
    cases = {
        "/api/sessions": "/api/sessions",
        "/api/sessions/{session_id}": f"/api/sessions/{CONVERSATION}",
        "/api/traces": "/api/traces?score_name=user_feedback",
        "/api/traces/{trace_id}": f"/api/traces/{data.conversation[2][0].trace_id}",
    }
    for template, path in cases.items():
        status, body, _ = get(server.url, path)
        assert status == 200
        schema = spec["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(body)
    status, body, _ = get(server.url, "/api/sessions/nobody-talked")
    assert status == 404 and json.dumps(body).count("not found") == 1


# ---- the terminal: tracehouse session ID --------------------------------------------------------------


def cli(data: WebDataset, *args: str, columns: int = 80) -> Any:
    return run_cli(data.settings, data.database, *args, columns=columns)


def test_cli_session_prints_the_conversation_in_order_within_80_columns(data: WebDataset) -> None:
    done = cli(data, "session", CONVERSATION)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert lines[0].startswith(f"session {CONVERSATION}") and CONVERSATION_USER in lines[0] and "3 turns" in lines[0]
    places = [out.index(q) for q, _ in QUESTIONS]
    assert places == sorted(places), "the turns are in order"
    for i, (question, answer) in enumerate(QUESTIONS, start=1):
        assert f"#{i} " in out and f"> {question}" in out and f"< {answer[:40]}" in out
    assert "user_feedback=1 (thumbs_up)" in out and "user_feedback=0 (thumbs_down)" in out
    assert "correctness=correct" in out
    assert out.index("thumbs_up") < out.index("thumbs_down") < out.index("correctness")


def test_cli_session_json_is_the_api_answer(data: WebDataset, api: Any) -> None:
    done = cli(data, "session", CONVERSATION, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == api(f"/api/sessions/{CONVERSATION}")
    done = cli(data, "session", "nobody-talked")
    assert done.returncode == 1 and "not found" in done.stderr and not done.stdout


# ---- the UI in a real browser (skips without Chromium and Playwright, fails under CI) ---------------------

# Fixtures shared with tests/integration/test_web.py. Tests name `data` and the server before `page`: the data is
# loaded with asyncio.run, which cannot run once Playwright's sync API holds the thread's event loop.
browser = web_tests.browser
page = web_tests.page
expect = web_tests.expect


@pytest.fixture(scope="module")
def writable(data: WebDataset, kafka_bootstrap: str) -> Iterator[ServerThread]:
    """The same data behind a server with writes on (`TRACEHOUSE_WEB_WRITES=1`), Kafka, and the sink
    storing what arrives on `tracehouse.scores` into the dataset's database."""
    tag = uuid.uuid4().hex[:10]
    settings = dataclasses.replace(data.settings, kafka_bootstrap=kafka_bootstrap, sink_group=f"sink-{tag}")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright may hold this thread's event loop
        pool.submit(asyncio.run, sink_helpers.start_group_at_end(settings)).result()
    sink = Sink(settings, SinkOptions(group_id=settings.sink_group, gc_freeze=False, flush_interval_s=0.2))
    writes = WebWrites.from_env({WEB_WRITES_ENV: "1"})
    with sink_helpers.SinkThread(sink):
        running = ServerThread(settings, app=lambda s, limits: create_app(s, limits, writes)).start()
        try:
            yield running
        finally:
            running.stop()


def test_browser_sessions_page_shows_the_conversation_and_links_to_each_waterfall(
    data: WebDataset, server: ServerThread, page: Any, tmp_path: Path
) -> None:
    page.goto(f"{server.url}/#/sessions")
    row = page.locator(f'tr[data-session-id="{CONVERSATION}"]')
    expect(row).to_contain_text(CONVERSATION_USER)
    row.click()
    page.wait_for_selector("article.turn")
    turns = page.locator("article.turn")
    expect(turns).to_have_count(3)
    assert page.eval_on_selector_all("article.turn", "ts => ts.map(t => t.dataset.traceId)") == [
        t[0].trace_id for t in data.conversation
    ]
    for i, (question, answer) in enumerate(QUESTIONS):
        text = turns.nth(i).inner_text()
        assert question in text and answer in text
    expect(turns.nth(1).locator(".score-chip")).to_contain_text("thumbs_down")
    page.screenshot(path=str(tmp_path / "session.png"))
    turns.nth(2).locator("a.trace-link").click()
    page.wait_for_selector(".wf-row")
    assert f"#/trace/{data.conversation[2][0].trace_id}" in page.url
    expect(page.locator(".trace-head .scores-stat")).to_contain_text("correctness correct")
    # the span the review is on shows it in its panel
    page.locator(f'.wf-row[data-span-id="{data.conversation[2][1].span_id}"]').click()
    expect(page.locator(".span-panel .span-scores")).to_contain_text("judge-v2")


def test_browser_traces_list_shows_and_filters_scores(data: WebDataset, server: ServerThread, page: Any) -> None:
    page.goto(f"{server.url}/#/traces?score_name=user_feedback&score_label=thumbs_down")
    page.wait_for_selector("tr[data-trace-id]")
    expect(page.locator("tr[data-trace-id]")).to_have_count(1)
    only = page.locator("tr[data-trace-id]")
    assert only.get_attribute("data-trace-id") == data.conversation[1][0].trace_id
    expect(only.locator(".score-chip")).to_have_text("user_feedback 0 (thumbs_down)")
    expect(page.locator("table.traces thead")).to_contain_text("Scores")
    assert page.input_value("input[name=score_label]") == "thumbs_down"


def test_browser_thumbs_down_read_only_says_how_to_enable_writes(
    data: WebDataset, server: ServerThread, page: Any
) -> None:
    page.goto(f"{server.url}/#/trace/{data.conversation[0][0].trace_id}")
    page.locator('button.thumb[data-label="thumbs_down"]').click()
    expect(page.locator(".feedback-status")).to_contain_text(WEB_WRITES_ENV)
    page.errors.clear()  # the 403 the console logged is the point of this test


def test_browser_posts_a_thumbs_down_and_shows_it(data: WebDataset, writable: ServerThread, page: Any) -> None:
    """The browser test of issue 15: a thumbs-down from the trace view lands in `scores` (Kafka, the sink)
    and the page shows it; the traces list then finds the trace by it."""
    turn = data.conversation[0][0]
    page.goto(f"{writable.url}/#/trace/{turn.trace_id}")
    chips = page.locator(".trace-head .scores-stat")
    expect(chips).to_contain_text("user_feedback 1 (thumbs_up)")
    page.fill(".feedback input[name=comment]", "the key is rotated elsewhere now")
    page.locator('button.thumb[data-label="thumbs_down"]').click()
    expect(page.locator(".feedback-status")).to_contain_text("Saved", timeout=30_000)
    # through Kafka and the sink into `scores`, then the header shows the latest
    expect(chips).to_contain_text("user_feedback 0 (thumbs_down)", timeout=60_000)
    stored = data.client.query(
        "SELECT value, label, comment, source FROM scores FINAL WHERE trace_id = {t:String} AND name = 'user_feedback'"
        " ORDER BY created_at", parameters={"t": turn.trace_id},
    ).result_rows  # fmt: skip
    assert stored[-1] == (0.0, "thumbs_down", "the key is rotated elsewhere now", "human") and len(stored) == 2
    page.goto(f"{writable.url}/#/traces?score_label=thumbs_down&session_id={CONVERSATION}")
    page.wait_for_selector("tr[data-trace-id]")
    expect(page.locator("tr[data-trace-id]")).to_have_count(2)


def test_browser_asks_for_the_write_token_once_and_keeps_it_for_the_tab(
    data: WebDataset, kafka_bootstrap: str, page: Any
) -> None:
    settings = dataclasses.replace(data.settings, kafka_bootstrap=kafka_bootstrap)
    writes = WebWrites.from_env({WEB_WRITE_TOKEN_ENV: "tab-token"})
    running = ServerThread(settings, app=lambda s, limits: create_app(s, limits, writes)).start()
    try:
        page.goto(f"{running.url}/#/trace/{data.conversation[2][0].trace_id}")
        page.locator('button.thumb[data-label="thumbs_up"]').click()
        expect(page.locator(".feedback .token-row")).to_be_visible()
        expect(page.locator(".feedback-status")).to_contain_text("Bearer")
        page.fill("input[name=write_token]", "tab-token")
        page.locator(".token-row button").click()
        page.locator('button.thumb[data-label="thumbs_up"]').click()
        expect(page.locator(".feedback-status")).to_contain_text("Saved", timeout=30_000)
        assert page.evaluate("sessionStorage.getItem('tracehouse.writeToken')") == "tab-token"
        page.reload()  # kept for the tab: the next score needs no token
        page.locator('button.thumb[data-label="thumbs_down"]').click()
        expect(page.locator(".feedback-status")).to_contain_text("Saved", timeout=30_000)
    finally:
        running.stop()
    page.errors.clear()  # the first try's 403 in the console is the point of this test
