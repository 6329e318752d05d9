"""The sink's consumer loop: read the pipeline's topics, fill each lane's batch, and hand sealed batches to
the writer (sinks/writer.py), keeping every partition's inserts in order.

- When partitions are assigned (start, restart after a crash, rebalance) the loop seeks past what
  ClickHouse already holds (`Writer.stored_offsets`), so a batch inserted but not yet committed is not
  inserted twice; on revocation it lets the batch in flight land and commit, and drops the rest.
- While ClickHouse is away the writer retries and the loop stops reading (Kafka holds the data; memory
  stays at two batches per lane).
- Lanes: each Kafka partition belongs to one lane (partition % lanes), and a lane inserts one batch at a
  time, in order, committing its offsets only after it is stored, so per partition the exactly-once
  argument is unchanged. Under a backlog each lane reads and encodes its next batch while its last one is
  being inserted; without one (batches sent because of their age, not their size) the lanes' rows go as
  one insert, in flight for every lane: concurrency would only cut the parts smaller.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.retry import GaveUp, Outcome, retry
from tracehouse.core.topic_admin import wait_for_topics
from tracehouse.sinks.batching import Batch, Lane
from tracehouse.sinks.clickhouse import async_client
from tracehouse.sinks.metrics import MetricsServer
from tracehouse.sinks.options import SinkOptions, SinkStats
from tracehouse.sinks.routes import Route
from tracehouse.sinks.writer import Writer

log = logging.getLogger("tracehouse.sink")

FETCH_RECORDS = 500  # Kafka messages per fetch; a fetch this full means there is a backlog


class _SeekPastStored(ConsumerRebalanceListener):
    """On assignment, skip offsets whose rows ClickHouse already holds; on revocation, drop their rows."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.loop.assigned = False  # not ready during a rebalance
        # Let the batch being inserted land and commit while we still own its partitions; the next owner
        # then resumes after it (by the committed offset or by `ingest_offsets`).
        await self.loop.settle_all()
        self.loop.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.loop.seek_past_stored(assigned)
        self.loop.assigned = True


class ConsumerLoop:
    """Reads Kafka into the lanes' batches and starts their inserts; owns the consumer and the lanes."""

    def __init__(
        self,
        settings: Settings,
        options: SinkOptions,
        routes: list[Route],
        stats: SinkStats,
        writer: Writer,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.routes = routes
        self.stats = stats
        self.writer = writer
        self.on_flush = on_flush
        self.lanes = [Lane(Batch(routes)) for _ in range(max(1, options.insert_lanes))]
        self.consumer: AIOKafkaConsumer | None = None
        self._caught_up = False
        self._read: dict[TopicPartition, int] = {}  # next offset to read, per partition (for lag)
        # Lowest offset still to be read per owned partition; set on assignment, reset on revocation.
        self.floor: dict[TopicPartition, int] = {}
        self._inflight_rows: dict[asyncio.Task[bool], int] = {}  # rows of each insert in flight
        self._given_up = False  # a batch was abandoned while stopping: store nothing after it
        # What `readiness()` reports (the health endpoints): set as startup and rebalances progress.
        self._stop: asyncio.Event | None = None
        self.waiting_for = "Kafka topics"  # what startup waits for; "" once consuming
        self.assigned = False  # partitions assigned and positioned since the last revocation

    # ---- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, metrics: MetricsServer | None, log_stats: Callable[[], None]) -> None:
        """Consume until `stop` is set, then flush what is pending and commit.

        Started before `tracehouse migrate` created the topics, it waits for them (one light metadata
        request a second) and subscribes once they exist: aiokafka would otherwise notice them only at
        its next metadata refresh, minutes later."""
        self._stop = stop
        security = kafka_client_options()
        self.waiting_for = "Kafka topics"
        names = [r.topic for r in self.routes]
        if not await wait_for_topics(self.settings.kafka_bootstrap, names, who="sink", security=security, stop=stop):
            return
        self.waiting_for = "ClickHouse"
        client = await self._connect_clickhouse(stop)
        if client is None:
            return
        self.writer.client = client
        self.waiting_for = ""
        dlq = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, linger_ms=5, **security)
        self.writer.dlq = dlq
        consumer = self.consumer = AIOKafkaConsumer(
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
        await dlq.start()
        await consumer.start()
        consumer.subscribe(names, listener=_SeekPastStored(self))
        if metrics is not None:
            await metrics.start()
        last_stats = time.monotonic()
        if self.options.gc_freeze:
            gc.freeze()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=FETCH_RECORDS)
                self._caught_up = sum(len(m) for m in batch.values()) < FETCH_RECORDS
                for tp, messages in batch.items():
                    lane = self.lane(tp)
                    for message in messages:
                        await self.add(tp, message.offset, message.value, message.timestamp)
                        if self.full(lane):  # a message carries hundreds of rows: check after each
                            await self.flush(lane, stop)
                if self._due():
                    await self._flush_round(stop)
                now = time.monotonic()
                if now - last_stats >= self.options.stats_interval_s:
                    last_stats = now
                    log_stats()
            await self.flush_all(stop)
        finally:
            await self._abandon_inflight()
            if self.options.gc_freeze:
                gc.unfreeze()
            if metrics is not None:
                await metrics.stop()
            await consumer.stop()
            await dlq.stop()
            await client.close()

    async def _connect_clickhouse(self, stop: asyncio.Event) -> AsyncClient | None:
        """Connect, waiting as long as it takes (ClickHouse down, or its database not made by `migrate` yet).

        Said once, then retried at most every 2 s: a sink started before `migrate` starts soon after it.
        Every failure is retriable here (connection refused, DNS, auth, no database yet): whatever it is, an
        operator's fix or a server coming up ends it, and `stop` ends the wait."""
        url = self.settings.clickhouse_url
        failed = False

        def said(exc: BaseException, failures: int, delay: float) -> None:
            nonlocal failed
            if not failed:
                failed = True
                log.warning("ClickHouse at %s not ready (%s); retrying until it is", url, exc)

        if stop.is_set():
            return None
        try:
            client = await retry(
                lambda: async_client(self.settings.clickhouse),
                lambda exc: Outcome.RETRIABLE,
                self.writer.retry_policy(max_s=2.0),
                stop=stop,
                on_retry=said,
            )
        except GaveUp:
            return None
        if failed:
            log.info("ClickHouse at %s ready", url)
        return client

    def readiness(self) -> tuple[bool, str, dict[str, object]]:
        """Ready once the sink consumes its assigned partitions (for `/health/ready`)."""
        assigned = len(self.consumer.assignment()) if self.consumer is not None else 0
        details: dict[str, object] = {"partitions": assigned}
        if self._stop is not None and self._stop.is_set():
            return False, "stopping", details
        if self.waiting_for:
            return False, f"waiting for {self.waiting_for}", details
        if not self.assigned:
            return False, "waiting for partition assignment", details
        return True, "", details

    # ---- reading ----------------------------------------------------------------------------

    async def add(self, tp: TopicPartition, offset: int, value: bytes | None, timestamp_ms: int | None = None) -> None:
        """One Kafka message into its lane's batch: decoded, validated, encoded; rejects dead-lettered."""
        if offset < self.floor.get(tp, 0):
            # Already stored (below the resume point), or already read in this assignment: a fetch that
            # raced the seek on assignment hands such messages over once more. Never insert them twice.
            return
        self.floor[tp] = offset + 1
        pending = self.lane(tp).pending
        pending.mark_read(tp, offset)
        self._read[tp] = offset + 1
        if value is None:
            return
        await self.writer.refresh_server_facts()
        buffer = pending.buffers[tp.topic]
        # The record's time is the reference for core.timestamps (the worker reads the same record)
        received_ns = timestamp_ms * 1_000_000 if timestamp_ms and timestamp_ms > 0 else time.time_ns()
        rows, rejected = buffer.route.decode(value, tp.partition, offset, received_ns)
        if rejected:
            letters = []
            for bad in rejected:
                if bad.refused:  # valid, but its time is outside what is stored: only the sink knows the TTL
                    self.stats.refused += 1
                    letters.append(self.writer.dead_letter(bad.reason, "sink", bad.payload, tp, offset))
                    continue
                self.stats.invalid += 1
                if self.options.dead_letter_invalid or tp.topic != topics.SPANS:
                    letters.append(self.writer.dead_letter(bad.reason, "decode", bad.payload, tp, offset))
            await asyncio.gather(*letters)  # concurrently: the producer sends them in a few requests
        if rows:
            pending.add_rows(buffer, rows, (tp.partition, offset))

    def lane(self, tp: TopicPartition) -> Lane:
        return self.lanes[tp.partition % len(self.lanes)]

    def full(self, lane: Lane) -> bool:
        return lane.pending.full(self.options.batch_rows, self.options.batch_bytes)

    def _due(self) -> bool:
        """Insert when the oldest pending row is old, or soon when there is no backlog: when caught up,
        spans become queryable quickly, and the insert is one for all lanes (few, big parts)."""
        started = [lane.pending.first_at for lane in self.lanes if lane.pending.next_offsets]
        if not started:
            return False
        age = time.monotonic() - min(started)
        return age >= self.options.flush_interval_s or (self._caught_up and age >= self.options.idle_flush_s)

    # ---- handing batches to the writer ------------------------------------------------------

    async def flush(self, lane: Lane, stop: asyncio.Event) -> None:
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
        lane.pending = Batch(self.routes)
        self._start_insert(pending, [lane], stop)

    async def _flush_round(self, stop: asyncio.Event) -> None:
        """Time-based: one insert of every lane's rows, once every lane's last insert is stored.

        Below full batches, concurrency buys nothing and each extra insert costs a part in every table;
        so the lanes' rows go together, and that insert is in flight for every lane (each lane's next
        insert waits for it, which keeps every partition in order)."""
        if not await self.settle_all():
            return
        batches = [lane.pending for lane in self.lanes if lane.pending.next_offsets]
        if not batches:
            return
        combined = batches[0]
        for other in batches[1:]:
            combined.absorb(other)
        for lane in self.lanes:
            lane.pending = Batch(self.routes)
        self._start_insert(combined, self.lanes, stop)

    def _start_insert(self, batch: Batch, lanes: list[Lane], stop: asyncio.Event) -> None:
        task = asyncio.create_task(self._store(batch, stop), name="tracehouse-sink-insert")
        self._inflight_rows[task] = batch.rows
        task.add_done_callback(lambda done: self._inflight_rows.pop(done, None))
        for lane in lanes:
            lane.inflight = task

    async def _store(self, batch: Batch, stop: asyncio.Event) -> bool:
        if not await self.writer.store(batch, stop, self._commit):
            return False
        if self.on_flush is not None:
            self.on_flush(batch.rows)
        return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.consumer is None:  # driven without Kafka (tests/benchmarks/sink_throughput.py)
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions; the new owner seeks past the stored offsets.
            log.info("offset commit skipped (%s); stored offsets protect against duplicates", exc)

    async def flush_all(self, stop: asyncio.Event) -> None:
        """On the way out: insert what every lane holds and wait until all of it is stored."""
        self.writer.final = True
        await self._flush_round(stop)
        await self.settle_all()

    async def _settle(self, lane: Lane) -> bool:
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

    async def settle_all(self) -> bool:
        results = [await self._settle(lane) for lane in self.lanes]
        return all(results)

    async def _abandon_inflight(self) -> None:
        """On the way out (normally nothing is left: the final flush waited): stop inserts still retrying.
        Their offsets are not committed, so Kafka hands their rows over again; `ingest_offsets` skips any
        that did land."""
        tasks = {lane.inflight for lane in self.lanes if lane.inflight is not None}
        for lane in self.lanes:
            lane.inflight = None
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ---- rebalances -------------------------------------------------------------------------

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Drop rows of partitions we no longer own; their next owner reads them again."""
        for tp in revoked:
            self.floor.pop(tp, None)
            self._read.pop(tp, None)
        for lane in self.lanes:
            lane.pending.forget(revoked)

    async def seek_past_stored(self, assigned: list[TopicPartition]) -> None:
        spans = [tp for tp in assigned if tp.topic == topics.SPANS]
        if not spans or self.consumer is None or self.writer.client is None:
            return
        stored = await self.writer.stored_offsets()
        for tp in spans:
            if tp.partition not in stored:
                continue
            resume = stored[tp.partition] + 1
            committed = await self.consumer.committed(tp)
            if committed is None or committed < resume:
                log.info(
                    "partition %d: ClickHouse holds offsets up to %d; resuming at %d (committed %s)",
                    tp.partition,
                    resume - 1,
                    resume,
                    committed,
                )
                self.consumer.seek(tp, resume)
                self.floor[tp] = resume

    # ---- progress ---------------------------------------------------------------------------

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition (from the last fetch's high watermark)."""
        if self.consumer is None:
            return {}
        out = {}
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                out[tp] = max(highwater - self._read.get(tp, highwater), 0)
        return out

    def pending_rows(self) -> int:
        """Rows read but not yet stored: the batches being built and the ones being inserted."""
        return sum(lane.pending.rows for lane in self.lanes) + sum(self._inflight_rows.values())
