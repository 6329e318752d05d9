"""Commands that read ClickHouse; they work whether or not the stack runs (the embedded server is
started on the local data for the command's own use when nothing answers at the URL)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from clickhouse_connect.driver.client import Client

from tracehouse.core.config import Settings
from tracehouse.sinks.clickhouse import sync_client


@contextlib.contextmanager
def clickhouse_for_reading(settings: Settings) -> Iterator[Client]:
    """A client at the configured URL, starting the embedded server there if nothing answers."""
    from tracehouse.infra.clickhouse.launcher import ensure_clickhouse

    embedded = ensure_clickhouse(settings.clickhouse_url, settings.clickhouse_data_dir)
    try:
        client = sync_client(settings.clickhouse)
        try:
            yield client
        finally:
            client.close()
    finally:
        if embedded is not None:
            embedded.stop()


_OWN_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)


def run_sql(settings: Settings, sql: str) -> int:
    """Print the result in the statement's own FORMAT, else as a readable table; a failure is one line
    on stderr with the likely fix (exit 1), as for the other reading commands."""
    from tracehouse.cli.query import clickhouse_errors, guarded

    def go() -> int:
        with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:
            fmt = None if _OWN_FORMAT.search(sql) else "PrettyCompactMonoBlock"
            result = client.raw_query(sql, fmt=fmt)
        print(result.decode(errors="replace"), end="")
        return 0

    return guarded(go)
