"""`tracehouse migrate` on the real engine: creates the schema, and running it again changes nothing."""

from __future__ import annotations

import asyncio

from tracehouse.core.config import Settings
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.ddl import LATEST_VERSION
from tracehouse.sinks.migrate import migrate

CONTRACT_COLUMNS = {
    "spans": {
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "service",
        "start_time",
        "end_time",
        "duration_ns",
        "status",
        "status_message",
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_usd",
        "input",
        "output",
        "attributes",
        "events",
        "documents",
        "prompt_template",
        "prompt_version",
        "prompt_variables",
        "temperature",
        "max_tokens",
        "top_p",
        "system_prompt",
        "scores",
        "session_id",
        "user_id",
        "tags",
    },
    "traces": {
        "trace_id",
        "root_name",
        "service",
        "start_time",
        "end_time",
        "duration_ns",
        "span_count",
        "error_count",
        "total_tokens",
        "cost_usd",
        "session_id",
        "user_id",
        "status",
    },
    "rollups": {
        "window_start",
        "window_seconds",
        "service",
        "kind",
        "name",
        "model",
        "count",
        "error_count",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    },
    "alerts": {"fired_at", "rule", "service", "severity", "value", "threshold", "state", "message"},
}


def test_migrate_creates_the_contract_schema_and_is_idempotent(settings: Settings) -> None:
    first = asyncio.run(migrate(settings.clickhouse))
    assert first.applied == list(range(1, LATEST_VERSION + 1))
    second = asyncio.run(migrate(settings.clickhouse))
    assert second.applied == [] and second.current_version == LATEST_VERSION

    client = sync_client(settings.clickhouse)
    try:
        for table, expected in CONTRACT_COLUMNS.items():
            columns = {
                row[0]
                for row in client.query(
                    "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                    parameters={"db": settings.clickhouse.database, "t": table},
                ).result_rows
            }
            assert expected <= columns, f"{table} lacks {sorted(expected - columns)}"
        types = dict(
            client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'spans'",
                parameters={"db": settings.clickhouse.database},
            ).result_rows
        )
        assert types["start_time"] == "DateTime64(9)"
        assert types["kind"] == "LowCardinality(String)"
        versions = client.query("SELECT count() FROM schema_migrations FINAL").result_rows[0][0]
        assert versions == LATEST_VERSION
    finally:
        client.close()
