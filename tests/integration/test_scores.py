"""Scores after the fact, through every way in, on the real Kafka and the real ClickHouse engine.

The receiver (`POST /v1/scores`, in process in front of real acknowledged senders), the SDK (`score()` and
`add_score` inside a span, through the real Kafka transport) and the web explorer (`POST
/api/traces/{id}/scores`, served for real) each send scores; the sink's own code runs on a thread and
writes them to `scores`. Every score must be there exactly once (read with FINAL), also when the same
score_id was sent twice; a bad item must be a 400 naming the field with nothing of its request stored; a
bad record on the topic goes to the DLQ; web writes are refused unless enabled and when cross-site.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import test_sink_dead_letters as sink_helpers
from aiokafka import AIOKafkaProducer
from clickhouse_connect.driver.client import Client
from dead_letters import read_dead_letters
from waiting import wait_until
from web_server import ServerThread, get

from tracehouse.cli.trace_view import show_trace
from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.partitioning import partition_for
from tracehouse.core.scores import Score, ScoreBatch, new_score_id
from tracehouse.producers import configure, current_trace_id, score, set_tracer, span
from tracehouse.producers.acked_sender import AckedSpanSender
from tracehouse.producers.ids import new_trace_id
from tracehouse.producers.otlp import BackgroundReceiver, ReceiverOptions
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.ddl import LATEST_VERSION
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.sink import Sink, SinkOptions
from tracehouse.web.app import Limits, create_app
from tracehouse.web.writes import WebWrites

pytestmark = [pytest.mark.timeout(240)]

TOKEN = "scores-test-token"
COLUMNS = "score_id, trace_id, span_id, name, value, label, comment, source, author, ingest_partition"


@pytest.fixture
def stored(settings: Settings) -> Iterator[Client]:
    """A migrated database of this test's own, with the sink running on it (from the end of the span
    topics: earlier tests' spans are not this test's business; scores from the start, they are few)."""
    asyncio.run(migrate(settings.clickhouse))
    asyncio.run(sink_helpers.start_group_at_end(settings))
    client = sync_client(settings.clickhouse)
    sink = Sink(settings, SinkOptions(group_id=settings.sink_group, gc_freeze=False, flush_interval_s=0.2))
    with sink_helpers.SinkThread(sink):
        yield client
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")
    client.close()


def rows_of(client: Client, trace_ids: list[str], final: bool = True) -> list[dict[str, Any]]:
    result = client.query(
        f"SELECT {COLUMNS} FROM scores {'FINAL' if final else ''} WHERE has({{t:Array(String)}}, trace_id)"
        " ORDER BY trace_id, name, score_id",
        parameters={"t": trace_ids},
    )
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def landed(client: Client, trace_ids: list[str], expected: int) -> list[dict[str, Any]]:
    """The scores of `trace_ids` once `expected` of them are stored, and a moment later (a duplicate
    would have landed by then)."""
    assert wait_until(lambda: len(rows_of(client, trace_ids)) >= expected, timeout=90), rows_of(client, trace_ids)
    time.sleep(1.5)
    return rows_of(client, trace_ids)


def post_scores(
    url: str, body: bytes, token: str | None = TOKEN, content_type: str = "application/json"
) -> tuple[int, Any]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("POST", "/v1/scores", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


# ---- the receiver -------------------------------------------------------------------------------------


def test_receiver_scores_land_once_and_a_bad_item_stores_nothing(settings: Settings, stored: Client) -> None:
    trace_a, trace_b, trace_bad = new_trace_id(), new_trace_id(), new_trace_id()
    fixed = new_score_id()
    good = {
        "scores": [
            {"trace_id": trace_a, "name": "user_feedback", "value": 0, "label": "thumbs_down", "comment": "wrong date",
             "score_id": fixed, "author": "user-7"},
            {"trace_id": trace_a, "span_id": "ab" * 8, "name": "hallucination", "value": 1, "source": "eval"},
            {"trace_id": trace_b, "name": "rating", "value": 4.5},
        ]
    }  # fmt: skip
    sender = AckedSpanSender(settings.kafka_bootstrap, client_id="scores-test")
    with BackgroundReceiver(sender, ReceiverOptions(tokens=(TOKEN,))) as receiver:
        url = receiver.url
        assert wait_until(lambda: receiver.receiver.score_sender.connected, timeout=30)
        status, answer = post_scores(url, json.dumps(good).encode())
        assert status == 200, answer
        assert answer["accepted"] == 3 and answer["score_ids"][0] == fixed
        # the same score_id again (a client's retry): answered 200, stored once
        again = {"scores": [good["scores"][0]]}
        assert post_scores(url, json.dumps(again).encode()) == (200, {"accepted": 1, "score_ids": [fixed]})

        # a bad item: 400 naming its index and field; the good item before it is not stored either
        for item, says in (
            ({"trace_id": trace_bad, "name": "x", "value": "high"}, "scores[1].value"),
            ({"trace_id": trace_bad, "name": "x"}, "scores[1].value"),  # neither value nor label
            ({"trace_id": trace_bad.upper(), "name": "x", "value": 1}, "scores[1].trace_id"),
            ({"trace_id": trace_bad, "name": "", "value": 1}, "scores[1].name"),
            ({"trace_id": trace_bad, "name": "x", "value": 1, "source": "robot"}, "scores[1].source"),
            ({"trace_id": trace_bad, "name": "x", "value": 1, "vaule": 2}, "scores[1].vaule"),
            ({"trace_id": trace_bad, "name": "x", "label": "y" * 300}, "scores[1].label"),
        ):
            body = {"scores": [{"trace_id": trace_bad, "name": "fine", "value": 1}, item]}
            status, answer = post_scores(url, json.dumps(body).encode())
            assert status == 400 and answer["message"].startswith(says), (item, answer)
        assert post_scores(url, b'{"scores": [{"trace_id": "' + trace_bad.encode() + b'", "value": 1e999}]}')[0] == 400
        assert post_scores(url, b"not json")[0] == 400
        assert post_scores(url, b'{"scores": []}')[0] == 400
        # the same auth as /v1/traces, JSON only
        assert post_scores(url, json.dumps(good).encode(), token=None)[0] == 401
        assert post_scores(url, json.dumps(good).encode(), token="wrong")[0] == 401
        assert post_scores(url, json.dumps(good).encode(), content_type="text/plain")[0] == 415
        health = get(url, "/health")[1]
        assert health["receiver"]["scores_accepted"] == 4 and health["scores"]["sender"]["acknowledged"] >= 4

    rows = landed(stored, [trace_a, trace_b], 3)
    assert len(rows) == 3, rows
    assert len(rows_of(stored, [trace_a, trace_b], final=False)) in (3, 4)  # the twin, until a merge
    by_name = {r["name"]: r for r in rows}
    feedback = by_name["user_feedback"]
    assert (feedback["score_id"], feedback["value"], feedback["label"], feedback["source"]) == (
        fixed, 0.0, "thumbs_down", "api"
    )  # fmt: skip
    assert (feedback["comment"], feedback["author"]) == ("wrong date", "user-7")
    assert (by_name["hallucination"]["span_id"], by_name["hallucination"]["source"]) == ("ab" * 8, "eval")
    assert by_name["rating"]["value"] == 4.5 and by_name["rating"]["label"] == ""
    for row in rows:  # in the partition of the trace's spans
        assert row["ingest_partition"] == partition_for(row["trace_id"], settings.spans_partitions)
    assert rows_of(stored, [trace_bad]) == []


def test_a_bad_record_on_the_topic_goes_to_the_dlq_and_its_neighbours_land(settings: Settings, stored: Client) -> None:
    """What no way in would send (a producer of another make): the sink dead-letters the bad score with its
    reason and stores the good one of the same message."""
    trace_id = new_trace_id()
    good = Score(trace_id=trace_id, name="kept", value=1.0)
    bad = Score(trace_id=trace_id, name="refused", value=1.0)
    bad.span_id = "not-hex"  # built in code, never validated: the record's rules apply at the sink
    value = msgspec.msgpack.encode(ScoreBatch([good, bad]))

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.SCORES, value, key=trace_id.encode())
            await producer.send_and_wait(topics.SCORES, b"\x93not a batch", key=trace_id.encode())
        finally:
            await producer.stop()

    asyncio.run(produce())
    rows = landed(stored, [trace_id], 1)
    assert [r["name"] for r in rows] == ["kept"]
    letters = asyncio.run(
        read_dead_letters(
            settings,
            lambda d: d.source_topic == topics.SCORES and (b"not-hex" in d.payload or d.payload == b"\x93not a batch"),
            expected=2,
        )
    )
    reasons = sorted(letter.reason for letter in letters)
    assert any(r.startswith("invalid score: span_id") for r in reasons), reasons
    assert any("not a score batch" in r for r in reasons), reasons


# ---- the SDK --------------------------------------------------------------------------------------------


def test_sdk_scores_and_scores_inside_spans_land_once(
    settings: Settings, stored: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    tracer = configure(
        service=f"scores-sdk-{uuid.uuid4().hex[:6]}", bootstrap=settings.kafka_bootstrap, set_global=False
    )
    previous = set_tracer(tracer)
    try:
        with span("answer", kind="CHAIN") as live:
            trace_id = current_trace_id()
            assert trace_id == live.trace_id
            live.add_score("relevance", 0.8, source="llm_judge", comment="on topic")
        assert current_trace_id() is None
        fixed = new_score_id()
        first = score(trace_id=trace_id, name="user_feedback", value=1, label="thumbs_up", score_id=fixed)
        twin = score(trace_id=trace_id, name="user_feedback", value=1, label="thumbs_up", score_id=fixed)
        assert first is not None and twin is not None and first.score_id == twin.score_id == fixed
        other = score(trace_id=trace_id, span_id=live.span_id, name="eval_accuracy", value=0.25, source="eval")
        assert other is not None
        with pytest.raises(ValueError, match="value"):
            score(trace_id=trace_id, name="nothing")
        with pytest.raises(ValueError, match="trace_id"):
            score(name="no trace", value=1)
        assert tracer.flush(30)
        assert tracer.transport.score_stats.sent == 3  # type: ignore[union-attr]
    finally:
        set_tracer(previous)
        tracer.shutdown(10)

    rows = landed(stored, [trace_id], 3)
    assert len(rows) == 3, rows
    by_name = {r["name"]: r for r in rows}
    assert by_name["user_feedback"]["score_id"] == fixed and by_name["user_feedback"]["source"] == "sdk"
    assert (by_name["eval_accuracy"]["source"], by_name["eval_accuracy"]["span_id"]) == ("eval", live.span_id)
    in_span = by_name["relevance"]  # from the span, through the view
    assert (in_span["source"], in_span["author"], in_span["value"], in_span["comment"]) == (
        "sdk", "llm_judge", 0.8, "on topic"
    )  # fmt: skip
    assert in_span["span_id"] == live.span_id and len(in_span["score_id"]) == 32

    # `tracehouse trace ID --json` (the API's trace) shows them: the latest per name, and how many
    assert wait_until(lambda: stored.command("SELECT count() FROM spans WHERE trace_id = {t:String}",
                                             parameters={"t": trace_id}) == 1, timeout=60)  # fmt: skip
    capsys.readouterr()
    assert show_trace(settings, trace_id, as_json=True) == 0
    shown = {(s["name"], s["source"]): s for s in json.loads(capsys.readouterr().out)["scores"]}
    assert set(shown) == {("relevance", "sdk"), ("user_feedback", "sdk"), ("eval_accuracy", "eval")}
    feedback = shown[("user_feedback", "sdk")]
    assert (feedback["count"], feedback["value"], feedback["label"]) == (1, 1.0, "thumbs_up")


# ---- the web explorer -----------------------------------------------------------------------------------


def _serve(settings: Settings, writes: WebWrites) -> ServerThread:
    return ServerThread(settings, app=lambda s, limits: create_app(s, limits, writes)).start()


def test_web_scores_need_writes_enabled_and_land_once(settings: Settings, stored: Client) -> None:
    trace_id = new_trace_id()
    path = f"/api/traces/{trace_id}/scores"
    json_type = {"Content-Type": "application/json"}
    thumbs_down = json.dumps({"name": "user_feedback", "value": 0, "label": "thumbs_down", "comment": "wrong"}).encode()

    off = _serve(settings, WebWrites.from_env({}))
    try:
        status, body, _ = get(off.url, path, "POST", body=thumbs_down, headers=json_type)
        assert status == 403 and body["error"]["code"] == "writes_disabled"
        assert "TRACEHOUSE_WEB_WRITES=1" in body["error"]["message"]
        assert "TRACEHOUSE_WEB_WRITE_TOKEN" in body["error"]["message"]
    finally:
        off.stop()

    on = _serve(settings, WebWrites.from_env({"TRACEHOUSE_WEB_WRITE_TOKEN": TOKEN}))
    auth = {**json_type, "Authorization": f"Bearer {TOKEN}"}
    try:
        status, body, _ = get(on.url, path, "POST", body=thumbs_down, headers=json_type)
        assert status == 403 and body["error"]["code"] == "write_token_required"
        # another site's page, even with the token, and even a "simple" same-origin form post
        for headers in (
            {**auth, "Origin": "http://evil.example"},
            {**auth, "Sec-Fetch-Site": "cross-site"},
            {**auth, "Origin": on.url, "Content-Type": "text/plain"},
        ):
            status, body, _ = get(on.url, path, "POST", body=thumbs_down, headers=headers)
            assert status == 403 and body["error"]["code"] == "cross_site_refused", (headers, body)
        # bad bodies: 400 naming the field
        for bad, says in (
            ({"value": "low"}, "value"),
            ({"name": ""}, "name"),
            ({"name": "x"}, "value"),  # neither value nor label
            ({"value": 1, "stars": 5}, "stars"),
            ({"value": 1, "span_id": "xyz"}, "span_id"),
        ):
            status, body, _ = get(on.url, path, "POST", body=json.dumps(bad).encode(), headers=auth)
            assert status == 400 and body["error"]["message"].startswith(says), (bad, body)
        status, body, _ = get(on.url, "/api/traces/nothex/scores", "POST", body=thumbs_down, headers=auth)
        assert status == 400 and "trace id" in body["error"]["message"]

        # the page's own thumbs-down (same origin, JSON), then the same score_id twice
        status, first, _ = get(on.url, path, "POST", body=thumbs_down, headers={**auth, "Origin": on.url})
        assert status == 200 and first["trace_id"] == trace_id and len(first["score_id"]) == 32, first
        fixed = new_score_id()
        twice = json.dumps({"name": "review", "label": "correct", "score_id": fixed, "author": "ana"}).encode()
        for _ in range(2):
            status, answer, _ = get(on.url, path, "POST", body=twice, headers=auth)
            assert (status, answer) == (200, {"score_id": fixed, "trace_id": trace_id})
    finally:
        on.stop()

    rows = landed(stored, [trace_id], 2)
    assert len(rows) == 2, rows
    assert {r["source"] for r in rows} == {"human"}
    by_name = {r["name"]: r for r in rows}
    assert (by_name["user_feedback"]["value"], by_name["user_feedback"]["comment"]) == (0.0, "wrong")
    assert (by_name["review"]["score_id"], by_name["review"]["value"], by_name["review"]["author"]) == (
        fixed, None, "ana"
    )  # fmt: skip


def test_web_writes_flag_without_a_token() -> None:
    writes = WebWrites.from_env({"TRACEHOUSE_WEB_WRITES": "1"})
    assert writes.enabled and not writes.tokens
    assert not WebWrites.from_env({"TRACEHOUSE_WEB_WRITES": "0"}).enabled
    assert WebWrites.from_env({"TRACEHOUSE_WEB_WRITES": "1", "TRACEHOUSE_WEB_WRITE_TOKEN": "a,b"}).tokens == ("a", "b")
    assert Limits().max_body_bytes > 0


# ---- the schema ------------------------------------------------------------------------------------------


def test_migrate_upgrades_to_scores_and_backfills_the_scores_spans_carry(clickhouse_url: str) -> None:
    """A database version 2 left, holding spans with scores: migrate adds `scores` and copies those scores
    once (again: nothing changes); spans stored afterwards reach it through the view, a span stored twice
    still counts once."""
    from span_rows import insert_span_rows

    from tracehouse.core.pricing import PriceTable
    from tracehouse.producers.traffic import TraceFactory, TrafficOptions
    from tracehouse.sinks.rows import span_row

    settings = Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database=f"test_{uuid.uuid4().hex[:10]}")
    target = settings.clickhouse
    old = asyncio.run(migrate(target, target_version=2))
    assert old.current_version == 2
    client = sync_client(target)
    factory = TraceFactory(TrafficOptions(seed=5))
    base = time.time_ns() - 3_600_000_000_000
    spans = [s for i in range(40) for s in factory.any(base + i * 1_000_000_000)]
    in_spans = sum(len(s.scores) for s in spans)
    assert in_spans > 0

    def insert(batch: list[Any]) -> None:
        rows = [span_row(s, PriceTable(), partition=1, offset=i) for i, s in enumerate(batch)]
        insert_span_rows(client, rows)  # the table may be of an older version than the rows

    def count() -> int:
        return int(client.command("SELECT count() FROM scores FINAL"))

    try:
        insert(spans[:100])
        assert "scores" not in {r[0] for r in client.query("SHOW TABLES").result_rows}
        upgrade = asyncio.run(migrate(target))
        assert upgrade.applied == list(range(3, LATEST_VERSION + 1)) and upgrade.current_version == LATEST_VERSION
        before = sum(len(s.scores) for s in spans[:100])
        assert count() == before
        assert asyncio.run(migrate(target)).applied == []
        assert count() == before
        insert(spans[100:])
        insert(spans[100:])  # a span stored twice: its scores once
        assert count() == in_spans
        sources = client.query("SELECT DISTINCT source, author FROM scores").result_rows
        assert sources == [("sdk", "llm_judge")]
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{target.database}`")
        client.close()
