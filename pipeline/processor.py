"""What the worker does with each message of `tracehouse.spans`, free of Faust so it reads as plain Python.

Per message: decode and validate (bad records to `tracehouse.dlq` with their reason and bytes; the worker
goes on; pipeline/span_view.py: the full decoder's verdicts at a fraction of its cost), drop duplicates,
price each span once, fold spans into the partition's open traces and windows, and publish the guard
alerts (rules of type `trace`, pipeline/guards.py) those spans fired, while their traces are open. Per tick: emit the
traces that are ready (many per Kafka message) and the windows that closed. Per checkpoint interval:
snapshot the windows and acknowledge what is safe (see pipeline/checkpoint.py).

The Faust glue (pipeline/app.py) passes in the topics to send to and the table to checkpoint into.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tracehouse.core import settings, topics
from tracehouse.core.pricing import PriceTable, configured_prices, price_span
from tracehouse.core.rollups import encode_partials
from tracehouse.core.schema import (
    DeadLetter,
    SchemaError,
    TraceRecord,
    encode_dead_letter,
    encode_traces,
)
from tracehouse.core.timestamps import split_by_time, time_window
from tracehouse.pipeline.assembly import TraceAssembler
from tracehouse.pipeline.checkpoint import (
    HeldEvents,
    PartitionCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
)
from tracehouse.pipeline.guards import GuardPublisher
from tracehouse.pipeline.sampling import PartitionSampler, SamplingRules, SamplingStats, encode_kept
from tracehouse.pipeline.score_windows import TraceGroups, remember_emitted
from tracehouse.pipeline.span_view import AnySpan, decode_work_batch

log = logging.getLogger("tracehouse.worker")

TRACES_PER_MESSAGE = 2_000


class Sendable(Protocol):
    async def send(self, *, key: Any = None, value: Any = None, partition: int | None = None) -> Any: ...


class WindowStage(Protocol):
    """The windowed-rollup side of a partition's state (pipeline/partition_windows.py)."""

    budgets: Any  # PartitionBudgets, or None without budget rules (pipeline/budgets.py)

    def add(self, span: AnySpan, cost: float) -> None: ...
    def due(self, now_s: float) -> list[Any]: ...
    def due_budgets(self, now_s: float) -> list[Any]: ...
    def to_state(self) -> bytes: ...
    def newest_closed(self, count: int) -> tuple[int, list[Any]]: ...


@dataclass
class ProcessorOptions:
    quiet_s: float = 3.0  # a trace whose root has ended is emitted after this long without new spans
    max_age_s: float = 60.0  # ... and any trace once it has been open this long (root or not)
    revision_window_s: float = 30.0  # late spans revise an emitted trace for this long
    max_open_traces: int = 100_000
    checkpoint_interval_s: float = 5.0

    @classmethod
    def from_env(cls) -> ProcessorOptions:
        """`TRACEHOUSE_TRACE_QUIET_S`, `TRACEHOUSE_TRACE_MAX_AGE_S`, `TRACEHOUSE_TRACE_REVISION_S`,
        `TRACEHOUSE_MAX_OPEN_TRACES`, `TRACEHOUSE_CHECKPOINT_S` override the defaults."""
        names = {
            "quiet_s": settings.TRACE_QUIET_S,
            "max_age_s": settings.TRACE_MAX_AGE_S,
            "revision_window_s": settings.TRACE_REVISION_S,
            "max_open_traces": settings.MAX_OPEN_TRACES,
            "checkpoint_interval_s": settings.CHECKPOINT_S,
        }
        try:
            return cls(**{field: settings.get(s) for field, s in names.items() if settings.is_set(s)})
        except settings.SettingError as exc:
            raise SystemExit(str(exc)) from None


@dataclass
class ProcessorStats:
    messages: int = 0
    spans: int = 0
    rejected: int = 0
    duplicates: int = 0
    traces: int = 0
    replayed: int = 0
    checkpoints: int = 0
    refused_times: int = 0  # spans left out for their times; the sink dead-letters them


class _Partition:
    """Everything the worker holds for one partition of `tracehouse.spans`."""

    def __init__(self, partition: int, assembler: TraceAssembler, windows: WindowStage, floor: int) -> None:
        self.partition = partition
        self.assembler = assembler
        self.windows = windows
        self.window_floor = floor  # spans below this offset are already in the restored windows
        self.next_offset = floor
        self.last_checkpoint = time.monotonic()
        self.dirty = False
        self.recent = TraceGroups()  # emitted traces' (service, model), for the scores' windows
        self.sampler: PartitionSampler | None = None  # tail sampling on: held spans (pipeline/sampling.py)


class SpanProcessor:
    """Validates span batches, assembles traces and rolls up windows for the partitions it owns."""

    def __init__(
        self,
        *,
        traces_out: Sendable,
        partials_out: Sendable | None,
        dlq_out: Sendable,
        windows_factory: Callable[[int, bytes | None], WindowStage],
        options: ProcessorOptions | None = None,
        prices: PriceTable | None = None,
        guards: GuardPublisher | None = None,
        sampling: SamplingRules | None = None,
        kept_out: Sendable | None = None,
    ) -> None:
        self.traces_out = traces_out
        self.partials_out = partials_out
        self.dlq_out = dlq_out
        self.windows_factory = windows_factory
        self.options = options or ProcessorOptions.from_env()
        self.prices = prices or configured_prices()
        self.guards = guards  # in-flight trace rules (pipeline/guards.py); None: none
        # Tail sampling (pipeline/sampling.py): None, off (the sink stores `tracehouse.spans` itself).
        if sampling is not None and kept_out is None:
            raise ValueError("tail sampling needs the topic of kept spans (kept_out)")
        self.sampling = sampling
        self.kept_out = kept_out
        self.sampling_stats = SamplingStats()
        self.stats = ProcessorStats()
        self.held = HeldEvents()
        self._partitions: dict[int, _Partition] = {}
        self._last_log = time.monotonic()
        self.stream: Any = None
        self.table: Any = None

    # ---- partition ownership ----------------------------------------------------------------

    def _partition(self, partition: int, table: Any, offset: int) -> _Partition:
        state = self._partitions.get(partition)
        if state is None:
            raw = table.get(checkpoint_key(partition)) if table is not None else None
            checkpoint = decode_checkpoint(raw) if raw else None
            assembler = TraceAssembler(
                self.prices,
                quiet_s=self.options.quiet_s,
                max_age_s=self.options.max_age_s,
                revision_window_s=self.options.revision_window_s,
                max_open_traces=self.options.max_open_traces,
                # guards do not fire again for breaches below the checkpoint (they were published)
                guards=self.guards.for_partition(checkpoint.next_offset if checkpoint else 0) if self.guards else None,
            )
            windows = self.windows_factory(partition, checkpoint.windows if checkpoint else None)
            state = _Partition(partition, assembler, windows, checkpoint.next_offset if checkpoint else 0)
            if self.sampling is not None:
                state.sampler = PartitionSampler(self.sampling, self.options.revision_window_s, self.sampling_stats)
                state.sampler.windows_closed(windows)  # the group quantiles of the restored windows
            self._partitions[partition] = state
            log.info(
                "partition %d: taken over at offset %d; windows %s",
                partition,
                offset,
                f"restored up to offset {checkpoint.next_offset}" if checkpoint else "new",
            )
        return state

    def trace_group(self, partition: int, trace_id: str) -> tuple[str, str] | None:
        """(service, model) of a trace of a partition this worker holds (open, just emitted, or in the
        bounded recent map), for the scores' windows (pipeline/score_processor.py); None: not known."""
        state = self._partitions.get(partition)
        if state is None:
            return None
        return state.assembler.trace_group(trace_id) or state.recent.get(trace_id)

    def revoke(self, partitions: set[int]) -> None:
        """Forget revoked partitions; their next owner replays and restores them."""
        for partition in partitions:
            state = self._partitions.pop(partition, None)
            if state is not None and state.sampler is not None:
                state.sampler.forget()
            self.held.drop(partition)

    # ---- per message ------------------------------------------------------------------------

    def attach(self, stream: Any, table: Any) -> None:
        """The manual-ack stream events come from, and the Table checkpoints go to."""
        self.stream = stream
        self.table = table

    async def on_event(self, event: Any) -> None:
        """Process one Faust event of `tracehouse.spans`, then hold it until it is safe to acknowledge."""
        message = event.message
        partition, offset, value = message.partition, message.offset, message.value
        state = self._partition(partition, self.table, offset)
        stamp = message.timestamp  # seconds (Faust); absent or -1 on records without one
        await self.on_message(state, offset, value, round(stamp * 1e9) if stamp and stamp > 0 else None)
        self.held.hold(partition, offset, event)

    async def on_message(
        self, state: _Partition, offset: int, value: bytes | None, received_ns: int | None = None
    ) -> None:
        """Assemble and window one Kafka message's spans. `received_ns` is the record's Kafka timestamp:
        spans whose times the sink would refuse (`core/timestamps.py`) are left out here too, so a span
        from the year 2250 neither bends its trace nor opens a window two centuries ahead. They are not
        dead-lettered here: the sink does that, once, for the same record."""
        self.stats.messages += 1
        state.next_offset = offset + 1
        if value is None:
            return
        try:
            spans, rejected = decode_work_batch(value)
        except SchemaError as exc:
            await self._dead_letter(exc.reason, value, state.partition, offset)
            return
        for bad in rejected:
            await self._dead_letter(bad.reason, bad.payload, state.partition, offset)
        sampler = state.sampler
        if received_ns is not None:
            spans, refused = split_by_time(spans, time_window(received_ns))
            self.stats.refused_times += len(refused)
            if sampler is not None:  # the sink reads only kept spans: the worker dead-letters these
                for bad in refused:
                    await self._dead_letter(bad.reason, bad.payload, state.partition, offset)
        duplicates: list[AnySpan] = []  # with sampling on: not held again (their first copy is)
        assembler = state.assembler
        to_windows = offset >= state.window_floor
        if not to_windows:
            self.stats.replayed += len(spans)
        windows = state.windows
        budgets = windows.budgets  # None without budget rules
        prices = self.prices
        now = time.monotonic()
        add = assembler.add_priced
        for span in spans:
            llm = span.llm
            model = llm.model if llm is not None else ""
            cost, source = price_span(prices, model, span.usage, span.cost_usd, span.start_time_ns)
            if not add(span, offset, now, cost, source):
                self.stats.duplicates += 1
                duplicates.append(span)
                continue
            if to_windows:
                windows.add(span, cost)
                if budgets is not None:
                    user, session = span.user_id, span.session_id
                    if not (user and session):  # the trace's, once any of its spans said
                        trace_user, trace_session = assembler.trace_identity(span.trace_id)
                        user, session = user or trace_user, session or trace_session
                    budgets.add(span, cost, user, session)
        if sampler is not None:  # the spans of open traces, until their traces are decided
            sampler.hold(fresh_only(spans, duplicates) if duplicates else spans, value)
        state.dirty = True
        self.stats.spans += len(spans)
        guards = assembler.guards
        if guards is not None and guards.pending and self.guards is not None:
            await self.guards.publish(guards.take())
        forced = assembler.take_forced()
        if forced:
            remember_emitted(state.recent, assembler, forced)
            await self._send_traces(forced, state)

    async def checkpoint(self, state: _Partition) -> None:
        """Snapshot the partition's windows, then acknowledge what no open trace needs any more."""
        safe = state.assembler.safe_offset(state.next_offset)
        table = self.table
        if table is not None and state.dirty:
            snapshot = PartitionCheckpoint(
                partition=state.partition,
                next_offset=state.next_offset,
                safe_offset=safe,
                windows=state.windows.to_state(),
                written_at_ns=time.time_ns(),
            )
            write_snapshot(table, state.partition, checkpoint_key(state.partition), encode_checkpoint(snapshot))
            state.dirty = False
            self.stats.checkpoints += 1
        state.last_checkpoint = time.monotonic()
        await self.held.release_below(self.stream, state.partition, safe)

    # ---- per tick ---------------------------------------------------------------------------

    async def on_tick(self) -> None:
        """Emit ready traces and closed windows of every owned partition."""
        now = time.monotonic()
        wall = time.time()
        for state in list(self._partitions.values()):
            partials = state.windows.due(wall)
            if partials and state.sampler is not None:  # before deciding: the windows closed by now
                state.sampler.windows_closed(state.windows, partials)
            records = state.assembler.due(now)
            if records:
                remember_emitted(state.recent, state.assembler, records)
                await self._send_traces(records, state)
            budget_sums = state.windows.due_budgets(wall)
            if (partials or budget_sums) and self.partials_out is not None:
                await self.partials_out.send(value=encode_partials(partials, budgets=budget_sums))
            if now - state.last_checkpoint >= self.options.checkpoint_interval_s:
                await self.checkpoint(state)
        if now - self._last_log >= 10:
            self._last_log = now
            s = self.stats
            log.info(
                "worker: %d messages, %d spans (%d duplicates, %d rejected, %d replayed), %d traces, %d open, %d held",
                s.messages,
                s.spans,
                s.duplicates,
                s.rejected,
                s.replayed,
                s.traces,
                sum(p.assembler.open_traces for p in self._partitions.values()),
                self.held.count(),
            )
            if self.sampling is not None:
                log.info("worker %s", self.sampling_stats.summary())

    async def _send_traces(self, records: list[TraceRecord], state: _Partition) -> None:
        """Send trace records; with sampling on, first decide them and publish the kept ones' spans."""
        sampler = state.sampler
        if sampler is not None:
            kept = sampler.decide(records, state.assembler.guard_fired, time.monotonic())
            if kept:
                await self._send_kept(state.partition, kept)
        self.stats.traces += len(records)
        for i in range(0, len(records), TRACES_PER_MESSAGE):
            await self.traces_out.send(value=encode_traces(records[i : i + TRACES_PER_MESSAGE]))

    async def _send_kept(self, partition: int, spans: list[Any]) -> None:
        """Kept spans onto `tracehouse.spans.kept`, in the partition of `tracehouse.spans` they came from."""
        assert self.kept_out is not None
        for message in encode_kept(spans):
            await self.kept_out.send(value=message, partition=partition)

    async def _dead_letter(self, reason: str, payload: bytes, partition: int, offset: int) -> None:
        self.stats.rejected += 1
        letter = DeadLetter(
            reason=reason,
            stage="validate",
            payload=payload,
            source_topic=topics.SPANS,
            partition=partition,
            offset=offset,
            time_ns=time.time_ns(),
        )
        await self.dlq_out.send(value=encode_dead_letter(letter))
        log.warning("dead-lettered a record from %s[%d]@%d: %s", topics.SPANS, partition, offset, reason)


def fresh_only(spans: list[AnySpan], duplicates: list[AnySpan]) -> list[AnySpan]:
    """The spans of a message that are not among its duplicates (by identity: they are the same objects)."""
    seen = {id(span) for span in duplicates}
    return [span for span in spans if id(span) not in seen]


def write_snapshot(table: Any, partition: int, key: bytes, value: bytes) -> None:
    """Put a snapshot in a Faust Table from outside a stream event: the local store and the changelog
    partition are named explicitly (Faust's `table[key] = value` needs a current event for that)."""
    table.data[key] = value
    table.send_changelog(partition, key, value)


def checkpoint_key(partition: int) -> bytes:
    return f"spans-{partition}".encode()
