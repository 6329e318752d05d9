"""Upgrading a database an older release left behind: version 1 only, with data, then `migrate` to latest.

The old database is built through the same code path users ran (`migrate(target_version=1)`), not by
hand-written DDL, so the test upgrades exactly what version 1 created. Version 2 adds `spans_minutely`
(per-minute aggregate states fed by a materialized view) and backfills it from the spans already stored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client
from span_rows import insert_span_rows

from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import Span
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.read.queries import QUERIES, run_query
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.ddl import LATEST_VERSION, MIGRATIONS
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, SpanRow, encode_rows, span_row

MINUTE_NS = 60 * 1_000_000_000


@pytest.fixture
def target_settings(clickhouse_url: str) -> Iterator[Settings]:
    """A database of its own on the session's ClickHouse (no Kafka needed), dropped afterwards."""
    settings = Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database=f"test_{uuid.uuid4().hex[:10]}")
    yield settings
    client = sync_client(settings.clickhouse, database=None)
    try:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")
    finally:
        client.close()


def _spans(seed: int, base_ns: int, traces: int) -> list[Span]:
    factory = TraceFactory(TrafficOptions(seed=seed, error_ratio=0.2))
    return [span for i in range(traces) for span in factory.any(base_ns + i * 7_000_000_000)]


def _insert(client: Client, spans: list[Span]) -> list[SpanRow]:
    prices = PriceTable()
    rows = [span_row(span, prices) for span in spans]
    insert_span_rows(client, rows)  # the table may be of an older version than the rows
    return rows


def _tables(client: Client, database: str) -> set[str]:
    result = client.query("SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": database})
    return {row[0] for row in result.result_rows}


Key = tuple[int, str, str, str, str]


def _expected(rows: list[SpanRow]) -> dict[Key, tuple[int, int, int, int]]:
    """(minute, service, kind, name, model) -> (calls, errors, input tokens, total tokens), from Python."""
    out: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in rows:
        seconds = int(row.start_time.split(".")[0])
        key = (seconds // 60 * 60, row.service, row.kind, row.name, row.model)
        acc = out[key]
        acc[0] += 1
        acc[1] += row.status == "ERROR"
        acc[2] += row.input_tokens
        acc[3] += row.total_tokens
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def _minutely(client: Client) -> dict[Key, tuple[int, int, int, int]]:
    result = client.query(
        "SELECT toUnixTimestamp(minute), service, kind, name, model, countMerge(calls), countIfMerge(errors),"
        " sumMerge(sum_input_tokens), sumMerge(sum_total_tokens) FROM spans_minutely"
        " GROUP BY minute, service, kind, name, model"
    )
    return {
        (int(r[0]), r[1], r[2], r[3], r[4]): (int(r[5]), int(r[6]), int(r[7]), int(r[8])) for r in result.result_rows
    }


def _fingerprint(client: Client) -> tuple:
    """Enough of `spans` to tell whether an upgrade touched the old rows."""
    return client.query(
        "SELECT count(), sum(cityHash64(trace_id, span_id, name, duration_ns, input, output, cost_usd,"
        " toString(documents), toString(events), toString(prompt_variables))) FROM spans"
    ).result_rows[0]


def test_target_version_must_exist(target_settings: Settings) -> None:
    with pytest.raises(ValueError, match="no schema version 99"):
        asyncio.run(migrate(target_settings.clickhouse, target_version=99))


def test_upgrade_from_version_1_keeps_the_data_and_fills_the_new_view(target_settings: Settings) -> None:
    assert LATEST_VERSION >= 2 and MIGRATIONS[1].version == 2
    target = target_settings.clickhouse
    database = target.database

    old = asyncio.run(migrate(target, target_version=1))
    assert old.applied == [1] and old.current_version == 1

    client = sync_client(target)
    try:
        assert "spans" in _tables(client, database)
        assert not {"spans_minutely", "spans_minutely_mv"} & _tables(client, database)
        base = (time.time_ns() // MINUTE_NS - 30) * MINUTE_NS
        old_rows = _insert(client, _spans(seed=101, base_ns=base, traces=60))
        before = _fingerprint(client)

        upgrade = asyncio.run(migrate(target))
        assert upgrade.applied == list(range(2, LATEST_VERSION + 1))
        assert upgrade.current_version == LATEST_VERSION
        versions = client.query("SELECT version FROM schema_migrations FINAL ORDER BY version").result_rows
        assert [v[0] for v in versions] == list(range(1, LATEST_VERSION + 1))
        assert {"spans_minutely", "spans_minutely_mv"} <= _tables(client, database)

        # the old rows are untouched, and the backfill aggregated exactly them
        assert _fingerprint(client) == before
        assert _minutely(client) == _expected(old_rows)

        # new inserts go through the view
        new_rows = _insert(client, _spans(seed=202, base_ns=base + 10 * MINUTE_NS, traces=60))
        assert _minutely(client) == _expected(old_rows + new_rows)

        # migrating again applies nothing and, in particular, does not backfill twice
        again = asyncio.run(migrate(target))
        assert again.applied == [] and again.current_version == LATEST_VERSION
        assert _minutely(client) == _expected(old_rows + new_rows)

        # the named query over the new table answers from both the backfilled and the view-fed minutes
        result = run_query(client, QUERIES["latency-by-minute"], {"since": "2h", "by": "kind", "kind": "LLM"})
        calls = sum(row[result.column_names.index("calls")] for row in result.result_rows)
        assert calls == sum(1 for row in old_rows + new_rows if row.kind == "LLM")
    finally:
        client.close()


def test_a_span_stored_twice_counts_once_in_the_charts(target_settings: Settings) -> None:
    """An exporter's retry stores a span twice (another Kafka offset, another insert, or the same insert):
    `spans_minutely`, which the charts and `latency-by-minute` read, counts it once (migration 4)."""
    target = target_settings.clickhouse
    asyncio.run(migrate(target))
    client = sync_client(target)
    try:
        base = (time.time_ns() // MINUTE_NS - 20) * MINUTE_NS
        prices = PriceTable()
        spans = _spans(seed=303, base_ns=base, traces=40)
        first = [span_row(span, prices, 0, 10) for span in spans]
        _insert_rows(client, first)
        # the retry: the same spans at a later offset, in a later insert
        _insert_rows(client, [span_row(span, prices, 0, 11) for span in spans])
        # twins inside one insert, one of them already stored
        more = _spans(seed=404, base_ns=base + 5 * MINUTE_NS, traces=10)
        twins = [span_row(span, prices, 0, 12) for span in more]
        _insert_rows(client, [*twins, *twins, first[0]])

        assert _minutely(client) == _expected(first + twins)
        result = run_query(client, QUERIES["latency-by-minute"], {"since": "2h", "by": "kind", "kind": "LLM"})
        calls = sum(row[result.column_names.index("calls")] for row in result.result_rows)
        assert calls == sum(1 for row in first + twins if row.kind == "LLM") > 0
        # `spans` itself still holds every copy until a merge collapses them; the charts do not wait for it
        assert client.command("SELECT count() FROM spans") == 2 * len(first) + 2 * len(twins) + 1
    finally:
        client.close()


def _insert_rows(client: Client, rows: list[SpanRow]) -> None:
    client.raw_insert("spans", SPAN_COLUMNS, encode_rows(rows), fmt=SPAN_FORMAT, settings={"optimize_on_insert": 0})
