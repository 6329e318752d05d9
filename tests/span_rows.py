"""Span rows into a `spans` table of any schema version: tests that upgrade an old database store rows made
by today's sink into yesterday's table, which lacks the columns later migrations added."""

from __future__ import annotations

from typing import Any

import msgspec
from clickhouse_connect.driver.client import Client

from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, SpanRow

_json = msgspec.json.Encoder()


def insert_span_rows(client: Client, rows: list[SpanRow], **kwargs: Any) -> None:
    """Insert `rows` into `spans`, only the columns the table has (all of them on the latest schema)."""
    present = {
        row[0]
        for row in client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'spans'"
        ).result_rows
    }
    columns = [name for name in SPAN_COLUMNS if name in present]
    indexes = [SPAN_COLUMNS.index(name) for name in columns]
    body = _json.encode_lines([[row[i] for i in indexes] for row in map(msgspec.structs.astuple, rows)])
    client.raw_insert("spans", columns, body, fmt=SPAN_FORMAT, **kwargs)
