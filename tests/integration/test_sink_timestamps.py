"""Spans with any timestamps, through the real path (SDK transport -> Kafka -> sink -> ClickHouse).

An exporter flushing a backlog sends one span a day over 150 days, in one trace, so in one Kafka message:
more partitions than ClickHouse takes in one insert block (100). The sink must cut its inserts by
partition, and store every one of them exactly once. A span from the year 2250 fits DateTime64(9) but is
refused (core/timestamps.py): it goes to the DLQ with the reason. With a TTL, spans older than it are
refused the same way. A valid 100-span batch sent right after them by another client is stored.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from dead_letters import read_dead_letters
from test_sink_dead_letters import SinkThread, start_group_at_end
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.schema import Span
from tracehouse.core.timestamps import DAY_NS, time_refusal, time_window
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.insert_blocks import Piece, split_by_partition
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.sink import Sink, SinkOptions

YEAR_2250_NS = 8_835_955_200 * 1_000_000_000  # 2250-01-01T00:00:00Z


def _span(trace_id: str, start_ns: int, run: str, name: str = "backlog") -> Span:
    return Span(
        trace_id=trace_id,
        span_id=os.urandom(8).hex(),
        name=name,
        start_time_ns=start_ns,
        end_time_ns=start_ns + 1_000_000,
        kind="LLM",
        service="timestamps-test",
        resource={"test.run": run},
    )


def _send(settings: Settings, spans: list[Span]) -> None:
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    assert transport.submit_many(spans) == len(spans)
    assert transport.flush(30)
    transport.shutdown()


@pytest.mark.parametrize("ttl_days", [None, 120], ids=["no-ttl", "ttl-120-days"])
def test_spans_over_150_days_and_from_2250_are_stored_or_refused_and_the_next_batch_lands(
    settings: Settings, ttl_days: int | None
) -> None:
    asyncio.run(migrate(settings.clickhouse, ttl_days=ttl_days))
    asyncio.run(start_group_at_end(settings))
    run = settings.sink_group
    now = time.time_ns()

    backlog_trace = os.urandom(16).hex()
    midnight = now - now % DAY_NS  # UTC: day d's span starts at 00:30 of the d-th day before today
    backlog = [_span(backlog_trace, midnight - day * DAY_NS + 1_800 * 1_000_000_000, run) for day in range(150)]
    future = _span(os.urandom(16).hex(), YEAR_2250_NS, run, name="from-2250")
    _send(settings, [*backlog, future])
    # Then another client's ordinary batch: 100 spans of now, in 20 traces.
    traces = [os.urandom(16).hex() for _ in range(20)]
    fresh = [_span(traces[i % 20], now + i * 1_000, run, name="fresh") for i in range(100)]
    _send(settings, fresh)

    kept = backlog if ttl_days is None else backlog[:ttl_days]  # the TTL keeps today and the N - 1 days before
    old = backlog[len(kept) :]
    expected = len(kept) + len(fresh)
    client = sync_client(settings.clickhouse)

    def stored() -> tuple[int, int, int]:
        rows, distinct, days = client.query(
            "SELECT count(), uniqExact(span_id), uniqExact(toDate(start_time)) FROM spans"
            " WHERE resource_attributes['test.run'] = {r:String}",
            parameters={"r": run},
        ).result_rows[0]
        return int(rows), int(distinct), int(days)

    with SinkThread(Sink(settings, SinkOptions(group_id=settings.sink_group, gc_freeze=False))) as sink:
        assert wait_until(lambda: stored()[0] >= expected, timeout=90), stored()
        time.sleep(1.0)  # a duplicate or a late refused row would have landed by now
        assert sink._partition_limit == 100  # read from the server
    rows, distinct, _ = stored()
    assert (rows, distinct) == (expected, expected)
    assert client.command(
        "SELECT uniqExact(toDate(start_time)) FROM spans WHERE trace_id = {t:String}", parameters={"t": backlog_trace}
    ) == len(kept)  # one partition per day, more than one insert block may hold
    assert client.command(
        "SELECT count() FROM spans WHERE has({ids:Array(String)}, span_id)",
        parameters={"ids": [s.span_id for s in kept + fresh]},
    ) == len(kept) + len(fresh)
    assert sink.stats.refused == 1 + len(old)
    # The split message's rows say which Kafka message they came from, and `ingest_offsets` claims it.
    offsets = client.query(
        "SELECT uniqExact(ingest_offset), max(ingest_offset) FROM spans WHERE trace_id = {t:String}",
        parameters={"t": backlog_trace},
    ).result_rows[0]
    assert int(offsets[1]) <= int(
        client.command(
            "SELECT max(max_offset) FROM ingest_offsets WHERE topic = {t:String}", parameters={"t": topics.SPANS}
        )
    )

    refused_ids = {s.span_id.encode(): s for s in [future, *old]}
    letters = asyncio.run(
        read_dead_letters(
            settings,
            lambda d: d.stage == "sink" and any(i in d.payload for i in refused_ids),
            expected=len(refused_ids),
        )
    )
    assert len(letters) == len(refused_ids)
    for letter in letters:
        assert letter.reason.startswith("time refused"), letter.reason
        assert letter.source_topic == topics.SPANS and letter.offset >= 0
        if future.span_id.encode() in letter.payload:
            assert "2250-01-01" in letter.reason and "after it was received" in letter.reason
        else:
            assert f"retention of {ttl_days} days" in letter.reason
    client.close()


def test_the_time_window_follows_the_ttl_and_refuses_the_far_future() -> None:
    received = 1_780_000_000 * 1_000_000_000 + 5 * 3_600 * 1_000_000_000  # 05:00 UTC
    midnight = received - received % DAY_NS
    no_ttl = time_window(received)
    assert time_refusal(946_684_800 * 1_000_000_000, received, no_ttl) is None  # the year 2000 is kept
    assert time_refusal(received, received + DAY_NS, no_ttl) is None  # a day of clock skew is kept
    assert "after it was received" in (time_refusal(YEAR_2250_NS, YEAR_2250_NS, no_ttl) or "")
    assert "after it was received" in (time_refusal(received, YEAR_2250_NS, no_ttl) or "")  # the end counts
    ttl = time_window(received, 30)
    assert time_refusal(midnight - 29 * DAY_NS, received, ttl) is None  # the TTL keeps today and 29 days back
    assert "retention of 30 days" in (time_refusal(midnight - 29 * DAY_NS - 1, received, ttl) or "")
    later = time_window(received, 30, now_ns=received + DAY_NS)  # stored a day after: the TTL runs on the clock
    assert time_refusal(midnight - 29 * DAY_NS, received, later) is not None


def test_inserts_are_cut_by_partition_in_read_order_and_a_split_message_is_claimed_by_its_last_piece() -> None:
    batch = Piece()
    for offset in range(3):  # three messages of one Kafka partition, 40 days each (120 in all)
        for day in range(40 * offset, 40 * offset + 40):
            batch.add(b'["x",0,%d]\n' % offset, 1, (0, offset), day)
    pieces = split_by_partition(batch, 100, offsets_in_rows=True)
    assert [sorted({o for o in p.origins}) for p in pieces] == [[(0, 0), (0, 1)], [(0, 2)]]
    assert all(len(set(p.keys)) <= 100 for p in pieces)

    one = Piece()
    for day in range(250):  # one message, offset 7, over 250 days
        one.add(b'["x",3,7]\n["y",3,7]\n', 2, (3, 7), day)
    pieces = split_by_partition(one, 100, offsets_in_rows=True)
    assert [len(set(p.keys)) for p in pieces] == [100, 100, 50]
    assert sum(sum(p.counts) for p in pieces) == 500
    assert all(c == b'["x",3,6]\n["y",3,6]\n' for p in pieces[:-1] for c in p.chunks)  # not yet claimed
    assert all(c == b'["x",3,7]\n["y",3,7]\n' for c in pieces[-1].chunks)
    assert split_by_partition(batch, 200, offsets_in_rows=True) == [batch]  # within the limit: as it is


def test_a_trace_outside_the_window_is_refused_with_its_reason_and_the_others_become_rows() -> None:
    from tracehouse.core.schema import TraceRecord, encode_traces
    from tracehouse.sinks.routes import traces_route

    def trace(start_ns: int) -> TraceRecord:
        return TraceRecord(
            os.urandom(16).hex(), 1, "root", "", "svc", ["svc"], start_ns, start_ns + 1000, 1000, 1, 0,
            0, 0, 0, 0, 0, 0.0, [], "", "", "OK", True, 0, "", "", 0,
        )  # fmt: skip

    now = time.time_ns()
    rows, rejected = traces_route().decode(encode_traces([trace(now), trace(YEAR_2250_NS)]), 0, 0, now)
    assert len(rows) == 1
    assert len(rejected) == 1 and rejected[0].refused and rejected[0].reason.startswith("time refused: the trace")
