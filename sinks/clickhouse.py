"""One way to reach ClickHouse: over HTTP with clickhouse-connect, embedded server and production alike."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.client import Client

from tracehouse.core.config import ClickHouseTarget


async def async_client(target: ClickHouseTarget, *, database: str | None = "", **kwargs: Any) -> AsyncClient:
    """An async client; `database=""` means the target's database, None means none (for CREATE DATABASE)."""
    db = target.database if database == "" else database
    return await clickhouse_connect.get_async_client(
        **target.client_kwargs(),
        database=db or "__default__",
        compress=kwargs.pop("compress", "lz4"),
        **kwargs,
    )


def sync_client(target: ClickHouseTarget, *, database: str | None = "", **kwargs: Any) -> Client:
    """A sync client, for scripts and tests that are not async."""
    db = target.database if database == "" else database
    return clickhouse_connect.get_client(
        **target.client_kwargs(),
        database=db or "__default__",
        compress=kwargs.pop("compress", "lz4"),
        **kwargs,
    )
