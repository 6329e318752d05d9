"""What the worker does with each message of `tracehouse.scores`, free of Faust like the span processor.

Per message: decode (an invalid score is skipped and counted: the sink dead-letters it, once, with its
reason), look up each score's trace where this worker holds the trace's spans (same partition number:
`core/topics.py` co-partitions scores with spans), and count it in the partition's score windows
(pipeline/score_windows.py). Per tick: send the closed windows' records to the merger, on the spans'
partials topic (core/rollups.py `RollupPartialBatch.scores`). Per checkpoint interval: snapshot the
windows with the next offset, then acknowledge the messages below it, the rule of pipeline/checkpoint.py:
a restarted worker restores the snapshot and counts only the scores at or above its offset, so it
neither loses nor double counts a score.

One rule more than the spans' windows: a snapshot is also written just before each emission, so an
emitted record never counts a score above the latest snapshot's offset. A span replayed after a crash
falls in the same group as before; a score may not (its trace's service and model come from the
worker's memory, which a restart empties: then it counts under OTHER), and it must not be counted once
in an emitted record of its old group and again in OTHER. Windows close every 10 s, so this adds a
snapshot per partition per window at most.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from tracehouse.core.rollups import OTHER, encode_partials
from tracehouse.core.schema import SchemaError
from tracehouse.core.scores import decode_score_batch
from tracehouse.pipeline.checkpoint import HeldEvents
from tracehouse.pipeline.partition_windows import WindowOptions
from tracehouse.pipeline.processor import Sendable, write_snapshot
from tracehouse.pipeline.score_windows import ScoreWindows

log = logging.getLogger("tracehouse.worker")

# (partition, trace id) -> the trace's (service, model), or None when this worker does not know it
TraceLookup = Callable[[int, str], "tuple[str, str] | None"]


class _Snapshot(msgspec.Struct):
    next_offset: int  # the windows count every score below this offset of the partition, none above
    windows: bytes


@dataclass
class ScoreProcessorStats:
    messages: int = 0
    scores: int = 0
    rejected: int = 0  # invalid records: skipped here, dead-lettered by the sink
    replayed: int = 0  # below the restored snapshot's offset: already counted
    checkpoints: int = 0


class _Partition:
    def __init__(self, windows: ScoreWindows, floor: int) -> None:
        self.windows = windows
        self.floor = floor
        self.next_offset = floor
        self.dirty = False
        self.last_checkpoint = time.monotonic()


def checkpoint_key(partition: int) -> bytes:
    """The score windows' key in the worker's state table (beside the spans' `spans-<p>`)."""
    return f"scores-{partition}".encode()


class ScoreProcessor:
    """Folds the scores of the partitions this worker owns into windows."""

    def __init__(
        self,
        *,
        partials_out: Sendable | None,
        lookup: TraceLookup,
        options: WindowOptions | None = None,
        checkpoint_interval_s: float = 5.0,
        windows_factory: Callable[[int], ScoreWindows] | None = None,
    ) -> None:
        self.partials_out = partials_out
        self.lookup = lookup
        self.options = options or WindowOptions()
        self.checkpoint_interval_s = checkpoint_interval_s
        self.windows_factory = windows_factory or self._new_windows
        self.stats = ScoreProcessorStats()
        self.held = HeldEvents()
        self.stream: Any = None
        self.table: Any = None
        self._partitions: dict[int, _Partition] = {}

    def _new_windows(self, partition: int) -> ScoreWindows:
        opts = self.options
        return ScoreWindows(partition, opts.sizes, opts.grace_s, opts.retention)

    def attach(self, stream: Any, table: Any) -> None:
        self.stream = stream
        self.table = table

    def revoke(self, partitions: set[int]) -> None:
        """Forget revoked partitions; their next owner restores the snapshot and replays the rest."""
        for partition in partitions:
            self._partitions.pop(partition, None)
            self.held.drop(partition)

    def _partition(self, partition: int) -> _Partition:
        state = self._partitions.get(partition)
        if state is None:
            raw = self.table.get(checkpoint_key(partition)) if self.table is not None else None
            if raw:
                snapshot = msgspec.msgpack.decode(raw, type=_Snapshot)
                state = _Partition(ScoreWindows.from_state(snapshot.windows), snapshot.next_offset)
            else:
                state = _Partition(self.windows_factory(partition), 0)
            self._partitions[partition] = state
            log.info("scores partition %d: windows %s", partition, f"restored to {state.floor}" if raw else "new")
        return state

    async def on_event(self, event: Any) -> None:
        """Process one Faust event of `tracehouse.scores`, then hold it until a snapshot covers it."""
        message = event.message
        self.on_message(message.partition, message.offset, message.value)
        self.held.hold(message.partition, message.offset, event)

    def on_message(self, partition: int, offset: int, value: bytes | None) -> None:
        state = self._partition(partition)
        self.stats.messages += 1
        state.next_offset = offset + 1
        if not value:
            return
        if offset < state.floor:
            self.stats.replayed += 1
            return
        try:
            scores, rejected = decode_score_batch(value)
        except SchemaError:
            self.stats.rejected += 1
            return
        self.stats.rejected += len(rejected)
        windows = state.windows
        for score in scores:
            group = self.lookup(partition, score.trace_id)
            if group is None:
                windows.stats.unknown_traces += 1
                group = (OTHER, OTHER)
            if windows.add(score, *group):
                self.stats.scores += 1
        state.dirty = True

    async def on_tick(self) -> None:
        """Send the closed windows' records; checkpoint each partition at its interval."""
        wall = time.time()
        now = time.monotonic()
        for partition, state in list(self._partitions.items()):
            windows = state.windows
            if windows.pending(wall):
                # Snapshot first (the windows as they are before this emission, with the offset they
                # reach), so that no emitted record counts a score above the latest snapshot's offset:
                # a score replayed after a crash may be counted in another group than before (its
                # trace forgotten: OTHER), and it must not then be in an emitted record too.
                await self.checkpoint(partition, state, force=True)
                records = windows.due(wall)
                state.dirty = True
                if self.partials_out is not None:
                    await self.partials_out.send(value=encode_partials([], records))
            else:
                windows.due(wall)  # nothing to emit: forgets the windows past their retention
                if now - state.last_checkpoint >= self.checkpoint_interval_s:
                    await self.checkpoint(partition, state)

    async def checkpoint(self, partition: int, state: _Partition, *, force: bool = False) -> None:
        """Snapshot the partition's windows, then acknowledge the messages the snapshot covers."""
        if self.table is not None and (state.dirty or force):
            snapshot = _Snapshot(next_offset=state.next_offset, windows=state.windows.to_state())
            write_snapshot(self.table, partition, checkpoint_key(partition), msgspec.msgpack.encode(snapshot))
            state.dirty = False
            self.stats.checkpoints += 1
        state.last_checkpoint = time.monotonic()
        if self.stream is not None:
            await self.held.release_below(self.stream, partition, state.next_offset)
