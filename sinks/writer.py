"""The sink's writer: a sealed batch into ClickHouse, then its offsets into Kafka, with nothing lost.

- Offsets are committed only after ClickHouse acknowledged every table's insert (`store`), and every
  span row carries its Kafka partition and offset, so the highest stored offset per partition can be
  read back (`stored_offsets`) and the consumer can seek past it: each span lands exactly once.
- No insert touches more partitions than the server allows in one block (`max_partitions_per_insert_block`,
  read from it): a batch over the limit is cut by partition, in an order that keeps the exactly-once
  argument (sinks/insert_blocks.py).
- Every failure is classified (sinks/errors.py): transient ones are retried with backoff while Kafka
  holds the data, configuration ones wait for an operator with a loud error naming the fix, content ones
  are found by halving the batch until the bad rows are alone, and those rows go to `tracehouse.dlq` with
  the reason; an unclassified one is retried a bounded number of times and then split like bad content,
  so one poison batch cannot hold its partitions forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaProducer, TopicPartition
from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core import settings, topics
from tracehouse.core.retry import Backoff, Outcome, Policy, retry
from tracehouse.core.schema import DeadLetter, encode_dead_letter
from tracehouse.sinks.batching import Batch, TableBuffer
from tracehouse.sinks.ddl import ttl_days
from tracehouse.sinks.errors import ErrorKind, classify, fix_for
from tracehouse.sinks.insert_blocks import Piece, split_by_partition
from tracehouse.sinks.options import SinkOptions, SinkStats
from tracehouse.sinks.routes import Retention, Route
from tracehouse.sinks.rows import readable_row

log = logging.getLogger("tracehouse.sink")

# Per-table insert settings. `spans` is a ReplacingMergeTree: by default every insert also collapses
# duplicate keys within its own block, a second pass over the whole batch that costs about as much as the
# rest of the insert. The sink stores each Kafka offset once, so the only duplicates are spans a producer
# sent twice, and those collapse on merge (queries that must be exact use FINAL) either way.
INSERT_SETTINGS: dict[str, dict[str, object]] = {"spans": {"optimize_on_insert": 0}}

DEFAULT_PARTITION_LIMIT = 100  # ClickHouse's default max_partitions_per_insert_block, until the server says
SERVER_FACTS_EVERY_S = 60.0  # how often the partition limit, time zone and TTL are read again
UNKNOWN_ERROR_ATTEMPTS = 6  # an unclassified failure is retried this often, then treated as bad content
CONFIG_ERROR_LOG_EVERY_S = 60.0  # a configuration error is logged loudly at most this often
# Fault injection for tests: die like SIGKILL right between an insert and its offset commit, the one
# moment that decides exactly-once. Never set in production.
FAULT_EXIT_BEFORE_COMMIT = settings.FAULT_EXIT_BEFORE_COMMIT.name


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class Writer:
    """Inserts batches into ClickHouse, splits them by partition or to isolate bad rows, dead-letters what
    cannot be stored, and commits the offsets of what was. `client` and `dlq` are set once connected."""

    def __init__(self, database: str, options: SinkOptions, stats: SinkStats, retention: Retention) -> None:
        self.database = database
        self.options = options
        self.stats = stats
        self.retention = retention  # the `spans` TTL, read from ClickHouse with the other server facts
        self.client: AsyncClient | None = None
        self.dlq: AIOKafkaProducer | None = None
        self.final = False  # the final flush is under way: give up on the first failed retry
        self._exit_before_commit = settings.get(settings.FAULT_EXIT_BEFORE_COMMIT)
        # What the server allows per insert block (read from it; lowered if it refuses a block anyway), and
        # whether its time zone is UTC: partition keys are UTC days and months, and a local day or month
        # overlaps two of them, so under another zone an insert may hold only half as many.
        self.partition_limit = DEFAULT_PARTITION_LIMIT
        self._server_utc = False
        self._facts_due = 0.0
        self._config_logged: dict[str, float] = {}  # fix -> when it was last logged

    def retry_policy(self, max_s: float | None = None) -> Policy:
        """The sink's backoff (core.retry): `retry_initial_s` doubling up to `retry_max_s` (or `max_s`)."""
        cap = self.options.retry_max_s if max_s is None else min(max_s, self.options.retry_max_s)
        return Policy(initial_s=self.options.retry_initial_s, max_s=cap)

    # ---- server facts -----------------------------------------------------------------------

    async def refresh_server_facts(self) -> None:
        """Read the server facts when they are due (at most once a minute)."""
        if time.monotonic() >= self._facts_due:
            await self._read_server_facts()

    async def _read_server_facts(self) -> None:
        """Read what the server allows per insert block, its time zone and the `spans` TTL (every minute:
        an operator may change them). On failure keep what is known; the insert path says what is wrong."""
        self._facts_due = time.monotonic() + SERVER_FACTS_EVERY_S
        if self.client is None:
            return
        try:
            result = await self.client.query(
                "SELECT toUInt64(getSetting('max_partitions_per_insert_block')), timezone(),"
                " (SELECT any(engine_full) FROM system.tables WHERE database = {db:String} AND name = 'spans')",
                parameters={"db": self.database},
            )
        except Exception as exc:
            log.info("cannot read the server's insert limits yet (%s); assuming the defaults", exc)
            return
        limit, zone, engine = result.result_rows[0]
        self.partition_limit = int(limit) or 1_000_000  # 0: unlimited
        self._server_utc = zone in ("UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Universal", "Zulu")
        self.retention.days = ttl_days(engine or "")

    # ---- storing a batch --------------------------------------------------------------------

    async def store(
        self,
        batch: Batch,
        stop: asyncio.Event,
        commit: Callable[[dict[TopicPartition, int]], Awaitable[None]],
    ) -> bool:
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
        await commit(batch.next_offsets)
        return True

    async def _insert_all(self, buffer: TableBuffer, stop: asyncio.Event) -> bool:
        """Insert a table's rows; what happens on a failure depends on its family (sinks/errors.py).

        The rows go as one insert unless they touch more partitions than the server takes in one block;
        then as consecutive inserts cut by partition (sinks/insert_blocks.py), resumed where they stopped
        after a failure, so a stored piece is not stored again."""
        route = buffer.route
        whole = Piece(buffer.chunks, buffer.counts, buffer.origins, buffer.keys)
        pieces = [whole] if len(buffer.key_set) <= self._block_limit() else self._cut(whole, route)
        backoff = Backoff(self.retry_policy(), stop)
        unknown = 0
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
                    self.partition_limit = max(1, min(self.partition_limit, len(set(piece.keys))) // 2)
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
                delay = backoff.failed()
                self.stats.retries += 1
                if backoff.stopped and (self.final or backoff.failures >= 3):
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
                        backoff.failures,
                        delay,
                    )
                await backoff.sleep(delay)  # cut short by `stop`: the next failure then gives up
        return True

    def _block_limit(self) -> int:
        """Partitions one insert may touch, counted in UTC days or months (see `partition_limit`)."""
        return self.partition_limit if self._server_utc else max(1, self.partition_limit // 2)

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
            await self.insert(route, chunks)
        except Exception as exc:
            kind = classify(exc)
            as_content = unknown_as_content and kind in (ErrorKind.UNKNOWN, ErrorKind.PARTITIONS)
            if not (kind is ErrorKind.CONTENT or as_content):
                raise
            if len(chunks) == 1 and counts[0] == 1:
                await self.dead_letter(
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

    async def insert(self, route: Route, chunks: list[bytes]) -> None:
        """One INSERT whose body streams the chunks (chunked HTTP): nothing is copied into one big body.

        A streamed body is also never replayed by the driver behind our back (it retries only bodies it
        can resend whole); retries are ours, with the same rows, after the failure is known."""
        assert self.client is not None
        await self.client.raw_insert(
            f"`{self.database}`.{route.table}",
            column_names=route.columns,
            insert_block=_stream(chunks),
            fmt=route.fmt,
            settings=INSERT_SETTINGS.get(route.table),
        )

    # ---- what is stored, and what cannot be -------------------------------------------------

    async def stored_offsets(self) -> dict[int, int]:
        """The highest offset of `tracehouse.spans` ClickHouse holds, per partition (`ingest_offsets`)."""
        client = self.client
        assert client is not None

        async def read() -> dict[int, int]:
            result = await client.query(
                f"SELECT partition, max(max_offset) FROM `{self.database}`.ingest_offsets"
                " WHERE topic = {topic:String} GROUP BY partition",
                parameters={"topic": topics.SPANS},
            )
            return {int(p): int(o) for p, o in result.result_rows}

        def said(exc: BaseException, failures: int, delay: float) -> None:
            log.warning("cannot read stored offsets (%s); retrying in %.1fs", exc, delay)

        # Without knowing what is stored we must not read: we could insert twice. So every failure is
        # waited out, with no stop (a rebalance callback awaits this).
        return await retry(read, lambda exc: Outcome.RETRIABLE, self.retry_policy(), on_retry=said)

    async def dead_letter(self, reason: str, stage: str, payload: bytes, tp: TopicPartition, offset: int) -> None:
        assert self.dlq is not None
        letter = DeadLetter(
            reason=reason,
            stage=stage,
            payload=payload,
            source_topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            time_ns=time.time_ns(),
        )
        await self.dlq.send_and_wait(topics.DLQ, encode_dead_letter(letter))
        self.stats.dead_letters += 1
        log.warning("dead-lettered %s record from %s[%d]@%d: %s", stage, tp.topic, tp.partition, offset, reason)
