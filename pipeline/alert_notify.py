"""Telling people about alerts: a webhook (Slack-compatible) fed from a bounded queue.

Public API:
    WebhookNotifier(url, timeout=5.0, max_retries=5, *, queue_size=1000, backoff_base=0.5, backoff_max=30.0)
      .notify(alert) -> bool                  enqueue, never blocks (False: queue full, alert dropped)
      await .close()                          send what is queued, then stop
      .stats -> NotifierStats
    slack_payload(alert) -> dict              the JSON the webhook posts (Slack-compatible)

The merger's stage (pipeline/merge_stage.py) calls `notify` for every alert the evaluator
(pipeline/alert_evaluator.py) returns; a slow or broken endpoint never holds up the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from tracehouse.core.alerts import Alert
from tracehouse.core.retry import Backoff, Policy

log = logging.getLogger("tracehouse.alerts")

_COLORS = {"critical": "#d92d20", "warning": "#f5a524", "info": "#2e90fa", "resolved": "#17b26a"}


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message (also accepted by Mattermost, Rocket.Chat, Discord's /slack)."""
    state = "RESOLVED" if alert.state == "resolved" else alert.severity.upper()
    return {
        "text": f"[{state}] {alert.rule}: {alert.message}",
        "attachments": [
            {
                "color": _COLORS["resolved" if alert.state == "resolved" else alert.severity],
                "title": f"{alert.rule} — {alert.state}",
                "text": alert.message,
                "fields": [
                    {"title": "service", "value": alert.service, "short": True},
                    {"title": "severity", "value": alert.severity, "short": True},
                    {"title": "value", "value": f"{alert.value:g}", "short": True},
                    {"title": "threshold", "value": f"{alert.threshold:g}", "short": True},
                ],
                "footer": "tracehouse",
                "ts": alert.fired_at // 1000,
            }
        ],
    }


@dataclass
class NotifierStats:
    sent: int = 0
    failed: int = 0  # gave up: retries exhausted or the endpoint refused (4xx other than 429)
    dropped: int = 0  # the queue was full, or the notifier was closed
    retries: int = 0


_STOP = object()


class WebhookNotifier:
    """Posts alerts to a webhook from a background task, with bounded queue and retries.

    `notify()` must be called from the event loop's thread; it only enqueues. Transient failures
    (connection errors, timeouts, 429, 5xx) are retried up to `max_retries` times, waiting as core/retry.py's
    `Backoff` says (exponential from `backoff_base`, with jitter, at most `backoff_max`; honouring
    Retry-After up to `backoff_max`); other 4xx answers are not retried. Alerts are delivered in order.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        max_retries: int = 5,
        *,
        queue_size: int = 1000,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = NotifierStats()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def notify(self, alert: Alert) -> bool:
        """Queue an alert for sending; False (and counted) when the queue is full or closed."""
        if self._closed:
            self.stats.dropped += 1
            return False
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.warning("alert webhook queue full: dropped an alert of rule %s", alert.rule)
            return False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tracehouse-webhook")
        return True

    async def close(self, timeout: float = 60.0) -> None:
        """Send everything queued (within `timeout`), then stop; later notify() calls drop."""
        self._closed = True
        task = self._task
        if task is None:
            return

        async def drain() -> None:
            await self._queue.put(_STOP)
            await task

        if not task.done():
            try:
                await asyncio.wait_for(drain(), timeout)
            except asyncio.TimeoutError:
                log.warning("alert webhook: could not send the queued alerts within %.0f s", timeout)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():  # what the sender never got to
            if self._queue.get_nowait() is not _STOP:
                self.stats.dropped += 1

    async def _run(self) -> None:
        import aiohttp  # only the notifier needs it

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                alert = await self._queue.get()
                if alert is _STOP:
                    return
                try:
                    await self._deliver(session, alert)
                except Exception:  # never let one alert kill the sender
                    self.stats.failed += 1
                    log.exception("alert webhook: unexpected error")

    async def _deliver(self, session: Any, alert: Alert) -> None:
        import aiohttp

        payload = slack_payload(alert)
        problem = ""
        backoff = Backoff(Policy(initial_s=self.backoff_base, max_s=self.backoff_max))
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            retry_after: float | None = None
            try:
                async with session.post(self.url, json=payload) as response:
                    if 200 <= response.status < 300:
                        self.stats.sent += 1
                        return
                    problem = f"HTTP {response.status}"
                    if response.status != 429 and response.status < 500:
                        break  # the endpoint refuses this request: retrying will not help
                    with contextlib.suppress(TypeError, ValueError):
                        retry_after = float(response.headers.get("Retry-After", ""))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                delay = backoff.failed()  # exponential, with jitter (core/retry.py)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                await backoff.sleep(min(self.backoff_max, delay))
        self.stats.failed += 1
        log.warning("alert webhook: gave up on an alert of rule %s (%s)", alert.rule, problem)
