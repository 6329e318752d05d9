"""The SDK's side of in-flight guards: let the app act on a guard alert while its run is still going.

    from tracehouse.producers import configure, guards, GuardTripped
    configure(service="support-bot")
    guard = guards(on_alert=lambda alert: print(alert.message))   # starts one background consumer

    with span("agent", kind="AGENT"):
        for step in plan:
            guard.check()                    # raises GuardTripped once a guard fired for this trace
            ...                              # or: if guard.tripped(): break

The worker evaluates the rules of type `trace` (pipeline/guards.py) on every open trace and publishes
what fires on `tracehouse.alerts`. `guards()` starts a consumer of that topic in a daemon thread (no
consumer group: every app process sees every alert, from the moment it starts), keeps the guard alerts
of this app's service (`alert.service`, the service of the span that breached the rule), and remembers
the latest `max_traces` tripped traces. The app pays nothing per span: `tripped` and `check` are a dict
lookup, and the consumer idles in a long poll when no alert comes. Callbacks run on the guard's thread.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracehouse.core import settings as env
from tracehouse.core import topics
from tracehouse.core.config import Settings

from .scores import current_trace_id

if TYPE_CHECKING:
    from tracehouse.core.alerts import Alert

# asyncio, aiokafka and the Kafka security options are imported by the guard's thread, not with the SDK:
# an app that never calls `guards()` does not pay for them.

log = logging.getLogger("tracehouse.guards")

DEFAULT_MAX_TRACES = 10_000
POLL_MS = 1_000
FETCH_WAIT_MS = 5_000


class GuardTripped(RuntimeError):
    """Raised by `Guard.check` when a guard fired for the trace: `alert` says which rule, and why."""

    def __init__(self, alert: Alert) -> None:
        super().__init__(f"guard {alert.rule} tripped: {alert.message}")
        self.alert = alert


@dataclass
class GuardStats:
    alerts_seen: int = 0  # alerts of any service and kind read from the topic
    tripped: int = 0  # guard alerts of this service
    undecodable: int = 0
    callback_errors: int = 0


class Guard:
    """A background consumer of `tracehouse.alerts` for one service; see the module docstring."""

    def __init__(
        self,
        service: str,
        bootstrap: str,
        *,
        on_alert: Callable[[Alert], Any] | None = None,
        max_traces: int = DEFAULT_MAX_TRACES,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.bootstrap = bootstrap
        self.on_alert = on_alert
        self.max_traces = max_traces
        self.consumer_options = dict(consumer_options or {})
        self.stats = GuardStats()
        self._tripped: OrderedDict[str, list[Alert]] = OrderedDict()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the app's side ---------------------------------------------------------------------

    def tripped(self, trace_id: str | None = None) -> bool:
        """Whether a guard fired for this trace (default: the current span's trace)."""
        trace_id = trace_id or current_trace_id()
        return trace_id is not None and trace_id in self._tripped

    def alerts(self, trace_id: str | None = None) -> list[Alert]:
        """The guard alerts received for this trace (default: the current span's trace), oldest first."""
        trace_id = trace_id or current_trace_id()
        with self._lock:
            return list(self._tripped.get(trace_id or "", ()))

    def check(self, trace_id: str | None = None) -> None:
        """Raise GuardTripped if a guard fired for this trace (default: the current span's trace)."""
        trace_id = trace_id or current_trace_id()
        if trace_id is None or trace_id not in self._tripped:
            return
        with self._lock:
            found = self._tripped.get(trace_id)
        if found:
            raise GuardTripped(found[0])

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the consumer reads the topic's end (alerts published after that are seen)."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> Guard:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracehouse-guards", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the consumer (within about a poll interval)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Guard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the guard's thread -----------------------------------------------------------------

    def _run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._consume())
        except Exception:  # never let the guard take the app down; tracing goes on without it
            log.exception("tracehouse guards: the alerts consumer stopped")

    async def _consume(self) -> None:
        import asyncio

        from aiokafka import AIOKafkaConsumer  # only the guard needs a consumer
        from aiokafka.errors import KafkaError

        from tracehouse.core.kafka_security import kafka_client_options
        from tracehouse.core.retry import Backoff, Policy

        policy = Policy(initial_s=0.5, max_s=30.0)
        backoff = Backoff(policy)
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                client_id="tracehouse-guards",
                # A long poll: the broker answers as soon as an alert comes, and idles the rest of the time.
                fetch_max_wait_ms=FETCH_WAIT_MS,
                **{**kafka_client_options(), **self.consumer_options},
            )
            try:
                await consumer.start()
                consumer.subscribe([topics.ALERTS])  # no group: every partition, from its end
                while not self._stopping.is_set():
                    batches = await consumer.getmany(timeout_ms=POLL_MS)
                    for records in batches.values():
                        for record in records:
                            self._take(record.value)
                    if not self._ready.is_set() and consumer.assignment():
                        for tp in consumer.assignment():
                            await consumer.position(tp)  # resolves "latest" now: later alerts are seen
                        self._ready.set()
                        backoff = Backoff(policy)  # connected: the next outage starts its waits afresh
                return
            except KafkaError as exc:
                delay = backoff.failed()
                log.warning("tracehouse guards: kafka at %s unavailable (%s); retrying", self.bootstrap, exc)
                await asyncio.sleep(min(delay, 30.0))
            finally:
                await consumer.stop()

    def _take(self, value: bytes | None) -> None:
        from tracehouse.core.alerts import decode_alerts
        from tracehouse.core.schema import SchemaError

        if not value:
            return
        try:
            alerts = decode_alerts(value)
        except SchemaError:
            self.stats.undecodable += 1
            return
        self.stats.alerts_seen += len(alerts)
        for alert in alerts:
            if not alert.trace_id or alert.service != self.service or alert.state != "firing":
                continue
            self.stats.tripped += 1
            with self._lock:
                self._tripped.setdefault(alert.trace_id, []).append(alert)
                self._tripped.move_to_end(alert.trace_id)
                while len(self._tripped) > self.max_traces:
                    self._tripped.popitem(last=False)
            if self.on_alert is not None:
                try:
                    self.on_alert(alert)
                except Exception:
                    self.stats.callback_errors += 1
                    log.exception("tracehouse guards: the on_alert callback raised")


def guards(
    service: str | None = None,
    *,
    on_alert: Callable[[Alert], Any] | None = None,
    bootstrap: str | None = None,
    max_traces: int = DEFAULT_MAX_TRACES,
    consumer_options: dict[str, Any] | None = None,
) -> Guard:
    """Start watching this app's guard alerts. `service` defaults to the configured tracer's (else
    `TRACEHOUSE_SERVICE`), `bootstrap` to `TRACEHOUSE_KAFKA_BOOTSTRAP`. With tracing disabled
    (`TRACEHOUSE_DISABLED=1`) the guard starts nothing and never trips."""
    from .tracer import get_tracer

    if service is None:
        tracer = get_tracer()
        service = tracer.service if getattr(tracer, "enabled", True) else None
    settings = Settings.from_env(service=service, kafka_bootstrap=bootstrap)
    guard = Guard(
        settings.service,
        settings.kafka_bootstrap,
        on_alert=on_alert,
        max_traces=max_traces,
        consumer_options=consumer_options,
    )
    if env.get(env.DISABLED):
        return guard
    return guard.start()
