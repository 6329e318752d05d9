"""`tracehouse migrate` creates the Kafka topics too (real CLI process, real Apache Kafka with automatic
topic creation off): every topic of the contract with its declared partitions and configuration, nothing
changed on a second run, a clear one-line refusal when the partition count differs from the setting, and
a clear error when Kafka is not there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from empty_kafka import BrokerWithoutAutoCreate, run_migrate
from test_security_config import MECHANISM, PASSWORD, sasl_bootstrap, sasl_env  # noqa: F401 (a fixture)

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.topic_admin import (
    PartitionMismatchError,
    ensure_topics,
    existing_topics,
    run_sync,
    wait_for_topics,
)
from tracehouse.infra.kafka_broker import KafkaBroker
from tracehouse.infra.ports import free_port
from tracehouse.infra.stack import LocalStack


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with BrokerWithoutAutoCreate(tmp_path_factory.mktemp("kafka"), partitions=1) as broker:
        yield broker


def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    async def describe() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
            responses = await admin.describe_configs(resources)
        finally:
            await admin.close()
        out: dict[str, dict[str, str]] = {}
        for response in responses:
            for resource in response.resources:
                _code, _message, _type, name, entries = resource[:5]
                out[name] = {entry[0]: entry[1] for entry in entries}
        return out

    return asyncio.run(describe())


def env_for(settings: Settings, bootstrap: str, partitions: int) -> dict[str, str]:
    return {
        **LocalStack(replace(settings, kafka_bootstrap=bootstrap)).child_env(),
        "TRACEHOUSE_SPANS_PARTITIONS": str(partitions),
    }


def test_migrate_creates_every_topic_and_is_idempotent(settings: Settings, broker: KafkaBroker) -> None:
    assert run_sync(lambda: existing_topics(broker.bootstrap, topics.ALL)) == {}
    first = run_migrate(env_for(settings, broker.bootstrap, 3))
    assert first.returncode == 0, first.stderr
    assert f"created: {', '.join(topics.ALL)}" in first.stdout
    assert "schema version" in first.stdout  # and the ClickHouse schema, as before
    partitions = run_sync(lambda: existing_topics(broker.bootstrap, topics.ALL))
    assert partitions == {
        topics.SPANS: 3,
        topics.TRACES: 3,
        topics.ROLLUPS: 1,
        topics.ALERTS: 1,
        topics.DLQ: 1,
        topics.SCORES: 3,
        topics.SCORE_ROLLUPS: 1,
        topics.SPANS_KEPT: 3,  # co-partitioned with spans (tail sampling)
    }
    configs = topic_configs(broker.bootstrap, list(topics.ALL))
    for name in topics.ALL:
        assert configs[name]["retention.ms"] == str(3 * 24 * 3600 * 1000), name  # as the deploy files keep it
        assert configs[name]["max.message.bytes"] == str(16 * 1024 * 1024), name

    second = run_migrate(env_for(settings, broker.bootstrap, 3))
    assert second.returncode == 0, second.stderr
    assert "created: none (all exist)" in second.stdout
    assert run_sync(lambda: existing_topics(broker.bootstrap, topics.ALL)) == partitions


def test_migrate_refuses_a_partition_count_that_differs(settings: Settings, broker: KafkaBroker) -> None:
    assert run_migrate(env_for(settings, broker.bootstrap, 3)).returncode == 0  # as the test above left it
    refused = run_migrate(env_for(settings, broker.bootstrap, 5))
    assert refused.returncode != 0
    message = refused.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("tracehouse migrate: topic tracehouse.spans has 3 partitions")
    assert "TRACEHOUSE_SPANS_PARTITIONS is 5" in message and "TRACEHOUSE_SPANS_PARTITIONS=3" in message
    assert run_sync(lambda: existing_topics(broker.bootstrap, [topics.SPANS])) == {topics.SPANS: 3}
    with pytest.raises(PartitionMismatchError):
        run_sync(lambda: ensure_topics(broker.bootstrap, Settings(spans_partitions=6).topic_specs()))


def test_migrate_without_kafka_fails_clearly(settings: Settings, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    failed = run_migrate(env_for(settings, nowhere, 3))
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tracehouse migrate: Kafka at {nowhere} is not reachable"), failed.stderr
    assert "Traceback" not in failed.stderr
    # Platforms that manage topics themselves skip them; the schema is still made.
    schema_only = run_migrate(env_for(settings, nowhere, 3), "--skip-topics")
    assert schema_only.returncode == 0, schema_only.stderr
    assert "schema version" in schema_only.stdout


def test_topics_are_made_and_awaited_over_sasl(sasl_bootstrap: str) -> None:  # noqa: F811
    """The security settings reach the admin and metadata clients (the k8s configmap uses SASL_SSL)."""
    options = kafka_client_options(sasl_env(**{MECHANISM: "SCRAM-SHA-512", PASSWORD: "alice-secret"}))
    specs = Settings(spans_partitions=2).topic_specs()
    report = run_sync(lambda: ensure_topics(sasl_bootstrap, specs, security=options))
    assert report.created == list(topics.ALL)
    assert run_sync(lambda: wait_for_topics(sasl_bootstrap, topics.ALL, who="test", security=options, interval=0.2))
