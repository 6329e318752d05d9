"""One way to reach ClickHouse: over HTTP with clickhouse-connect, embedded server and production alike."""

from __future__ import annotations

import ipaddress
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.client import Client

from tracehouse.core import settings as env
from tracehouse.core.config import ClickHouseTarget


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine: 127.0.0.0/8, ::1 or localhost."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def compression(target: ClickHouseTarget, environ: env.Env | None = None) -> str | bool:
    """What the client compresses with: lz4 over a network, nothing over loopback, where compressing
    saves no bandwidth and costs CPU on both sides (`TRACEHOUSE_CLICKHOUSE_COMPRESS` forces either).

    clickhouse-connect compresses query results (asked with Accept-Encoding, compressed by the server)
    and `insert()` blocks; a `raw_insert` body, the sink's span rows, goes as it is given either way."""
    forced = env.get(env.CLICKHOUSE_COMPRESS, environ)
    wanted = not is_loopback(target.host) if forced is None else forced
    return "lz4" if wanted else False


async def async_client(target: ClickHouseTarget, *, database: str | None = "", **kwargs: Any) -> AsyncClient:
    """An async client; `database=""` means the target's database, None means none (for CREATE DATABASE)."""
    db = target.database if database == "" else database
    return await clickhouse_connect.get_async_client(
        **target.client_kwargs(),
        database=db or "__default__",
        compress=kwargs.pop("compress") if "compress" in kwargs else compression(target),
        **kwargs,
    )


def sync_client(target: ClickHouseTarget, *, database: str | None = "", **kwargs: Any) -> Client:
    """A sync client, for scripts and tests that are not async."""
    db = target.database if database == "" else database
    return clickhouse_connect.get_client(
        **target.client_kwargs(),
        database=db or "__default__",
        compress=kwargs.pop("compress") if "compress" in kwargs else compression(target),
        **kwargs,
    )
