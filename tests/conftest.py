"""Session-wide real infrastructure: Apache Kafka (KRaft) and the ClickHouse engine over HTTP.

Both start once per test session on free ports, in a temporary directory, and stop at the end. Nothing is
mocked: tests talk to the real broker and the real engine. Set TRACEHOUSE_TEST_KAFKA (a bootstrap) or
TRACEHOUSE_TEST_CLICKHOUSE (a URL) to run against ones you already have.

The tree: tests/unit/ needs neither (seconds, no JVM: `pytest tests/unit` or `pytest -m "not integration"`);
tests/integration/ and tests/clickhouse/ (the embedded server's own tests) talk to the real broker and engine,
and carry the `integration` mark, given here by folder.

Isolation between tests: topic names are a public contract, so tests share them; each test gets its own
ClickHouse database and consumer groups, and asserts on its own trace ids only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracehouse.core.config import Settings
from tracehouse.core.topic_admin import create_topics
from tracehouse.core.topics import topic_specs
from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse
from tracehouse.infra.kafka_broker import KafkaBroker

SPANS_PARTITIONS = 4
_TESTS = Path(__file__).resolve().parent
_INTEGRATION = ("integration", "clickhouse")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ and tests/clickhouse/ `integration` (see the docstring)."""
    for item in items:
        parts = item.path.resolve().relative_to(_TESTS).parts
        if parts and parts[0] in _INTEGRATION:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TRACEHOUSE_TEST_KAFKA")
    if external:
        yield external
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), partitions=SPANS_PARTITIONS)
    broker.start()
    try:
        create_topics(broker.bootstrap, topic_specs(SPANS_PARTITIONS))
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TRACEHOUSE_TEST_CLICKHOUSE")
    if external:
        yield external
        return
    server = EmbeddedClickHouse(tmp_path_factory.mktemp("clickhouse"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, clickhouse_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: the session's broker and server, a database and groups of its own."""
    tag = uuid.uuid4().hex[:10]
    return Settings.from_env(
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=clickhouse_url,
        clickhouse_database=f"test_{tag}",
        data_dir=tmp_path / "data",
        worker_group=f"worker-{tag}",
        sink_group=f"sink-{tag}",
        spans_partitions=SPANS_PARTITIONS,
    )
