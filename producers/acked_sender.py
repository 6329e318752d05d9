"""The receiver's sender: spans to `tracehouse.spans`, with an answer per request once Kafka holds them.

A 200 from the receiver means Kafka has acknowledged every span of the request (acks=all, idempotent
producer). Waiting for Kafka per request would cost one round trip and one tiny send each, so requests
share sends ("group commit", as aiokafka's accumulator hands out futures and the OpenTelemetry SDK's
batch processor wakes on an event):

- `submit(spans)` queues a request's spans and returns a future; it resolves with a `SendOutcome` once
  every Kafka message carrying those spans is acknowledged, or once the sender has given up on one.
- One loop on the caller's event loop (no thread hop) takes everything queued and sends it as one
  group: spans grouped by partition, many per message (`span_messages`, the same rule as the SDK).
  When fewer than `max_in_flight` groups are in flight it sends at once, so an idle receiver answers
  after one round trip; while groups are in flight, new requests accumulate and the next group grows
  with the load.
- Errors are classified like aiokafka's own sender: retriable (broker away, not leader, timeout) are
  retried with backoff while the requests wait; a message the broker finds too large is split (and the
  idempotent producer, whose sequence numbers that refusal breaks, is replaced: `kafka_producer`); anything
  else fails the requests whose spans the message carries. Nothing hangs: after `max_retry_s` a message
  is given up and counted.
- Bounded: `pending` (spans accepted and not yet acknowledged or given up) is what the caller checks
  against `max_pending` before accepting more.
- Any start order: until the broker answers and the topic exists, `connected` is False and the caller
  refuses work (503). The topic is looked up in the broker's full metadata before anything is produced
  to it, so producing never auto-creates it with the wrong number of partitions.

A request that stops waiting (its deadline passed) does not take its spans back: they may still reach
Kafka later, which is harmless because spans are deduplicated by span id downstream.

The same machinery carries scores (`POST /v1/scores`, the web explorer's writes) to `tracehouse.scores`:
given `topic=topics.SCORES, encoder=ScoreMessageEncoder()`, "spans" below reads "records" (scores are
deduplicated by score id downstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from tracehouse.core import topics
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.schema import Span

from .kafka_producer import BROKEN_SEQUENCE, COMPRESSION, new_producer, retriable
from .span_limits import MAX_MESSAGE_BYTES
from .span_messages import MessageEncoder, SpanMessage, SpanMessageEncoder

__all__ = ["AckedSpanSender", "SendOutcome", "SenderStats"]

log = logging.getLogger("tracehouse.receiver.sender")


@dataclass(frozen=True)
class SendOutcome:
    """How a request's spans fared: all acknowledged (`ok`), except `refused` spans that could not be
    encoded within the message limit at all; or not (`ok` False, `error` says why)."""

    ok: bool
    refused: int = 0
    error: str = ""


@dataclass
class SenderStats:
    """Counters for /health; they only ever increase."""

    accepted: int = 0  # spans handed to the sender
    acknowledged: int = 0  # spans Kafka acknowledged
    failed: int = 0  # spans given up on (non-retriable error, or retried past max_retry_s)
    refused: int = 0  # spans that cannot be encoded within the message limit
    messages: int = 0  # Kafka messages acknowledged
    groups: int = 0  # sends of one or more requests' spans
    retries: int = 0
    splits: int = 0  # messages the broker refused as too large
    renewals: int = 0  # producers replaced because the broker refused their sequence numbers

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Request:
    """One caller's spans, its future, and how many messages carrying them are not yet settled."""

    __slots__ = ("encoded", "failed", "future", "refused", "spans", "waiting")

    def __init__(
        self, spans: list[Span], future: asyncio.Future[SendOutcome], encoded: list[bytes] | None = None
    ) -> None:
        self.spans = spans
        self.encoded = encoded  # each span's bytes, in order, when the caller has them
        self.future = future
        self.waiting = 0
        self.refused = 0
        self.failed = ""


class AckedSpanSender:
    """Acknowledged, group-committed sends of spans to `topic`; see the module docstring.

    `start()` and everything else run on one event loop (the receiver's); `stop()` flushes."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = topics.SPANS,
        batch_spans: int = 500,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        compression: str | None = COMPRESSION,
        max_pending: int = 100_000,
        max_in_flight: int = 2,
        max_group_spans: int = 20_000,
        retry_backoff_s: float = 0.2,
        max_retry_s: float = 30.0,
        request_timeout_s: float = 10.0,
        topic_check_s: float = 1.0,
        client_id: str = "tracehouse-receiver",
        producer_options: dict[str, object] | None = None,
        encoder: MessageEncoder | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.compression = compression
        self.max_message_bytes = max_message_bytes
        self.max_pending = max_pending
        self.max_in_flight = max_in_flight
        self.max_group_spans = max_group_spans
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_s = max_retry_s
        self.request_timeout_s = request_timeout_s
        self.topic_check_s = topic_check_s
        self.client_id = client_id
        self.producer_options = {**kafka_client_options(), **(producer_options or {})}
        self.stats = SenderStats()
        self._encoder: MessageEncoder = encoder or SpanMessageEncoder(batch_spans, max_message_bytes)
        self._queue: list[_Request] = []
        self._queued_spans = 0
        self._pending = 0
        self._groups_in_flight = 0
        self._producer: AIOKafkaProducer | None = None
        self._partitions = 0
        self._failing_since: float | None = None
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._renewing: asyncio.Lock | None = None

    # ---- state the receiver reads -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Spans accepted and not yet acknowledged or given up."""
        return self._pending

    @property
    def queued(self) -> int:
        """Spans waiting for the next group (the rest of `pending` is in flight)."""
        return self._queued_spans

    @property
    def connected(self) -> bool:
        """The producer runs and the topic exists: spans handed over now can be sent."""
        return self._producer is not None and not self._closing

    @property
    def ready(self) -> bool:
        """Connected, and the last send did not fail: what a readiness probe reports."""
        return self.connected and self._failing_since is None

    @property
    def closing(self) -> bool:
        return self._closing

    def health(self) -> dict[str, Any]:
        return {
            "kafka_ready": self.ready,
            "topic_partitions": self._partitions,
            "pending_spans": self._pending,
            "queued_spans": self._queued_spans,
            "in_flight_spans": self._pending - self._queued_spans,
            "max_pending_spans": self.max_pending,
            "failing_for_s": 0.0 if self._failing_since is None else round(time.monotonic() - self._failing_since, 1),
            "sender": self.stats.snapshot(),
        }

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, connect_wait_s: float = 3.0) -> AckedSpanSender:
        """Start the send loop. Waits up to `connect_wait_s` for Kafka, so a receiver started next to a
        running broker is ready at once; past that it keeps connecting in the background (the receiver
        starts whatever the broker's state, and answers 503 until it can produce)."""
        self._closing = False
        self._connected = asyncio.Event()
        self._renewing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._runner = asyncio.create_task(self._run(), name="tracehouse-acked-sender")
        try:
            await asyncio.wait_for(self._connected.wait(), connect_wait_s)
        except asyncio.TimeoutError:
            pass
        return self

    async def stop(self, timeout: float = 10.0) -> bool:
        """Refuse new spans, wait up to `timeout` for those pending, then stop. True when nothing was
        left unacknowledged."""
        self._closing = True
        self._poke()
        flushed = True
        if self._pending and self._settled is not None and self._producer is not None:
            try:
                await asyncio.wait_for(self._settled.wait(), timeout)
            except asyncio.TimeoutError:
                flushed = False
        flushed = flushed and not self._pending
        tasks = [t for t in (self._runner, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for request in self._queue:
            self._settle(request, SendOutcome(False, error="the receiver stopped before sending"))
        if self._pending:
            log.error("stopping with %d spans not acknowledged by Kafka", self._pending)
        self._queue.clear()
        await asyncio.gather(*self._background, return_exceptions=True)  # replaced producers stopping
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5.0)
            except (asyncio.TimeoutError, KafkaError, OSError) as exc:
                log.warning("kafka producer did not stop cleanly: %s", exc)
        return flushed

    # ---- the caller's side ----------------------------------------------------------------------

    def submit(self, spans: list[Span], encoded: list[bytes] | None = None) -> asyncio.Future[SendOutcome]:
        """Hand over a request's spans; the future resolves once they are acknowledged or given up.
        The caller checks `connected`, `closing` and `pending` first; spans submitted while closing
        are answered at once as not sent. `encoded`: each span's `schema.encode_span` bytes, in the
        order of `spans` (the receiver has them from the span limits); put into messages as they are."""
        future: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_result(SendOutcome(False, error="the receiver is stopping"))
            return future
        if not spans:
            future.set_result(SendOutcome(True))
            return future
        if encoded is not None and len(encoded) != len(spans):
            encoded = None
        self._queue.append(_Request(spans, future, encoded or None))
        count = len(spans)
        self._queued_spans += count
        self._pending += count
        self.stats.accepted += count
        if self._settled is not None:
            self._settled.clear()
        if self._groups_in_flight < self.max_in_flight:
            self._poke()
        return future

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ---- the send loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        await self._connect()
        while not (self._closing and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._groups_in_flight < self.max_in_flight and self._producer is not None:
                self._start_group(self._take_group())

    def _take_group(self) -> list[_Request]:
        """Everything queued, up to `max_group_spans` spans (at least one request)."""
        queue = self._queue
        taken, spans = 0, 0
        while taken < len(queue) and (taken == 0 or spans + len(queue[taken].spans) <= self.max_group_spans):
            spans += len(queue[taken].spans)
            taken += 1
        group, self._queue = queue[:taken], queue[taken:]
        self._queued_spans -= spans
        return group

    def _start_group(self, group: list[_Request]) -> None:
        self._groups_in_flight += 1
        self.stats.groups += 1
        task = asyncio.create_task(self._send_group(group))
        self._tasks.add(task)
        task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._groups_in_flight -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("span send failed unexpectedly", exc_info=task.exception())
        self._poke()

    def _new_producer(self) -> AIOKafkaProducer:
        return new_producer(
            self.bootstrap,
            client_id=self.client_id,
            compression=self.compression,
            max_message_bytes=self.max_message_bytes,
            request_timeout_s=self.request_timeout_s,
            options=self.producer_options,
        )

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        """Replace a producer whose idempotent sequence numbers are broken: the broker refused a batch
        it had numbered (too large), so it refuses the partition's next ones as out of order. A new
        producer has a new producer id and starts its sequences afresh (what the Java client does by
        bumping its epoch). Raises what starting the new one raises; the caller retries."""
        assert self._renewing is not None
        async with self._renewing:
            if self._producer is not broken:  # another delivery renewed it already
                return
            fresh = self._new_producer()
            try:
                await fresh.start()
            except BaseException:
                await self._stop_quietly(fresh)
                raise
            self._producer = fresh
            self.stats.renewals += 1
            log.warning("renewed the kafka producer (its sequence numbers were refused)")
        task = asyncio.create_task(self._stop_quietly(broken))  # its batches fail and are sent again
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _connect(self) -> None:
        """Start the producer and find the topic, retrying (quietly after the first message) until both
        work or the sender stops."""
        backoff = self.retry_backoff_s
        said_unreachable = said_no_topic = False
        while not self._closing:
            producer = self._new_producer()
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await self._stop_quietly(producer)
                if not said_unreachable:
                    log.warning("kafka at %s unavailable (%s); answering 503 until it is", self.bootstrap, exc)
                    said_unreachable = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            while not self._closing:
                try:
                    cluster = await producer.client.fetch_all_metadata()  # all topics: never auto-creates
                    partitions = cluster.partitions_for_topic(self.topic)
                except (KafkaError, OSError) as exc:
                    log.debug("metadata request failed: %s", exc)
                    partitions = None
                if partitions:
                    self._partitions = len(partitions)
                    self._producer = producer
                    if self._connected is not None:
                        self._connected.set()
                    log.info("sending to %s (%d partitions) at %s", self.topic, self._partitions, self.bootstrap)
                    self._poke()
                    return
                if not said_no_topic:
                    log.warning("topic %s does not exist yet (run `tracehouse migrate`); answering 503", self.topic)
                    said_no_topic = True
                await asyncio.sleep(self.topic_check_s)
            await self._stop_quietly(producer)

    @staticmethod
    async def _stop_quietly(producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 5.0)
        except Exception as exc:  # a producer that never started may fail to stop; nothing to keep
            log.debug("stopping a kafka producer failed: %s", exc)

    async def _send_group(self, group: list[_Request]) -> None:
        """Encode the group's spans into messages and deliver each; settle every request."""
        if len(group) == 1:
            only = group[0]
            spans = only.spans

            def owners_of(message_spans: list[Span]) -> Iterable[_Request]:
                return (only,)
        else:
            owner: dict[int, _Request] = {}
            spans = []
            for request in group:
                spans.extend(request.spans)
                for span in request.spans:
                    owner[id(span)] = request

            def owners_of(message_spans: list[Span]) -> Iterable[_Request]:
                return {owner[id(span)] for span in message_spans}

        encoded = {id(span): data for r in group if r.encoded for span, data in zip(r.spans, r.encoded, strict=True)}
        dropped: list[Span] = []
        if encoded:  # only the spans' encoder takes bytes; the scores' has none to take
            messages = self._encoder.messages(spans, self._partitions, dropped, encoded)  # type: ignore[call-arg]
        else:
            messages = self._encoder.messages(spans, self._partitions, dropped)
        self._refuse(dropped, owners_of)
        owned = [(m, tuple(owners_of(m.spans))) for m in messages]
        for _, owners in owned:
            for request in owners:
                request.waiting += 1
        for request in group:
            self._maybe_settle(request)
        try:
            await asyncio.gather(*(self._deliver(m, owners, owners_of) for m, owners in owned))
        finally:
            for request in group:  # only a cancelled group (stop) reaches here unsettled
                if not request.future.done():
                    self._settle(request, SendOutcome(False, error="the receiver stopped before Kafka answered"))

    async def _deliver(
        self,
        message: SpanMessage,
        owners: tuple[_Request, ...],
        owners_of: Callable[[list[Span]], Iterable[_Request]],
    ) -> None:
        """Send one message until Kafka acknowledges it, splitting it when the broker finds it too large,
        giving up on a non-retriable error or after `max_retry_s`."""
        started = time.monotonic()
        backoff = self.retry_backoff_s
        while True:
            producer = self._producer
            if producer is None:
                self._message_failed(message, owners, "the receiver stopped before sending")
                return
            numbered = False  # the producer gave the message a sequence number (the broker saw it)
            try:
                future = await producer.send(self.topic, value=message.value, partition=message.partition)
                numbered = True
                await future
            except MessageSizeTooLargeError:
                if numbered:
                    try:
                        await self._renew(producer)
                    except (KafkaError, OSError) as exc:
                        log.warning("could not renew the kafka producer yet: %s", exc)
                self.stats.splits += 1
                dropped: list[Span] = []
                parts = self._encoder.split_too_large(message, dropped)
                owned = [(m, tuple(owners_of(m.spans))) for m in parts]
                for _, part_owners in owned:
                    for request in part_owners:
                        request.waiting += 1
                self._refuse(dropped, owners_of)
                for request in owners:  # this message is replaced by its parts
                    request.waiting -= 1
                    self._maybe_settle(request)
                await asyncio.gather(*(self._deliver(m, o, owners_of) for m, o in owned))
                return
            except Exception as exc:
                if producer is not self._producer:  # sent by a producer since replaced: send again
                    continue
                if isinstance(exc, BROKEN_SEQUENCE):
                    try:
                        await self._renew(producer)
                        continue
                    except (KafkaError, OSError) as renew_exc:
                        exc = renew_exc
                waited = time.monotonic() - started
                if not retriable(exc) or waited > self.max_retry_s:
                    reason = "retried too long" if retriable(exc) else "not retriable"
                    log.error("giving up on %d spans (%s: %r)", len(message.spans), reason, exc)
                    self._message_failed(message, owners, f"kafka refused the spans: {exc!r}")
                    return
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("kafka send failed (%r); retrying while requests wait", exc)
                self.stats.retries += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self._failing_since = None
            self.stats.messages += 1
            self.stats.acknowledged += len(message.spans)
            self._pending -= len(message.spans)
            for request in owners:
                request.waiting -= 1
                self._maybe_settle(request)
            self._check_settled()
            return

    # ---- settling requests ----------------------------------------------------------------------

    def _refuse(self, dropped: list[Span], owners_of: Callable[[list[Span]], Iterable[_Request]]) -> None:
        """Spans that cannot be encoded within the limit: counted, reported to their requests."""
        if not dropped:
            return
        self.stats.refused += len(dropped)
        self._pending -= len(dropped)
        for span in dropped:
            for request in owners_of([span]):
                request.refused += 1
        self._check_settled()

    def _message_failed(self, message: SpanMessage, owners: tuple[_Request, ...], error: str) -> None:
        self.stats.failed += len(message.spans)
        self._pending -= len(message.spans)
        for request in owners:
            request.waiting -= 1
            request.failed = request.failed or error
            self._maybe_settle(request)
        self._check_settled()

    def _maybe_settle(self, request: _Request) -> None:
        if request.waiting == 0 and not request.future.done():
            ok = not request.failed
            self._settle(request, SendOutcome(ok, request.refused, request.failed))

    @staticmethod
    def _settle(request: _Request, outcome: SendOutcome) -> None:
        if not request.future.done():
            request.future.set_result(outcome)

    def _check_settled(self) -> None:
        if self._pending == 0 and self._settled is not None:
            self._settled.set()
