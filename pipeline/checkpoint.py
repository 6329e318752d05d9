"""Crash safety for in-memory stream state without a Table write per span.

Per-span Table updates cap a Faust worker near 1,000 spans/s (each one writes the changelog), so the
worker keeps open traces and windows in memory and makes them recoverable in two cheap ways:

- **Replay from a safe offset.** A Kafka message is acknowledged to Faust (and so committed) only when
  nothing in memory still depends on it: below the first offset of the oldest open trace. After a crash,
  the next owner of the partition re-reads from there and rebuilds every open trace. Trace records that
  were already emitted and are partly re-read come out with fewer spans, i.e. a lower `version`, and lose
  to the complete record in ClickHouse's ReplacingMergeTree(version).
- **Bounded-rate snapshots.** Window aggregates cannot be rebuilt by replay (their spans may be long
  committed), so each partition's windows are written to a Faust Table (changelog-backed) every few
  seconds, together with `next_offset`: the snapshot reflects exactly the spans below it, so a restarted
  worker adds to windows only spans at or above it. One Table write per partition per interval, whatever
  the span rate.

Faust flushes its producer before committing offsets, so a snapshot written before the acks that it
allows is on Kafka before those offsets are committed.
"""

from __future__ import annotations

import collections
from typing import Any

import msgspec


class PartitionCheckpoint(msgspec.Struct):
    """One partition's recoverable state, as stored in the worker's Faust Table."""

    partition: int
    next_offset: int  # the windows reflect every span below this offset, and none above
    safe_offset: int  # the replay point when the snapshot was taken (for operators)
    windows: bytes  # the window aggregator's own snapshot
    written_at_ns: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PartitionCheckpoint)


def encode_checkpoint(checkpoint: PartitionCheckpoint) -> bytes:
    return _encoder.encode(checkpoint)


def decode_checkpoint(data: bytes) -> PartitionCheckpoint:
    return _decoder.decode(data)


class HeldEvents:
    """Faust events processed but not yet safe to acknowledge, per partition, oldest first.

    Their payloads are released as soon as they are processed, so holding an event costs a few hundred
    bytes, not the size of the message.
    """

    def __init__(self) -> None:
        self._held: dict[int, collections.deque[tuple[int, Any]]] = {}

    def hold(self, partition: int, offset: int, event: Any) -> None:
        event.value = None
        event.message.value = None
        self._held.setdefault(partition, collections.deque()).append((offset, event))

    def count(self, partition: int | None = None) -> int:
        if partition is not None:
            return len(self._held.get(partition, ()))
        return sum(len(q) for q in self._held.values())

    async def release_below(self, stream: Any, partition: int, offset: int) -> int:
        """Acknowledge held events of `partition` with offsets below `offset`; returns how many."""
        queue = self._held.get(partition)
        released = 0
        while queue and queue[0][0] < offset:
            _, event = queue.popleft()
            await stream.ack(event)
            released += 1
        return released

    def drop(self, partition: int) -> None:
        """Forget a revoked partition's events: its next owner replays them."""
        self._held.pop(partition, None)
