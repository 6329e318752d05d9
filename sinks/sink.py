"""`tracehouse sink`: Kafka -> ClickHouse for spans, traces, rollups and alerts, with nothing lost.

The rules, each for a failure users of other tools have hit:
- Offsets are committed to Kafka only after ClickHouse acknowledged the insert. While ClickHouse is away
  the sink retries with exponential backoff and jitter and stops reading (Kafka holds the data; memory
  stays at one batch).
- Every span row carries its Kafka partition and offset; a materialized view keeps the highest stored
  offset per partition in `ingest_offsets`. When partitions are assigned (start, restart after a crash,
  rebalance) the sink seeks past what ClickHouse already holds, so a batch inserted but not yet committed
  is not inserted twice: each span lands exactly once.
- A row ClickHouse rejects for its content is found by splitting the batch and goes to `tracehouse.dlq`
  with the reason; the rest of the batch lands. Every other failure is classified too (sinks/errors.py):
  transient ones are retried with backoff while Kafka holds the data, configuration ones wait for an
  operator with a loud error naming the fix, and an unclassified one is retried a bounded number of times
  and then split like bad content, so one poison batch cannot hold its partitions forever.
- No insert touches more partitions than the server allows in one block (`max_partitions_per_insert_block`,
  read from it): a batch over the limit is cut by partition, in an order that keeps the exactly-once
  argument above (sinks/insert_blocks.py). Spans (and traces) whose time is outside what is stored, far in
  the future or older than the table's TTL (core/timestamps.py), go to `tracehouse.dlq` with the reason.
- Under a backlog, inserts run concurrently in lanes, and each lane reads and encodes its next batch
  while its last one is being inserted: the sink's CPU (decode, rows, encode) and ClickHouse's (parse,
  write) overlap instead of taking turns, and ClickHouse parses two inserts on two cores (one insert is
  mostly one core). Each Kafka partition belongs to one lane (partition % lanes), and a lane inserts one
  batch at a time, in order, committing its offsets only after it is stored: per partition, the
  exactly-once argument above is unchanged. Memory is two batches per lane. Without a backlog (batches
  sent because of their age, not their size) the lanes' rows go as one insert, in flight for every lane:
  concurrency would only cut the parts smaller.
- Big batches (rows, bytes and time bounds): few parts, no TOO_MANY_PARTS. Each message's rows are
  encoded as soon as they are read and held as bytes (JSON lines), not as Python objects, so the
  garbage collector has nothing to scan. Batch size is the biggest
  lever on ClickHouse's cost per row (each insert writes a part in `spans` and in every table its
  materialized views feed, and small parts are merged again later); tests/benchmarks/sink_throughput.py
  measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import DeadLetter, encode_dead_letter
from tracehouse.core.topic_admin import wait_for_topics
from tracehouse.sinks.clickhouse import async_client
from tracehouse.sinks.ddl import ttl_days
from tracehouse.sinks.errors import ErrorKind, classify, fix_for
from tracehouse.sinks.insert_blocks import Piece, split_by_partition
from tracehouse.sinks.metrics import MetricsServer, Sample
from tracehouse.sinks.routes import Retention, Route, default_routes
from tracehouse.sinks.rows import encode_rows, readable_row

log = logging.getLogger("tracehouse.sink")

FETCH_RECORDS = 500  # Kafka messages per fetch; a fetch this full means there is a backlog

# Per-table insert settings. `spans` is a ReplacingMergeTree: by default every insert also collapses
# duplicate keys within its own block, a second pass over the whole batch that costs about as much as the
# rest of the insert. The sink stores each Kafka offset once, so the only duplicates are spans a producer
# sent twice, and those collapse on merge (queries that must be exact use FINAL) either way.
INSERT_SETTINGS: dict[str, dict[str, object]] = {"spans": {"optimize_on_insert": 0}}

DEFAULT_PARTITION_LIMIT = 100  # ClickHouse's default max_partitions_per_insert_block, until the server says
SERVER_FACTS_EVERY_S = 60.0  # how often the partition limit, time zone and TTL are read again
UNKNOWN_ERROR_ATTEMPTS = 6  # an unclassified failure is retried this often, then treated as bad content
CONFIG_ERROR_LOG_EVERY_S = 60.0  # a configuration error is logged loudly at most this often

METRICS_HELP = {
    "tracehouse_sink_rows_total": "Rows inserted into ClickHouse and committed in Kafka.",
    "tracehouse_sink_batches_total": "Batches inserted.",
    "tracehouse_sink_retries_total": "Insert attempts that failed and were retried.",
    "tracehouse_sink_dead_letters_total": "Records sent to tracehouse.dlq.",
    "tracehouse_sink_invalid_records_total": "Records that failed validation.",
    "tracehouse_sink_last_batch_rows": "Rows in the last batch.",
    "tracehouse_sink_rows_per_second": "Average rows per second since start.",
    "tracehouse_sink_pending_rows": "Rows read but not yet stored (the batch being built and the one being inserted).",
    "tracehouse_sink_lag_messages": "Kafka messages not yet read, per partition.",
}


@dataclass
class SinkOptions:
    group_id: str = ""  # default: Settings.sink_group
    batch_rows: int = 50_000
    batch_bytes: int = 32 * 1024 * 1024  # encoded rows per insert; memory holds 2 * lanes of them at most
    # Concurrent inserts, each for its own share of the partitions (see the module docstring); two keep
    # two cores of ClickHouse busy (measured: one insert at a time reaches ~90k spans/s of the embedded
    # engine's ~125k with two).
    insert_lanes: int = 2
    flush_interval_s: float = 1.0
    # When the last fetch found no backlog, insert after this long. Not shorter: every insert writes a part
    # in `spans` and in each table its views feed, and ClickHouse's CPU per span climbs steeply as parts
    # shrink (measured on the embedded engine: ~13 µs at 25,000 rows, 17 at 10,000, 35 at 2,500, 55 at
    # 1,000, merges included). 0.5 s keeps the delay to queryable well under a second at moderate load.
    idle_flush_s: float = 0.5
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    stats_interval_s: float = 10.0
    # The worker runs the same validation and dead-letters invalid records; a sink deployed without
    # workers sets this so invalid records still reach the DLQ.
    dead_letter_invalid: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics endpoint
    # Move the objects that exist once the sink has started (modules, clients) out of the garbage
    # collector's sight while it runs: every span decoded allocates containers, which triggers collections
    # that would otherwise rescan that whole heap each time (~25% of the sink's CPU per span, measured).
    gc_freeze: bool = True


@dataclass
class SinkStats:
    rows: int = 0
    batches: int = 0
    retries: int = 0
    dead_letters: int = 0
    invalid: int = 0  # records that failed validation (the worker dead-letters them)
    refused: int = 0  # spans and traces refused for their time (core.timestamps), dead-lettered by the sink
    last_batch_rows: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)


@dataclass
class _Buffer:
    """Rows of one table read but not yet in ClickHouse, encoded message by message.

    Each chunk is the JSONEachRow lines of one Kafka message's rows, kept whole: an insert streams the
    chunks as they are (no per-row splitting, no join into one body), and only a batch ClickHouse rejects
    for its content is split into rows, to find the bad ones."""

    route: Route
    chunks: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # rows per chunk
    # (partition, offset) of each chunk: for dead-lettering, and to drop the rows of revoked partitions
    origins: list[tuple[int, int]] = field(default_factory=list)
    # The table partition of each chunk's rows (a message touching several is encoded as one chunk per
    # partition), and the distinct ones: an insert must stay within the server's partition limit.
    keys: list[int] = field(default_factory=list)
    key_set: set[int] = field(default_factory=set)


class _Pending:
    """Everything read since the last commit, and the offsets to commit once it is stored."""

    def __init__(self, routes: list[Route]) -> None:
        self.buffers = {route.topic: _Buffer(route) for route in routes}
        self.next_offsets: dict[TopicPartition, int] = {}
        self.bytes = 0
        self.rows = 0
        self.first_at = 0.0

    def absorb(self, other: _Pending) -> None:
        """Add another batch's rows and offsets to this one (they cover different partitions)."""
        for topic, buffer in self.buffers.items():
            theirs = other.buffers[topic]
            buffer.chunks.extend(theirs.chunks)
            buffer.counts.extend(theirs.counts)
            buffer.origins.extend(theirs.origins)
            buffer.keys.extend(theirs.keys)
            buffer.key_set |= theirs.key_set
        self.next_offsets.update(other.next_offsets)
        self.bytes += other.bytes
        self.rows += other.rows
        self.first_at = min(self.first_at, other.first_at)


@dataclass
class _Lane:
    """A share of the partitions: the batch being built for them and the one being inserted (at most one,
    so their inserts stay in order)."""

    pending: _Pending
    # The insert of the lane's last batch; a time-based insert of every lane's rows is shared by all lanes
    inflight: asyncio.Task[bool] | None = None


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class _SeekPastStored(ConsumerRebalanceListener):
    """On assignment, skip offsets whose rows ClickHouse already holds; on revocation, drop their rows."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.sink._assigned = False  # not ready during a rebalance
        # Let the batch being inserted land and commit while we still own its partitions; the next owner
        # then resumes after it (by the committed offset or by `ingest_offsets`).
        await self.sink._settle_all()
        self.sink._forget(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink._seek_past_stored(assigned)
        self.sink._assigned = True


class Sink:
    """Consumes the pipeline's topics and inserts into ClickHouse in large, acknowledged batches."""

    def __init__(
        self,
        settings: Settings,
        options: SinkOptions | None = None,
        routes: list[Route] | None = None,
        prices: PriceTable | None = None,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or SinkOptions()
        # The `spans` TTL, read from ClickHouse (core.timestamps refuses spans older than it)
        self.retention = Retention()
        self.routes = routes or default_routes(prices, self.retention)
        self.stats = SinkStats()
        self.on_flush = on_flush
        self.database = settings.clickhouse.database
        self._lanes = [_Lane(_Pending(self.routes)) for _ in range(max(1, self.options.insert_lanes))]
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: AIOKafkaProducer | None = None
        self._client: AsyncClient | None = None
        # Fault injection for tests: die like SIGKILL right between an insert and its offset commit,
        # the one moment that decides exactly-once. Never set in production.
        self._caught_up = False
        self._read: dict[TopicPartition, int] = {}  # next offset to read, per partition (for lag)
        # Lowest offset still to be read per owned partition; set on assignment, reset on revocation.
        self._floor: dict[TopicPartition, int] = {}
        self._inflight_rows: dict[asyncio.Task[bool], int] = {}  # rows of each insert in flight
        self._given_up = False  # a batch was abandoned while stopping: store nothing after it
        self._final = False  # the final flush is under way: give up on the first failed retry
        fault = os.environ.get("TRACEHOUSE_FAULT_EXIT_BEFORE_COMMIT")
        self._exit_before_commit = int(fault) if fault else None
        # What the server allows per insert block (read from it; lowered if it refuses a block anyway), and
        # whether its time zone is UTC: partition keys are UTC days and months, and a local day or month
        # overlaps two of them, so under another zone an insert may hold only half as many.
        self._partition_limit = DEFAULT_PARTITION_LIMIT
        self._server_utc = False
        self._facts_due = 0.0
        self._config_logged: dict[str, float] = {}  # fix -> when it was last logged
        # What `readiness()` reports (the health endpoints): set as startup and rebalances progress.
        self._stop: asyncio.Event | None = None
        self._waiting_for = "Kafka topics"  # what startup waits for; "" once consuming
        self._assigned = False  # partitions assigned and positioned since the last revocation

    # ---- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then flush what is pending and commit.

        Started before `tracehouse migrate` created the topics, it waits for them (one light metadata
        request a second) and subscribes once they exist: aiokafka would otherwise notice them only at
        its next metadata refresh, minutes later."""
        self._stop = stop
        security = kafka_client_options()
        self._waiting_for = "Kafka topics"
        names = [r.topic for r in self.routes]
        if not await wait_for_topics(self.settings.kafka_bootstrap, names, who="sink", security=security, stop=stop):
            return
        self._waiting_for = "ClickHouse"
        self._client = await self._connect_clickhouse(stop)
        if self._client is None:
            return
        self._waiting_for = ""
        self._dlq = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, linger_ms=5, **security)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.options.group_id or self.settings.sink_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            max_poll_interval_ms=600_000,
            **security,
        )
        await self._dlq.start()
        await self._consumer.start()
        self._consumer.subscribe([r.topic for r in self.routes], listener=_SeekPastStored(self))
        metrics = None
        if self.options.metrics_port:
            metrics = MetricsServer(self.samples, METRICS_HELP, self.options.metrics_host, self.options.metrics_port)
            await metrics.start()
        last_stats = time.monotonic()
        if self.options.gc_freeze:
            gc.freeze()
        try:
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=100, max_records=FETCH_RECORDS)
                self._caught_up = sum(len(m) for m in batch.values()) < FETCH_RECORDS
                for tp, messages in batch.items():
                    lane = self._lane(tp)
                    for message in messages:
                        await self._add(tp, message.offset, message.value, message.timestamp)
                        if self._full(lane):  # a message carries hundreds of rows: check after each
                            await self._flush(lane, stop)
                if self._due():
                    await self._flush_round(stop)
                now = time.monotonic()
                if now - last_stats >= self.options.stats_interval_s:
                    last_stats = now
                    self._log_stats()
            await self._flush_all(stop)
        finally:
            await self._abandon_inflight()
            if self.options.gc_freeze:
                gc.unfreeze()
            if metrics is not None:
                await metrics.stop()
            await self._consumer.stop()
            await self._dlq.stop()
            await self._client.close()

    async def _connect_clickhouse(self, stop: asyncio.Event) -> AsyncClient | None:
        """Connect, waiting as long as it takes (ClickHouse down, or its database not made by `migrate` yet).

        Said once, then retried at most every 2 s: a sink started before `migrate` starts soon after it."""
        delay = self.options.retry_initial_s
        failed = False
        while not stop.is_set():
            try:
                client = await async_client(self.settings.clickhouse)
            except Exception as exc:  # connection refused, DNS, auth, no database yet: wait and say so
                if not failed:
                    log.warning(
                        "ClickHouse at %s not ready (%s); retrying until it is", self.settings.clickhouse_url, exc
                    )
                failed = True
                await self._sleep(stop, delay)
                delay = min(delay * 2, self.options.retry_max_s, 2.0)
            else:
                if failed:
                    log.info("ClickHouse at %s ready", self.settings.clickhouse_url)
                return client
        return None

    def readiness(self) -> tuple[bool, str, dict[str, object]]:
        """Ready once the sink consumes its assigned partitions (for `/health/ready`)."""
        assigned = len(self._consumer.assignment()) if self._consumer is not None else 0
        details: dict[str, object] = {"partitions": assigned}
        if self._stop is not None and self._stop.is_set():
            return False, "stopping", details
        if self._waiting_for:
            return False, f"waiting for {self._waiting_for}", details
        if not self._assigned:
            return False, "waiting for partition assignment", details
        return True, "", details

    # ---- reading ----------------------------------------------------------------------------

    async def _add(
        self, tp: TopicPartition, offset: int, value: bytes | None, timestamp_ms: int | None = None
    ) -> None:
        if offset < self._floor.get(tp, 0):
            # Already stored (below the resume point), or already read in this assignment: a fetch that
            # raced the seek on assignment hands such messages over once more. Never insert them twice.
            return
        self._floor[tp] = offset + 1
        pending = self._lane(tp).pending
        if not pending.next_offsets:
            pending.first_at = time.monotonic()
        pending.next_offsets[tp] = offset + 1
        self._read[tp] = offset + 1
        if value is None:
            return
        if time.monotonic() >= self._facts_due:
            await self._read_server_facts()
        buffer = pending.buffers[tp.topic]
        # The record's time is the reference for core.timestamps (the worker reads the same record)
        received_ns = timestamp_ms * 1_000_000 if timestamp_ms and timestamp_ms > 0 else time.time_ns()
        rows, rejected = buffer.route.decode(value, tp.partition, offset, received_ns)
        if rejected:
            letters = []
            for bad in rejected:
                if bad.refused:  # valid, but its time is outside what is stored: only the sink knows the TTL
                    self.stats.refused += 1
                    letters.append(self._dead_letter(bad.reason, "sink", bad.payload, tp, offset))
                    continue
                self.stats.invalid += 1
                if self.options.dead_letter_invalid or tp.topic != topics.SPANS:
                    letters.append(self._dead_letter(bad.reason, "decode", bad.payload, tp, offset))
            await asyncio.gather(*letters)  # concurrently: the producer sends them in a few requests
        if not rows:
            return
        route = buffer.route
        key_of = route.partition_key
        if route.partition_keys is not None:
            keys = route.partition_keys(rows)
        else:
            keys = {key_of(row) for row in rows} if key_of is not None else {0}
        if len(keys) == 1:  # the common case: the message's rows are in one partition, one chunk
            self._append(pending, buffer, rows, (tp.partition, offset), keys.pop())
        else:  # one chunk per partition, so that an insert can be cut by partition
            assert key_of is not None
            by_key: dict[int, list[msgspec.Struct]] = {}
            for row in rows:
                by_key.setdefault(key_of(row), []).append(row)
            for key, group in by_key.items():
                self._append(pending, buffer, group, (tp.partition, offset), key)
        pending.rows += len(rows)

    @staticmethod
    def _append(
        pending: _Pending, buffer: _Buffer, rows: list[msgspec.Struct], origin: tuple[int, int], key: int
    ) -> None:
        encoded = encode_rows(rows)
        buffer.chunks.append(encoded)
        buffer.counts.append(len(rows))
        buffer.origins.append(origin)
        buffer.keys.append(key)
        buffer.key_set.add(key)
        pending.bytes += len(encoded)

    async def _read_server_facts(self) -> None:
        """Read what the server allows per insert block, its time zone and the `spans` TTL (every minute:
        an operator may change them). On failure keep what is known; the insert path says what is wrong."""
        self._facts_due = time.monotonic() + SERVER_FACTS_EVERY_S
        if self._client is None:
            return
        try:
            result = await self._client.query(
                "SELECT toUInt64(getSetting('max_partitions_per_insert_block')), timezone(),"
                " (SELECT any(engine_full) FROM system.tables WHERE database = {db:String} AND name = 'spans')",
                parameters={"db": self.database},
            )
        except Exception as exc:
            log.info("cannot read the server's insert limits yet (%s); assuming the defaults", exc)
            return
        limit, zone, engine = result.result_rows[0]
        self._partition_limit = int(limit) or 1_000_000  # 0: unlimited
        self._server_utc = zone in ("UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Universal", "Zulu")
        self.retention.days = ttl_days(engine or "")

    def _lane(self, tp: TopicPartition) -> _Lane:
        return self._lanes[tp.partition % len(self._lanes)]

    def _full(self, lane: _Lane) -> bool:
        pending = lane.pending
        return pending.rows >= self.options.batch_rows or pending.bytes >= self.options.batch_bytes

    def _due(self) -> bool:
        """Insert when the oldest pending row is old, or soon when there is no backlog: when caught up,
        spans become queryable quickly, and the insert is one for all lanes (few, big parts)."""
        started = [lane.pending.first_at for lane in self._lanes if lane.pending.next_offsets]
        if not started:
            return False
        age = time.monotonic() - min(started)
        return age >= self.options.flush_interval_s or (self._caught_up and age >= self.options.idle_flush_s)

    # ---- writing ----------------------------------------------------------------------------

    async def _flush(self, lane: _Lane, stop: asyncio.Event) -> None:
        """Seal a full lane's batch and start inserting it; reading goes on while ClickHouse stores it.

        The lane's batch before it must be stored first (inserts of a partition stay in order:
        `ingest_offsets` keeps only the highest stored offset per partition, so a later batch must never
        land before an earlier one). Waiting for it here is also the backpressure: while ClickHouse is
        away, each lane holds the batch being retried and one more, and the sink stops reading.
        """
        if not await self._settle(lane):
            return  # stopping while ClickHouse is away: nothing more is stored, Kafka keeps it all
        pending = lane.pending
        if not pending.next_offsets:
            return
        lane.pending = _Pending(self.routes)
        self._start_insert(pending, [lane], stop)

    async def _flush_round(self, stop: asyncio.Event) -> None:
        """Time-based: one insert of every lane's rows, once every lane's last insert is stored.

        Below full batches, concurrency buys nothing and each extra insert costs a part in every table;
        so the lanes' rows go together, and that insert is in flight for every lane (each lane's next
        insert waits for it, which keeps every partition in order)."""
        if not await self._settle_all():
            return
        batches = [lane.pending for lane in self._lanes if lane.pending.next_offsets]
        if not batches:
            return
        combined = batches[0]
        for other in batches[1:]:
            combined.absorb(other)
        for lane in self._lanes:
            lane.pending = _Pending(self.routes)
        self._start_insert(combined, self._lanes, stop)

    def _start_insert(self, batch: _Pending, lanes: list[_Lane], stop: asyncio.Event) -> None:
        task = asyncio.create_task(self._store(batch, stop), name="tracehouse-sink-insert")
        self._inflight_rows[task] = batch.rows
        task.add_done_callback(lambda done: self._inflight_rows.pop(done, None))
        for lane in lanes:
            lane.inflight = task

    async def _flush_all(self, stop: asyncio.Event) -> None:
        """On the way out: insert what every lane holds and wait until all of it is stored."""
        self._final = True
        await self._flush_round(stop)
        await self._settle_all()

    async def _settle(self, lane: _Lane) -> bool:
        """Wait until the lane's insert in flight is stored and committed; False once a batch was given up.

        Shielded: a caller that is cancelled (shutdown, a rebalance callback) does not cancel the insert
        half way; `_abandon_inflight` is the one place that does."""
        task = lane.inflight
        if task is not None:
            stored = await asyncio.shield(task)
            if lane.inflight is task:
                lane.inflight = None
            if not stored:
                self._given_up = True
        return not self._given_up

    async def _settle_all(self) -> bool:
        results = [await self._settle(lane) for lane in self._lanes]
        return all(results)

    async def _abandon_inflight(self) -> None:
        """On the way out (normally nothing is left: the final flush waited): stop inserts still retrying.
        Their offsets are not committed, so Kafka hands their rows over again; `ingest_offsets` skips any
        that did land."""
        tasks = {lane.inflight for lane in self._lanes if lane.inflight is not None}
        for lane in self._lanes:
            lane.inflight = None
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _store(self, batch: _Pending, stop: asyncio.Event) -> bool:
        """Insert every table's rows of one batch, then commit its offsets; False if given up."""
        for buffer in batch.buffers.values():
            if buffer.chunks and not await self._insert_all(buffer, stop):
                return False
        spans_buffer = batch.buffers.get(topics.SPANS)
        if self._exit_before_commit is not None and spans_buffer is not None and spans_buffer.chunks:
            self._exit_before_commit -= 1  # counts batches that carry spans: the topic also holds trace records
            if self._exit_before_commit <= 0:
                log.warning("fault injection: exit after inserting a batch of spans, before its commit")
                os._exit(137)
        self.stats.rows += batch.rows
        self.stats.batches += 1
        self.stats.last_batch_rows = batch.rows
        await self._commit(batch.next_offsets)
        if self.on_flush is not None:
            self.on_flush(batch.rows)
        return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._consumer is None:  # driven without Kafka (tests/benchmarks/sink_throughput.py)
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions; the new owner seeks past the stored offsets.
            log.info("offset commit skipped (%s); stored offsets protect against duplicates", exc)

    async def _insert_all(self, buffer: _Buffer, stop: asyncio.Event) -> bool:
        """Insert a table's rows; what happens on a failure depends on its family (sinks/errors.py).

        The rows go as one insert unless they touch more partitions than the server takes in one block;
        then as consecutive inserts cut by partition (sinks/insert_blocks.py), resumed where they stopped
        after a failure, so a stored piece is not stored again."""
        route = buffer.route
        whole = Piece(buffer.chunks, buffer.counts, buffer.origins, buffer.keys)
        pieces = [whole] if len(buffer.key_set) <= self._block_limit() else self._cut(whole, route)
        delay = self.options.retry_initial_s
        attempts = unknown = 0
        while pieces:
            piece = pieces[0]
            try:
                await self._insert_splitting(
                    route, piece.chunks, piece.counts, piece.origins, unknown >= UNKNOWN_ERROR_ATTEMPTS
                )
                pieces.pop(0)
                continue
            except Exception as exc:
                kind = classify(exc)
                rows = sum(piece.counts)
                if kind is ErrorKind.PARTITIONS and len(set(piece.keys)) > 1:
                    # The server holds a lower limit than it reported (a user profile, a changed setting)
                    self._partition_limit = max(1, min(self._partition_limit, len(set(piece.keys))) // 2)
                    log.warning(
                        "ClickHouse refused an insert of %d rows into %s touching %d partitions (%s);"
                        " cutting inserts to %d partitions",
                        rows,
                        route.table,
                        len(set(piece.keys)),
                        str(exc)[:200],
                        self._block_limit(),
                    )
                    pieces[:1] = self._cut(piece, route)
                    continue
                attempts += 1
                self.stats.retries += 1
                if stop.is_set() and (self._final or attempts >= 3):
                    log.warning("stopping with %d rows not inserted (%s); Kafka keeps them", rows, exc)
                    return False
                if kind is ErrorKind.CONFIGURATION:
                    self._log_configuration_error(route, exc)
                elif kind is ErrorKind.UNKNOWN or kind is ErrorKind.PARTITIONS:
                    unknown += 1
                    log.warning(
                        "insert of %d rows into %s failed with an unclassified error (%s: %s); attempt %d of %d,"
                        " then its rows are split and what ClickHouse still refuses goes to %s",
                        rows,
                        route.table,
                        type(exc).__name__,
                        str(exc)[:300],
                        unknown,
                        UNKNOWN_ERROR_ATTEMPTS,
                        topics.DLQ,
                    )
                    if unknown >= UNKNOWN_ERROR_ATTEMPTS:
                        continue  # now split it like bad content, without waiting
                else:
                    log.warning(
                        "insert of %d rows into %s failed (%s: %s); retry %d in %.1fs",
                        rows,
                        route.table,
                        type(exc).__name__,
                        str(exc)[:200],
                        attempts,
                        delay,
                    )
                await self._sleep(stop, delay * (0.5 + random.random()))
                delay = min(delay * 2, self.options.retry_max_s)
        return True

    def _block_limit(self) -> int:
        """Partitions one insert may touch, counted in UTC days or months (see `_partition_limit`)."""
        return self._partition_limit if self._server_utc else max(1, self._partition_limit // 2)

    def _cut(self, piece: Piece, route: Route) -> list[Piece]:
        pieces = split_by_partition(piece, self._block_limit(), route.offsets_in_rows)
        if len(pieces) > 1:
            log.info(
                "%d rows for %s touch %d partitions, more than one insert may (%d): %d inserts",
                sum(piece.counts),
                route.table,
                len(set(piece.keys)),
                self._block_limit(),
                len(pieces),
            )
        return pieces

    def _log_configuration_error(self, route: Route, exc: BaseException) -> None:
        """Loud but rate-limited: the same fix at most once a minute, while Kafka keeps the data."""
        fix = fix_for(exc)
        now = time.monotonic()
        if now - self._config_logged.get(fix, -CONFIG_ERROR_LOG_EVERY_S) < CONFIG_ERROR_LOG_EVERY_S:
            return
        self._config_logged[fix] = now
        log.error(
            "ClickHouse cannot store into %s.%s: %s. To fix: %s. The sink keeps retrying; nothing is lost"
            " (Kafka holds the data) until the fix is made.",
            self.database,
            route.table,
            str(exc)[:300],
            fix,
        )

    async def _insert_splitting(
        self,
        route: Route,
        chunks: list[bytes],
        counts: list[int],
        origins: list[tuple[int, int]],
        unknown_as_content: bool = False,
    ) -> None:
        """Insert the chunks; if ClickHouse rejects their content, halve until the bad rows are alone.

        `unknown_as_content`: an unclassified error, retried enough, is handled the same way, so one
        poison batch cannot hold its partitions forever."""
        try:
            await self._insert(route, chunks)
        except Exception as exc:
            kind = classify(exc)
            as_content = unknown_as_content and kind in (ErrorKind.UNKNOWN, ErrorKind.PARTITIONS)
            if not (kind is ErrorKind.CONTENT or as_content):
                raise
            if len(chunks) == 1 and counts[0] == 1:
                await self._dead_letter(
                    f"ClickHouse rejected the row: {str(exc)[:2000]}",
                    "sink",
                    readable_row(chunks[0], route.columns),  # the row as a JSON object line
                    TopicPartition(route.topic, origins[0][0]),
                    origins[0][1],
                )
                return
            if len(chunks) == 1:  # one message's rows: split them, one row per line
                lines = chunks[0].split(b"\n")  # JSON escapes newlines inside strings
                lines.pop()  # the empty piece after the last newline
                chunks = [line + b"\n" for line in lines]
                counts = [1] * len(lines)
                origins = origins * len(lines)
            half = len(chunks) // 2
            await self._insert_splitting(route, chunks[:half], counts[:half], origins[:half], unknown_as_content)
            await self._insert_splitting(route, chunks[half:], counts[half:], origins[half:], unknown_as_content)

    async def _insert(self, route: Route, chunks: list[bytes]) -> None:
        """One INSERT whose body streams the chunks (chunked HTTP): nothing is copied into one big body.

        A streamed body is also never replayed by the driver behind our back (it retries only bodies it
        can resend whole); retries are ours, with the same rows, after the failure is known."""
        assert self._client is not None
        await self._client.raw_insert(
            f"`{self.database}`.{route.table}",
            column_names=route.columns,
            insert_block=_stream(chunks),
            fmt=route.fmt,
            settings=INSERT_SETTINGS.get(route.table),
        )

    # ---- recovery ---------------------------------------------------------------------------

    def _forget(self, revoked: set[TopicPartition]) -> None:
        """Drop rows of partitions we no longer own; their next owner reads them again."""
        for tp in revoked:
            self._floor.pop(tp, None)
            self._read.pop(tp, None)
        for lane in self._lanes:
            self._forget_pending(lane.pending, revoked)

    @staticmethod
    def _forget_pending(pending: _Pending, revoked: set[TopicPartition]) -> None:
        if not revoked or not pending.next_offsets:
            return
        for topic, buffer in pending.buffers.items():
            lost = {tp.partition for tp in revoked if tp.topic == topic}
            if not lost:
                continue
            kept = [i for i, origin in enumerate(buffer.origins) if origin[0] not in lost]
            buffer.chunks = [buffer.chunks[i] for i in kept]
            buffer.counts = [buffer.counts[i] for i in kept]
            buffer.origins = [buffer.origins[i] for i in kept]
            buffer.keys = [buffer.keys[i] for i in kept]
            buffer.key_set = set(buffer.keys)
        pending.rows = sum(sum(b.counts) for b in pending.buffers.values())
        pending.bytes = sum(len(c) for b in pending.buffers.values() for c in b.chunks)
        for tp in revoked:
            pending.next_offsets.pop(tp, None)

    async def _seek_past_stored(self, assigned: list[TopicPartition]) -> None:
        spans = [tp for tp in assigned if tp.topic == topics.SPANS]
        if not spans or self._consumer is None or self._client is None:
            return
        stored = await self._stored_offsets()
        for tp in spans:
            if tp.partition not in stored:
                continue
            resume = stored[tp.partition] + 1
            committed = await self._consumer.committed(tp)
            if committed is None or committed < resume:
                log.info(
                    "partition %d: ClickHouse holds offsets up to %d; resuming at %d (committed %s)",
                    tp.partition,
                    resume - 1,
                    resume,
                    committed,
                )
                self._consumer.seek(tp, resume)
                self._floor[tp] = resume

    async def _stored_offsets(self) -> dict[int, int]:
        assert self._client is not None
        delay = self.options.retry_initial_s
        while True:
            try:
                result = await self._client.query(
                    f"SELECT partition, max(max_offset) FROM `{self.database}`.ingest_offsets"
                    " WHERE topic = {topic:String} GROUP BY partition",
                    parameters={"topic": topics.SPANS},
                )
                return {int(p): int(o) for p, o in result.result_rows}
            except Exception as exc:
                # Without knowing what is stored we must not read: we could insert twice.
                log.warning("cannot read stored offsets (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.retry_max_s)

    # ---- helpers ----------------------------------------------------------------------------

    async def _dead_letter(
        self, reason: str, stage: str, payload: bytes, tp: TopicPartition, offset: int
    ) -> None:
        assert self._dlq is not None
        letter = DeadLetter(
            reason=reason,
            stage=stage,
            payload=payload,
            source_topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            time_ns=time.time_ns(),
        )
        await self._dlq.send_and_wait(topics.DLQ, encode_dead_letter(letter))
        self.stats.dead_letters += 1
        log.warning(
            "dead-lettered %s record from %s[%d]@%d: %s", stage, tp.topic, tp.partition, offset, reason
        )

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition (from the last fetch's high watermark)."""
        if self._consumer is None:
            return {}
        out = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                out[tp] = max(highwater - self._read.get(tp, highwater), 0)
        return out

    def samples(self) -> list[Sample]:
        s = self.stats
        out: list[Sample] = [
            ("tracehouse_sink_rows_total", {}, s.rows),
            ("tracehouse_sink_batches_total", {}, s.batches),
            ("tracehouse_sink_retries_total", {}, s.retries),
            ("tracehouse_sink_dead_letters_total", {}, s.dead_letters),
            ("tracehouse_sink_invalid_records_total", {}, s.invalid),
            ("tracehouse_sink_last_batch_rows", {}, s.last_batch_rows),
            ("tracehouse_sink_rows_per_second", {}, round(s.rate(), 1)),
            ("tracehouse_sink_pending_rows", {}, self._pending_rows()),
        ]
        for tp, lag in sorted(self.lag().items()):
            out.append(("tracehouse_sink_lag_messages", {"topic": tp.topic, "partition": str(tp.partition)}, lag))
        return out

    def _pending_rows(self) -> int:
        return sum(lane.pending.rows for lane in self._lanes) + sum(self._inflight_rows.values())

    def _log_stats(self) -> None:
        s = self.stats
        log.info(
            "sink: %d rows in %d batches (%.0f rows/s), last batch %d rows, %d retries, %d dead letters, lag %d",
            s.rows,
            s.batches,
            s.rate(),
            s.last_batch_rows,
            s.retries,
            s.dead_letters,
            sum(self.lag().values()),
        )

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
