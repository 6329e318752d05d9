"""The embedded server's own tests share one server per module and a clickhouse-connect client to it.

A test module names the database its client creates and uses in `DATABASE` (default "t").
"""

from __future__ import annotations

from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedClickHouse]:
    ch = EmbeddedClickHouse(tmp_path_factory.mktemp("clickhouse"))
    ch.start()
    yield ch
    ch.stop()


@pytest.fixture(scope="module")
def client(server: EmbeddedClickHouse, request: pytest.FixtureRequest) -> Iterator[Client]:
    c = clickhouse_connect.get_client(host=server.host, port=server.port, compress="lz4")
    c.command(f"CREATE DATABASE IF NOT EXISTS {getattr(request.module, 'DATABASE', 't')}")
    yield c
    c.close()
