"""Kafka topic administration: create the pipeline's topics (`tracehouse migrate`, the local stack, the
tests) and wait for them to exist (the worker and the sink, when started before `migrate`).

Why here and not next to a broker launcher: the CLI, the stack and the tests all need it against any
Kafka (Apache Kafka, Redpanda, a managed service, noida-db), and it needs only aiokafka (the base install).

Every metadata request here says `allow_auto_topic_creation = false`: on a broker with
`auto.create.topics.enable=true`, asking about a missing topic would otherwise create it with the broker's
default partition count, and co-partitioning would be broken before `migrate` ran.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.metadata import MetadataRequest

from tracehouse.core.topics import TopicSpec

log = logging.getLogger("tracehouse.topics")

UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION
REQUEST_TIMEOUT_MS = 10_000  # one metadata request; a busy managed cluster may take seconds


class TopicAdminError(RuntimeError):
    """Topics could not be made as declared; the message says why and what to do (one line)."""


class KafkaUnreachableError(TopicAdminError):
    """No broker at the bootstrap address answered."""


class PartitionMismatchError(TopicAdminError):
    """A co-partitioned topic exists with another partition count than the setting."""


@dataclass
class TopicsReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def as_specs(topics: Iterable[TopicSpec] | Mapping[str, int], replication_factor: int = 1) -> list[TopicSpec]:
    """Specs as given, or `{name: partitions}` (ad-hoc topics of tests and benchmarks) as strict specs."""
    if isinstance(topics, Mapping):
        return [TopicSpec(name, partitions, replication_factor, strict=True) for name, partitions in topics.items()]
    return list(topics)


async def _connect(bootstrap: str, security: Mapping[str, Any], timeout: float) -> AIOKafkaClient:
    """A bootstrapped metadata client, retrying until `timeout`; KafkaUnreachableError after that."""
    deadline = time.monotonic() + timeout
    while True:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS, **security)
        try:
            await client.bootstrap()
            return client
        except (KafkaError, OSError) as exc:
            await client.close()
            if time.monotonic() >= deadline:
                raise KafkaUnreachableError(
                    f"Kafka at {bootstrap} is not reachable ({exc}); start it, or set TRACEHOUSE_KAFKA_BOOTSTRAP "
                    "(and TRACEHOUSE_KAFKA_SECURITY_PROTOCOL, _SASL_*, _SSL_*) to where it runs and how"
                ) from None
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


async def _describe(client: AIOKafkaClient, names: list[str]) -> dict[str, list[int]]:
    """{topic: leader of each partition} for the topics that exist (-1: no leader yet)."""
    request = MetadataRequest(names, allow_auto_topic_creation=False)
    response = await client.send(client.get_random_node(), request)
    found: dict[str, list[int]] = {}
    for topic in response.to_object()["topics"]:
        if topic["error_code"] == UNKNOWN_TOPIC:
            continue
        partitions = sorted(topic["partitions"], key=lambda p: p["partition"])
        found[topic["topic"]] = [p["leader"] if p["error_code"] == 0 else -1 for p in partitions]
    return found


async def existing_topics(
    bootstrap: str, names: Iterable[str], *, security: Mapping[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, int]:
    """{topic: partition count} for those of `names` that exist (one metadata request)."""
    client = await _connect(bootstrap, security or {}, timeout)
    try:
        return {name: len(leaders) for name, leaders in (await _describe(client, list(names))).items()}
    finally:
        await client.close()


def _mismatch(spec: TopicSpec, actual: int) -> str:
    return (
        f"topic {spec.name} has {actual} partitions but TRACEHOUSE_SPANS_PARTITIONS is {spec.partitions}: set "
        f"TRACEHOUSE_SPANS_PARTITIONS={actual} for every tracehouse process (the worker's state is "
        f"co-partitioned with it), or delete the topic (and its data) and run `tracehouse migrate` again"
    )


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[TopicSpec] | Mapping[str, int],
    *,
    replication_factor: int = 1,
    security: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    connect_timeout: float = 5.0,
) -> TopicsReport:
    """Create each topic that does not exist, check the partitions of those that do, and return once
    every partition has a leader (so a producer right after this does not hit UNKNOWN_TOPIC errors).

    Idempotent. An existing topic is never altered: a strict (co-partitioned) topic with another partition
    count raises PartitionMismatchError, because repartitioning a live topic moves traces between
    partitions and should be a deliberate act; other differences are logged.
    """
    specs = as_specs(topics, replication_factor)
    if not specs:
        return TopicsReport()
    try:
        return await _ensure(bootstrap, specs, security or {}, timeout, connect_timeout)
    except (KafkaError, asyncio.TimeoutError) as exc:  # authorization, a broker going away, ...
        raise TopicAdminError(f"Kafka at {bootstrap}: {type(exc).__name__} {exc}".strip()) from None


async def _ensure(
    bootstrap: str, specs: list[TopicSpec], security: Mapping[str, Any], timeout: float, connect_timeout: float
) -> TopicsReport:
    report = TopicsReport()
    client = await _connect(bootstrap, security, connect_timeout)
    try:
        names = [spec.name for spec in specs]
        existing = await _describe(client, names)
        for spec in specs:
            if spec.name not in existing:
                continue
            report.existing.append(spec.name)
            actual = len(existing[spec.name])
            if actual != spec.partitions:
                if spec.strict:
                    raise PartitionMismatchError(_mismatch(spec, actual))
                log.warning("topic %s has %d partitions (declared: %d); leaving it", spec.name, actual, spec.partitions)
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await _create(bootstrap, missing, security, timeout)
        deadline = time.monotonic() + timeout
        while True:
            described = await _describe(client, names)
            for spec in missing:  # a concurrent creator (another migrate, auto-creation) may have won
                actual = len(described.get(spec.name, ()))
                if spec.strict and actual and actual != spec.partitions:
                    raise PartitionMismatchError(_mismatch(spec, actual))
            ready = {name for name, leaders in described.items() if leaders and all(ld >= 0 for ld in leaders)}
            if ready >= set(names):
                report.created = [spec.name for spec in missing]
                return report
            if time.monotonic() > deadline:
                raise TopicAdminError(f"topics {sorted(set(names) - ready)} have no leaders after {timeout:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def _create(bootstrap: str, specs: list[TopicSpec], security: Mapping[str, Any], timeout: float) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **security)
    try:
        await admin.start()
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in specs]
        response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
    except KafkaError as exc:
        raise TopicAdminError(f"creating topics on {bootstrap} failed: {type(exc).__name__} {exc}") from None
    finally:
        await admin.close()
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else None
        if code == 0 or code == TopicAlreadyExistsError.errno:  # already: created by a concurrent migrate
            continue
        raise TopicAdminError(f"creating topic {name} failed: {for_code(code).__name__} {message or ''}".strip())


async def wait_for_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    who: str,
    security: Mapping[str, Any] | None = None,
    interval: float = 1.0,
    stop: asyncio.Event | None = None,
) -> bool:
    """Return once every topic in `names` exists with a leader for each partition; False if `stop` was
    set first. Says once what it waits for; asks the broker one light metadata request per `interval`.

    Why: Faust ignores a topic that is missing when it starts and never consumes it, and aiokafka notices
    new topics only at its next metadata refresh (every 5 minutes by default). Waiting here, before the
    consumer starts, makes any start order work without a restart.
    """
    wanted = list(names)
    told = False
    client: AIOKafkaClient | None = None
    try:
        while stop is None or not stop.is_set():
            try:
                if client is None:
                    client = await _connect(bootstrap, security or {}, timeout=max(interval, 1.0))
                described = await _describe(client, wanted)
                missing = [n for n in wanted if not described.get(n) or any(ld < 0 for ld in described[n])]
            except (KafkaError, OSError, asyncio.TimeoutError, TopicAdminError) as exc:
                missing = wanted
                reason = f"Kafka at {bootstrap} not reachable: {exc}"
                if client is not None:
                    await client.close()
                    client = None
            else:
                reason = ""
                if not missing:
                    if told:
                        log.info("%s: topics %s exist; starting", who, ", ".join(wanted))
                    return True
            if not told:
                told = True
                log.warning(
                    "%s: waiting for Kafka topics %s (run `tracehouse migrate` to create them)%s",
                    who,
                    ", ".join(missing),
                    f"; {reason}" if reason else "",
                )
            if stop is None:
                await asyncio.sleep(interval)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except asyncio.TimeoutError:
                    pass
        return False
    finally:
        if client is not None:
            await client.close()


def run_sync(make: Any) -> Any:
    """Run the coroutine `make()` to completion from sync code, even inside a running event loop (then on
    a helper thread), so fixtures and CLI code need not care which they are in."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    results: list[Any] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            results.append(asyncio.run(make()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=runner, name="tracehouse-topics")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def create_topics(
    bootstrap: str,
    topics: Iterable[TopicSpec] | Mapping[str, int],
    *,
    replication_factor: int = 1,
    security: Mapping[str, Any] | None = None,
) -> TopicsReport:
    """Synchronous `ensure_topics`."""
    specs = as_specs(topics, replication_factor)

    def make() -> Coroutine[Any, Any, TopicsReport]:
        return ensure_topics(bootstrap, specs, security=security)

    return run_sync(make)
