"""The rollup and alert stages the Faust app plugs around its span processor.

- `PartitionWindows`: one partition's tumbling windows (10 s for alerting, 60 s for dashboards), closed
  by event time while a backlog is replayed and by the wall clock when live, snapshot-able as one blob.
- `MergerStage`: merges the partitions' running window totals into final rollups, evaluates the alert
  rules on them, publishes both, notifies a webhook, and checkpoints its state like the span processor:
  an input event is acknowledged only after a snapshot that covers it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tracehouse.pipeline.alert_rules import Rule, default_rules, load_rules
from tracehouse.pipeline.alerts import AlertEvaluator, WebhookNotifier
from tracehouse.pipeline.checkpoint import HeldEvents
from tracehouse.pipeline.outputs import encode_alerts, encode_rollups
from tracehouse.pipeline.processor import Sendable, write_snapshot
from tracehouse.pipeline.rollups import RollupMerger, RollupPartialRecord, WindowAggregator, decode_partials
from tracehouse.pipeline.span_view import AnySpan

log = logging.getLogger("tracehouse.worker")

ROLLUPS_PER_MESSAGE = 5_000


@dataclass(frozen=True)
class WindowOptions:
    """Window sizes and how long each accepts late data."""

    sizes: tuple[int, ...] = (10, 60)
    grace_s: float = 0.5  # a window closes this long after its end (late spans then make revisions)
    retention_s: dict[int, int] | None = None  # closed windows kept for revisions; default below
    merge_delay_s: float = 1.2  # the merger waits this long after a window's end for every partition

    def retention(self, size: int) -> int:
        if self.retention_s and size in self.retention_s:
            return self.retention_s[size]
        return 120 if size < 60 else 600


class _WindowsState(msgspec.Struct):
    aggregators: list[bytes]


class PartitionWindows:
    """All window sizes of one partition behind one add/due/snapshot interface."""

    def __init__(self, partition: int, options: WindowOptions, state: bytes | None = None) -> None:
        self.options = options
        if state:
            blobs = msgspec.msgpack.decode(state, type=_WindowsState).aggregators
            self.aggregators = [WindowAggregator.from_state(blob) for blob in blobs]
        else:
            self.aggregators = [
                WindowAggregator(size, options.grace_s, partition=partition, retention_seconds=options.retention(size))
                for size in options.sizes
            ]
        self._last_arrival = time.time()

    def add(self, span: AnySpan, cost: float) -> None:
        for aggregator in self.aggregators:
            aggregator.add(span, cost)
        self._last_arrival = time.time()

    def due(self, now_s: float) -> list[RollupPartialRecord]:
        out: list[RollupPartialRecord] = []
        quiet_for = now_s - self._last_arrival
        for aggregator in self.aggregators:
            event_time = aggregator.event_time_s
            live = event_time is None or quiet_for > aggregator.window_seconds + aggregator.grace_seconds
            # Catching up on a backlog: close windows by event time, not all at once by the clock.
            out.extend(aggregator.due(now_s if live else min(now_s, event_time)))
        return out

    def to_state(self) -> bytes:
        return msgspec.msgpack.encode(_WindowsState([a.to_state() for a in self.aggregators]))


def windows_factory(options: WindowOptions | None = None) -> Callable[[int, bytes | None], PartitionWindows]:
    opts = options or WindowOptions()
    return lambda partition, state: PartitionWindows(partition, opts, state)


# ---- the merger --------------------------------------------------------------------------------------


class _MergerState(msgspec.Struct):
    next_offset: int
    merger: bytes
    evaluator: bytes


MERGER_KEY = b"merger"


class MergerStage:
    """Final rollups and alerts from the partials of every partition; one instance runs per app
    (the partials topic has one partition), moving to another worker if this one dies."""

    def __init__(
        self,
        *,
        rollups_out: Sendable,
        alerts_out: Sendable,
        rules: list[Rule],
        options: WindowOptions,
        webhook_url: str | None = None,
        checkpoint_interval_s: float = 2.0,
    ) -> None:
        self.rollups_out = rollups_out
        self.alerts_out = alerts_out
        self.rules = rules
        self.options = options
        self.checkpoint_interval_s = checkpoint_interval_s
        self.webhook = WebhookNotifier(webhook_url) if webhook_url else None
        self.held = HeldEvents()
        self.stream: Any = None
        self.table: Any = None
        self.ready: Callable[[], bool] = lambda: False
        self._reset()

    def _reset(self) -> None:
        self.merger = RollupMerger(merge_delay_seconds=self.options.merge_delay_s)
        self.evaluator = AlertEvaluator(self.rules, base_windows=self.options.sizes)
        self.floor = 0  # partials below this offset are already in the restored state
        self.next_offset = 0
        self.restored = False
        self.dirty = False
        self.last_checkpoint = time.monotonic()

    def attach(self, stream: Any, table: Any, ready: Callable[[], bool]) -> None:
        """The manual-ack stream, the Table for snapshots, and whether the Table is recovered and the
        partials partition ours (then the state is restored even before a new partial arrives)."""
        self.stream = stream
        self.table = table
        self.ready = ready

    def revoke(self) -> None:
        self._reset()
        self.held.drop(0)

    def _restore(self) -> None:
        self.restored = True
        raw = self.table.get(MERGER_KEY) if self.table is not None else None
        if not raw:
            return
        state = msgspec.msgpack.decode(raw, type=_MergerState)
        self.merger = RollupMerger.from_state(state.merger)
        self.evaluator = AlertEvaluator.from_state(self.rules, state.evaluator, base_windows=self.options.sizes)
        self.floor = self.next_offset = state.next_offset
        log.info("merger: restored state up to offset %d", state.next_offset)

    async def on_event(self, event: Any) -> None:
        if not self.restored:
            self._restore()
        message = event.message
        offset = message.offset
        if offset >= self.floor and message.value:
            for record in decode_partials(message.value):
                self.merger.add(record)
            self.dirty = True
        self.next_offset = offset + 1
        self.held.hold(message.partition, offset, event)

    async def on_tick(self) -> None:
        if not self.restored:
            if not self.ready():
                return
            self._restore()
        rollups = self.merger.due(time.time())
        if rollups:
            for i in range(0, len(rollups), ROLLUPS_PER_MESSAGE):
                await self.rollups_out.send(value=encode_rollups(rollups[i : i + ROLLUPS_PER_MESSAGE]))
            alerts = self.evaluator.process(rollups)
            if alerts:
                await self.alerts_out.send(value=encode_alerts(alerts))
                for alert in alerts:
                    log.warning("alert %s: %s", alert.rule, alert.message)
                    if self.webhook is not None:
                        self.webhook.notify(alert)
            self.dirty = True
        if time.monotonic() - self.last_checkpoint >= self.checkpoint_interval_s and self.restored:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        if self.dirty and self.table is not None:
            state = _MergerState(self.next_offset, self.merger.to_state(), self.evaluator.to_state())
            write_snapshot(self.table, 0, MERGER_KEY, msgspec.msgpack.encode(state))
            self.dirty = False
        self.last_checkpoint = time.monotonic()
        if self.stream is not None:
            await self.held.release_below(self.stream, 0, self.next_offset)

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()


def load_alert_rules(path: str | None = None) -> list[Rule]:
    """Rules from `TRACEHOUSE_ALERT_RULES` (a TOML file) or the built-in defaults."""
    path = path or os.environ.get("TRACEHOUSE_ALERT_RULES")
    return load_rules(Path(path)) if path else default_rules()


def build_merger(*, rollups_out: Sendable, alerts_out: Sendable, options: WindowOptions | None = None) -> MergerStage:
    return MergerStage(
        rollups_out=rollups_out,
        alerts_out=alerts_out,
        rules=load_alert_rules(),
        options=options or WindowOptions(),
        webhook_url=os.environ.get("TRACEHOUSE_ALERT_WEBHOOK") or None,
    )
