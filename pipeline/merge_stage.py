"""The merger's stage, which the Faust app plugs in beside its span processor: it merges the partitions'
running window totals (pipeline/merger.py) into final rollups (spans' on `tracehouse.rollups`, scores' on
`tracehouse.score-rollups`), evaluates the alert rules on them
(pipeline/alert_evaluator.py) and the budget rules on the partitions' per-key sums
(pipeline/budgets_merge.py), publishes both, notifies a webhook (pipeline/alert_notify.py), and
checkpoints its state like the span processor: an input event is acknowledged only after a snapshot that
covers it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from tracehouse.core import settings
from tracehouse.core.alerts import Alert, encode_alerts
from tracehouse.core.rollups import decode_partial_batch, encode_rollups, encode_score_rollups
from tracehouse.pipeline.alert_evaluator import AlertEvaluator
from tracehouse.pipeline.alert_notify import WebhookNotifier
from tracehouse.pipeline.alert_rules import Rule, load_alert_rules
from tracehouse.pipeline.budgets import BUDGET_GRACE_S
from tracehouse.pipeline.budgets_merge import BudgetMerger
from tracehouse.pipeline.budgets_rules import BudgetRule, load_budget_rules
from tracehouse.pipeline.checkpoint import HeldEvents
from tracehouse.pipeline.merger import RollupMerger, ScoreRollupMerger
from tracehouse.pipeline.partition_windows import WindowOptions
from tracehouse.pipeline.processor import Sendable, write_snapshot

log = logging.getLogger("tracehouse.worker")

ROLLUPS_PER_MESSAGE = 5_000


class _MergerState(msgspec.Struct):
    next_offset: int
    merger: bytes
    evaluator: bytes
    scores: bytes = b""  # the score merger's state (absent in snapshots written before scores)
    budgets: bytes = b""  # the budget merger's state (absent before budgets, and without budget rules)


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
        score_rollups_out: Sendable | None = None,
        options: WindowOptions,
        webhook_url: str | None = None,
        checkpoint_interval_s: float = 2.0,
        budget_rules: list[BudgetRule] | None = None,
    ) -> None:
        self.budget_rules = budget_rules or []
        self.rollups_out = rollups_out
        self.score_rollups_out = score_rollups_out
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
        self.score_merger = ScoreRollupMerger(merge_delay_seconds=self.options.merge_delay_s)
        self.evaluator = AlertEvaluator(self.rules, base_windows=self.options.sizes)
        self.budgets = self._new_budgets()
        self.floor = 0  # partials below this offset are already in the restored state
        self.next_offset = 0
        self.restored = False
        self.dirty = False
        self.last_checkpoint = time.monotonic()

    def _new_budgets(self, state: bytes = b"") -> BudgetMerger | None:
        """None without budget rules; resolved `BUDGET_GRACE_S` + the merge delay after a window's end."""
        if not self.budget_rules:
            return None
        close_delay_s = BUDGET_GRACE_S + self.options.merge_delay_s
        if state:
            return BudgetMerger.from_state(self.budget_rules, state, close_delay_s=close_delay_s)
        return BudgetMerger(self.budget_rules, close_delay_s=close_delay_s)

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
        if state.scores:
            self.score_merger = ScoreRollupMerger.from_state(state.scores)
        self.evaluator = AlertEvaluator.from_state(self.rules, state.evaluator, base_windows=self.options.sizes)
        self.budgets = self._new_budgets(state.budgets)
        self.floor = self.next_offset = state.next_offset
        log.info("merger: restored state up to offset %d", state.next_offset)

    async def on_event(self, event: Any) -> None:
        if not self.restored:
            self._restore()
        message = event.message
        offset = message.offset
        if offset >= self.floor and message.value:
            batch = decode_partial_batch(message.value)
            for record in batch.partials:
                self.merger.add(record)
            for score_record in batch.scores:
                self.score_merger.add(score_record)
            if self.budgets is not None:
                for budget_record in batch.budgets:
                    self.budgets.add(budget_record)
            self.dirty = True
        self.next_offset = offset + 1
        self.held.hold(message.partition, offset, event)

    async def on_tick(self) -> None:
        if not self.restored:
            if not self.ready():
                return
            self._restore()
        now = time.time()
        rollups = self.merger.due(now)
        score_rollups = self.score_merger.due(now)  # the same windows close at the same tick
        if rollups or score_rollups:
            for i in range(0, len(rollups), ROLLUPS_PER_MESSAGE):
                await self.rollups_out.send(value=encode_rollups(rollups[i : i + ROLLUPS_PER_MESSAGE]))
            if self.score_rollups_out is not None:
                for i in range(0, len(score_rollups), ROLLUPS_PER_MESSAGE):
                    chunk = score_rollups[i : i + ROLLUPS_PER_MESSAGE]
                    await self.score_rollups_out.send(value=encode_score_rollups(chunk))
            alerts = self.evaluator.process(rollups, scores=score_rollups)
            await self._publish(alerts)
            self.dirty = True
        if self.budgets is not None:
            budget_alerts = self.budgets.evaluate(now)
            if budget_alerts:
                await self._publish(budget_alerts)
                self.dirty = True
        if time.monotonic() - self.last_checkpoint >= self.checkpoint_interval_s and self.restored:
            await self.checkpoint()

    async def _publish(self, alerts: list[Alert]) -> None:
        if alerts:
            await self.alerts_out.send(value=encode_alerts(alerts))
            for alert in alerts:
                log.warning("alert %s: %s", alert.rule, alert.message)
                if self.webhook is not None:
                    self.webhook.notify(alert)

    async def checkpoint(self) -> None:
        if self.dirty and self.table is not None:
            state = _MergerState(
                self.next_offset,
                self.merger.to_state(),
                self.evaluator.to_state(),
                self.score_merger.to_state(),
                self.budgets.to_state() if self.budgets is not None else b"",
            )
            write_snapshot(self.table, 0, MERGER_KEY, msgspec.msgpack.encode(state))
            self.dirty = False
        self.last_checkpoint = time.monotonic()
        if self.stream is not None:
            await self.held.release_below(self.stream, 0, self.next_offset)

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()


def build_merger(
    *,
    rollups_out: Sendable,
    alerts_out: Sendable,
    score_rollups_out: Sendable | None = None,
    options: WindowOptions | None = None,
) -> MergerStage:
    return MergerStage(
        rollups_out=rollups_out,
        alerts_out=alerts_out,
        score_rollups_out=score_rollups_out,
        rules=load_alert_rules(),
        options=options or WindowOptions(),
        webhook_url=settings.get(settings.ALERT_WEBHOOK),
        budget_rules=load_budget_rules(),
    )
