"""Shared plumbing for the benchmark scripts in this folder (not a benchmark itself, and not a test).

- `Stack`: a real Apache Kafka (KRaft) and the embedded ClickHouse engine over HTTP, each on free ports in a
  temporary directory, stopped and deleted at the end. `TRACEHOUSE_KAFKA_BOOTSTRAP` and
  `TRACEHOUSE_CLICKHOUSE_URL` point at ones you run instead (then nothing is started for that part, and the
  benchmarks work in databases and consumer groups of their own, which they drop afterwards).
- Loading spans into `tracehouse.spans` exactly as the SDK does (`SpanTransport`: many spans per message,
  partition by trace id), and pointing a new consumer group at the first offset of that load, so a
  benchmark reads exactly its own spans even from a shared broker.
- Small statistics and table helpers: every figure is a median of several runs on a shared, noisy 2-core
  machine; compare ratios from the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tracehouse.core.config import Settings
from tracehouse.core.schema import Span
from tracehouse.core.topics import TopicSpec, topic_specs

SPANS_PARTITIONS = 4
console = Console(highlight=False)
if not console.is_terminal:  # piped or redirected: wide enough that the tables do not fold
    console = Console(highlight=False, width=160)
err = Console(stderr=True, highlight=False)


def note(text: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


# ---- statistics ---------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """'median (min-max, n runs)' for a table cell."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> None:
    t = Table(title=title, caption=caption or None, title_justify="left", caption_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        t.add_row(*(str(cell) for cell in row))
    console.print(t)


# ---- processes' CPU ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def host_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} on {os.cpu_count()} CPUs"


# ---- infrastructure ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """Kafka and ClickHouse for one benchmark: started here unless the environment names existing ones."""

    kafka_topics: tuple[TopicSpec, ...] = field(default_factory=lambda: topic_specs(SPANS_PARTITIONS))
    need_kafka: bool = True
    need_clickhouse: bool = True
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tracehouse-bench-")))
    kafka_bootstrap: str = ""
    clickhouse_url: str = ""
    clickhouse_pid: int | None = None
    kafka_pid: int | None = None
    _broker: Any = None
    _clickhouse: Any = None
    _databases: list[Settings] = field(default_factory=list)

    def start(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from tracehouse.core.topic_admin import create_topics
        from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse
        from tracehouse.infra.kafka_broker import KafkaBroker

        external_ch = os.environ.get("TRACEHOUSE_CLICKHOUSE_URL")
        if not self.need_clickhouse:
            self.clickhouse_url = external_ch or "http://127.0.0.1:1"
        elif external_ch:
            self.clickhouse_url = external_ch
            note(f"ClickHouse: using {external_ch}")
        else:
            note("starting the embedded ClickHouse engine...")
            self._clickhouse = EmbeddedClickHouse(self.tmp / "clickhouse").start()
            self.clickhouse_url = self._clickhouse.url
            self.clickhouse_pid = self._clickhouse.pid
        if not self.need_kafka:
            return
        external_kafka = os.environ.get("TRACEHOUSE_KAFKA_BOOTSTRAP")
        if external_kafka:
            self.kafka_bootstrap = external_kafka
            note(f"Kafka: using {external_kafka}")
        else:
            note("starting Apache Kafka (KRaft)...")
            self._broker = KafkaBroker(self.tmp / "kafka", partitions=SPANS_PARTITIONS).start()
            self.kafka_bootstrap = self._broker.bootstrap
            self.kafka_pid = self._broker.pid
        create_topics(self.kafka_bootstrap, self.kafka_topics)

    @property
    def embedded(self) -> bool:
        """Whether ClickHouse is the embedded engine this script started (its CPU can be read)."""
        return self._clickhouse is not None

    def settings(self, tag: str = "") -> Settings:
        """Settings with a database and consumer groups of their own (the database is dropped at stop)."""
        tag = tag or uuid.uuid4().hex[:8]
        settings = Settings.from_env(
            kafka_bootstrap=self.kafka_bootstrap or "127.0.0.1:1",
            clickhouse_url=self.clickhouse_url,
            clickhouse_database=f"bench_{tag}",
            data_dir=self.tmp / f"data-{tag}",
            worker_group=f"bench-worker-{tag}",
            sink_group=f"bench-sink-{tag}",
            spans_partitions=SPANS_PARTITIONS,
        )
        self._databases.append(settings)
        return settings

    def migrate(self, settings: Settings) -> None:
        from tracehouse.sinks.migrate import migrate

        asyncio.run(migrate(settings.clickhouse))

    def drop(self, settings: Settings) -> None:
        from tracehouse.sinks.clickhouse import sync_client

        try:
            client = sync_client(settings.clickhouse, database=None)
            try:
                client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}` SYNC")
            finally:
                client.close()
        except Exception as exc:  # the server may be gone already
            note(f"could not drop {settings.clickhouse.database}: {exc}")

    def stop(self) -> None:
        if self._clickhouse is None and self.need_clickhouse:  # external server: drop only what we made
            for settings in self._databases:
                self.drop(settings)
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._clickhouse is not None:
            self._clickhouse.stop()
            self._clickhouse = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- Kafka helpers ------------------------------------------------------------------------------------


async def end_offsets(bootstrap: str, topic_names: Sequence[str]) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(name, p)
            for name in topic_names
            for p in sorted(consumer.partitions_for_topic(name) or await _partitions(consumer, name))
        ]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # first call: metadata not fetched yet
    return consumer.partitions_for_topic(topic) or set()


async def commit_group(bootstrap: str, group: str, offsets: dict[Any, int]) -> None:
    """Point consumer group `group` at `offsets` before any member joins it."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


def load_spans(bootstrap: str, spans: list[Span], batch_spans: int = 500) -> float:
    """Send spans with the SDK's transport; returns seconds taken. Raises if any span was not sent."""
    from tracehouse.producers.transport import SpanTransport

    transport = SpanTransport(bootstrap, max_queue=len(spans) + 1000, batch_spans=batch_spans, linger_s=0.01)
    started = time.perf_counter()
    try:
        accepted = transport.submit_many(spans)
        if accepted != len(spans) or not transport.flush(300):
            raise RuntimeError(f"transport did not send every span: {transport.stats.snapshot()}")
    finally:
        transport.shutdown()
    if transport.stats.sent != len(spans):
        raise RuntimeError(f"transport did not send every span: {transport.stats.snapshot()}")
    return time.perf_counter() - started


def make_spans(count: int, seed: int, *, spread_s: float = 0.0, prompt_bytes: int = 1024) -> list[Span]:
    """Realistic traces (RAG, agent, chat) from TraceFactory; with `spread_s`, traces start over the last
    `spread_s` seconds instead of all now."""
    import random

    from tracehouse.producers.traffic import TraceFactory, TrafficOptions

    factory = TraceFactory(TrafficOptions(seed=seed, prompt_bytes=prompt_bytes))
    rng = random.Random(seed)
    now = time.time_ns()
    spans: list[Span] = []
    while len(spans) < count:
        start = now - int(rng.uniform(60, spread_s) * 1e9) if spread_s else None
        spans.extend(factory.any(start))
    return spans


def python_info() -> str:
    return f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


_VOCABULARY: list[str] = []
_WEIGHTS: list[float] = []


def vary_text(spans: list[Span], seed: int) -> None:
    """Replace the free text of spans (inputs, outputs, message contents, document contents) with words
    drawn from a 20,000-word Zipf vocabulary, keeping each field's length: text that compresses about as
    well as prose, where TraceFactory's is slices of one fixed text."""
    import itertools
    import random

    rng = random.Random(seed)
    if not _VOCABULARY:
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        vocab_rng = random.Random(0)
        words = {"".join(vocab_rng.choices(letters, k=vocab_rng.randint(2, 10))) for _ in range(25_000)}
        _VOCABULARY.extend(sorted(words)[:20_000])
        vocab_rng.shuffle(_VOCABULARY)
        _WEIGHTS.extend(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(_VOCABULARY))))

    def text(like: str) -> str:
        if len(like) < 40:  # names, ids, short questions: keep
            return like
        words = rng.choices(_VOCABULARY, cum_weights=_WEIGHTS, k=len(like) // 6 + 1)
        return " ".join(words)[: len(like)]

    for span in spans:
        span.input = text(span.input)
        span.output = text(span.output)
        for document in span.documents:
            document.content = text(document.content)
        if span.llm is not None:
            for message in (*span.llm.input_messages, *span.llm.output_messages):
                message.content = text(message.content)
