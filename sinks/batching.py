"""The sink's batches: rows read from Kafka but not yet in ClickHouse, encoded as they arrive, grouped
by table and by table partition, with the Kafka offsets to commit once they are stored; and the lanes
that share the partitions between concurrent inserts.

Each message's rows are encoded as soon as they are read and held as bytes (JSON lines), not as Python
objects, so the garbage collector has nothing to scan; a batch ClickHouse rejects for its content is
split into rows only then, by the writer (sinks/writer.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import msgspec
from aiokafka import TopicPartition

from tracehouse.sinks.routes import Route
from tracehouse.sinks.rows import encode_rows


@dataclass
class TableBuffer:
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


class Batch:
    """Everything read since the last commit, and the offsets to commit once it is stored."""

    def __init__(self, routes: list[Route]) -> None:
        self.buffers = {route.topic: TableBuffer(route) for route in routes}
        self.next_offsets: dict[TopicPartition, int] = {}
        self.bytes = 0
        self.rows = 0
        self.first_at = 0.0

    def mark_read(self, tp: TopicPartition, offset: int) -> None:
        """Count a message as read: its offset is committed with this batch, even if it holds no rows."""
        if not self.next_offsets:
            self.first_at = time.monotonic()
        self.next_offsets[tp] = offset + 1

    def add_rows(self, buffer: TableBuffer, rows: list[msgspec.Struct], origin: tuple[int, int]) -> None:
        """Encode one message's rows into `buffer`: one chunk, or one per table partition they touch, so
        that an insert can be cut by partition."""
        route = buffer.route
        key_of = route.partition_key
        if route.partition_keys is not None:
            keys = route.partition_keys(rows)
        else:
            keys = {key_of(row) for row in rows} if key_of is not None else {0}
        if len(keys) == 1:  # the common case: the message's rows are in one partition, one chunk
            self._append(buffer, rows, origin, keys.pop())
        else:
            assert key_of is not None
            by_key: dict[int, list[msgspec.Struct]] = {}
            for row in rows:
                by_key.setdefault(key_of(row), []).append(row)
            for key, group in by_key.items():
                self._append(buffer, group, origin, key)
        self.rows += len(rows)

    def _append(self, buffer: TableBuffer, rows: list[msgspec.Struct], origin: tuple[int, int], key: int) -> None:
        encoded = encode_rows(rows)
        buffer.chunks.append(encoded)
        buffer.counts.append(len(rows))
        buffer.origins.append(origin)
        buffer.keys.append(key)
        buffer.key_set.add(key)
        self.bytes += len(encoded)

    def full(self, max_rows: int, max_bytes: int) -> bool:
        return self.rows >= max_rows or self.bytes >= max_bytes

    def absorb(self, other: Batch) -> None:
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

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Drop the rows and offsets of partitions no longer ours; their next owner reads them again."""
        if not revoked or not self.next_offsets:
            return
        for topic, buffer in self.buffers.items():
            lost = {tp.partition for tp in revoked if tp.topic == topic}
            if not lost:
                continue
            kept = [i for i, origin in enumerate(buffer.origins) if origin[0] not in lost]
            buffer.chunks = [buffer.chunks[i] for i in kept]
            buffer.counts = [buffer.counts[i] for i in kept]
            buffer.origins = [buffer.origins[i] for i in kept]
            buffer.keys = [buffer.keys[i] for i in kept]
            buffer.key_set = set(buffer.keys)
        self.rows = sum(sum(b.counts) for b in self.buffers.values())
        self.bytes = sum(len(c) for b in self.buffers.values() for c in b.chunks)
        for tp in revoked:
            self.next_offsets.pop(tp, None)


@dataclass
class Lane:
    """A share of the partitions: the batch being built for them and the one being inserted (at most one,
    so their inserts stay in order)."""

    pending: Batch
    # The insert of the lane's last batch; a time-based insert of every lane's rows is shared by all lanes
    inflight: asyncio.Task[bool] | None = None
