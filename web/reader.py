"""Reading ClickHouse for the web API: one shared async client running the read side's named queries
(tracehouse.read.queries, the same SQL the terminal runs), with bound parameters only: nothing a request
carries is ever formatted into SQL text.

The client is created on first use, not at startup, so the server starts (and answers 503 with the
reason) while ClickHouse is still down, and recovers by itself when it comes back. clickhouse-connect's
async client does its HTTP on the event loop; with no session id, concurrent requests share it safely.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core.config import Settings
from tracehouse.read.queries import NamedQuery
from tracehouse.sinks.clickhouse import async_client


class Reader:
    """The API's access to ClickHouse; one per application."""

    def __init__(self, settings: Settings, *, timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> AsyncClient:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await async_client(
                        self.settings.clickhouse,
                        autogenerate_session_id=False,
                        connect_timeout=5,
                        send_receive_timeout=self.timeout_s,
                    )
        return self._client

    async def rows(self, query: NamedQuery, values: dict[str, Any]) -> list[dict[str, Any]]:
        """The query's rows as dicts; raises ValueError (before ClickHouse) for a parameter it does not take."""
        parameters = query.bind(values)
        client = await self.client()
        result = await client.query(query.sql, parameters=parameters)
        columns = result.column_names
        return [dict(zip(columns, row, strict=True)) for row in result.result_rows]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
