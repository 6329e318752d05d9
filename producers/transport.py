"""Moves finished spans from the application to Kafka without ever making the application wait.

The application thread does one thing: append the span to a bounded in-memory queue (a deque append,
well under a microsecond). Everything else — grouping spans by partition, encoding many spans per Kafka
message, compression, retries while the broker is briefly away — runs on a background thread with its
own asyncio event loop, so sync and async applications are served the same way (the model is the
OpenTelemetry SDK's BatchSpanProcessor, minus its per-span locking and its silent drops).

When the queue is full, new spans are dropped and counted (`stats.dropped`): a tracing library must never
block or grow without bound inside the application it observes.

The background thread must not die either, or tracing would silently stop while `submit` keeps filling
the queue: a span that cannot be encoded or is too big for a message is shrunk or counted as failed on
its own, a message the broker refuses as too large is split, and any unexpected error restarts the loop.

What a crash of the application can lose: exactly what this queue held (`pending`: spans submitted and
not yet acknowledged by Kafka). A clean exit flushes it (`shutdown()` runs at interpreter exit); a
SIGKILL or a hard crash does not. `flush(timeout)` returns once everything submitted before it is
acknowledged, so calling it at the end of a request or a job bounds the loss to what came after. The
receiver does not use this path: it answers 200 only once Kafka holds the spans (`acked_sender`).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from tracehouse.core import topics
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.retry import Backoff, GaveUp, Outcome, Policy, retry, sleep_unless_stopped
from tracehouse.core.schema import Span
from tracehouse.core.scores import Score

from .kafka_producer import BROKEN_SEQUENCE, COMPRESSION, new_producer
from .span_limits import MAX_MESSAGE_BYTES
from .span_messages import MessageEncoder, SpanMessage, SpanMessageEncoder

log = logging.getLogger("tracehouse.producers")

CONNECT_BACKOFF_MAX_S = 10.0  # the longest wait between attempts to reach the broker
SEND_BACKOFF_MAX_S = 5.0  # the longest wait between resends of refused or unanswered messages
STOPPING_GRACE_S = 5.0  # after shutdown(), how long a failing send is still retried (without waiting)


def _connect_outcome(exc: BaseException) -> Outcome:
    """Starting a producer: an unreachable or not yet ready broker is worth waiting for; anything else is a
    bug or a configuration the loop cannot fix."""
    return Outcome.RETRIABLE if isinstance(exc, (KafkaError, OSError)) else Outcome.FATAL


def _send_outcome(exc: BaseException) -> Outcome:
    """A message the broker refused as too large is split or shrunk; every other failure is resent (the
    idempotent producer keeps a resend from being stored twice) until `max_retry_s`."""
    return Outcome.BAD_CONTENT if isinstance(exc, MessageSizeTooLargeError) else Outcome.RETRIABLE


@dataclass
class TransportStats:
    """Counters an operator reads to know whether tracing keeps up; only ever increase."""

    enqueued: int = 0
    sent: int = 0  # acknowledged by Kafka
    dropped: int = 0  # queue full: never entered the queue
    failed: int = 0  # given up after retries (or at shutdown with the broker away)
    messages: int = 0  # Kafka messages (batches) acknowledged
    retries: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class SpanTransport:
    """A background sender of spans to `tracehouse.spans`, batched by partition.

    Thread-safe `submit()`; `flush()` waits until everything submitted so far is acknowledged;
    `shutdown()` flushes and stops (also registered at interpreter exit).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = topics.SPANS,
        max_queue: int = 200_000,
        batch_spans: int = 500,
        linger_s: float = 0.05,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        compression: str | None = COMPRESSION,
        retry_backoff_s: float = 0.5,
        max_retry_s: float = 300.0,
        client_id: str = "tracehouse-producer",
        producer_options: dict[str, object] | None = None,
        encoder: MessageEncoder | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.max_queue = max_queue
        self.batch_spans = batch_spans
        self.linger_s = linger_s
        self.max_message_bytes = max_message_bytes
        self.compression = compression
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_s = max_retry_s
        self.client_id = client_id
        self.producer_options = {**kafka_client_options(), **(producer_options or {})}
        self.stats = TransportStats()
        self._encoder: MessageEncoder = encoder or SpanMessageEncoder(batch_spans, max_message_bytes)
        self._scores: SpanTransport | None = None  # the sender of `submit_score`, started on first use
        self._scores_lock = threading.Lock()
        self._queue: collections.deque[Span] = collections.deque()
        self._in_flight = 0
        self._idle = threading.Condition()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None  # set with `_stopping`, in the loop: wakes any backoff
        self._start_thread()
        atexit.register(self.shutdown)
        if hasattr(os, "register_at_fork"):
            restart = weakref.WeakMethod(self._restart_in_child)
            os.register_at_fork(after_in_child=lambda: (method := restart()) is not None and method())

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tracehouse-transport", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    def _restart_in_child(self) -> None:
        """A forked child (gunicorn --preload, celery prefork, multiprocessing) inherits this object but not
        its thread, so its spans would queue up and be dropped: give the child a sender of its own. The
        child starts empty; the parent still sends what it had queued."""
        if self._stopping:
            return
        self._queue = collections.deque()
        self._in_flight = 0
        self._idle = threading.Condition()
        self._loop = None
        self.stats = TransportStats()
        self._start_thread()

    # ---- application side -------------------------------------------------------------------

    def submit(self, span: Span) -> bool:
        """Queue a finished span; False (and counted as dropped) when the queue is full."""
        if len(self._queue) >= self.max_queue or self._stopping:
            self.stats.dropped += 1
            return False
        self._queue.append(span)
        self.stats.enqueued += 1
        return True

    def submit_many(self, spans: list[Span]) -> int:
        """Queue many spans at once; returns how many were accepted."""
        room = self.max_queue - len(self._queue)
        if self._stopping:
            room = 0
        accepted = spans if room >= len(spans) else spans[: max(room, 0)]
        self._queue.extend(accepted)
        self.stats.enqueued += len(accepted)
        self.stats.dropped += len(spans) - len(accepted)
        return len(accepted)

    def submit_score(self, score: Score) -> bool:
        """Queue a score for `tracehouse.scores` (the SDK's `score()`); False (counted as dropped in
        `score_stats`) when its queue is full. Scores have a sender of their own, the same class on the
        scores topic, started on the first score: an app that never scores never pays for it."""
        scores = self._scores
        if scores is None:
            with self._scores_lock:
                if self._stopping:
                    return False
                scores = self._scores
                if scores is None:
                    from .score_messages import ScoreMessageEncoder

                    scores = self._scores = SpanTransport(
                        self.bootstrap,
                        topic=topics.SCORES,
                        max_queue=min(self.max_queue, 100_000),
                        linger_s=self.linger_s,
                        max_message_bytes=self.max_message_bytes,
                        compression=self.compression,
                        retry_backoff_s=self.retry_backoff_s,
                        max_retry_s=self.max_retry_s,
                        client_id=f"{self.client_id}-scores",
                        producer_options=self.producer_options,
                        encoder=ScoreMessageEncoder(max_message_bytes=self.max_message_bytes),
                    )
        return scores.submit(score)  # type: ignore[arg-type]

    @property
    def score_stats(self) -> TransportStats:
        """The scores sender's counters (all zero before the first score)."""
        return self._scores.stats if self._scores is not None else TransportStats()

    @property
    def pending(self) -> int:
        """Spans (and scores) queued or in flight, not yet acknowledged or given up."""
        own = len(self._queue) + self._in_flight
        return own + self._scores.pending if self._scores is not None else own

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every span (and score) submitted so far is acknowledged or given up; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while len(self._queue) + self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(timeout=0.05 if remaining is None else min(remaining, 0.05))
        if self._scores is not None:
            return self._scores.flush(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Flush what can be flushed within `timeout`, then stop the background thread."""
        if self._stopping:
            return
        with self._scores_lock:
            scores = self._scores
        if scores is not None:
            scores.shutdown(timeout)
        self.flush(timeout)
        self._stopping = True
        self._wake_backoffs()
        if self._loop is not None and self._thread.is_alive():
            self._thread.join(timeout=10)
        atexit.unregister(self.shutdown)

    # ---- background side --------------------------------------------------------------------

    def _wake_backoffs(self) -> None:
        """Set the loop's stop event from the application's thread, so no backoff is waited out."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop is already closed
            pass

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        if self._stopping:
            self._stop.set()
        self._started.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _connect(self) -> tuple[AIOKafkaProducer, int]:
        """Start the Kafka producer, retrying while the broker is unreachable; once stopping, the last
        failure is raised."""

        async def start() -> tuple[AIOKafkaProducer, int]:
            producer = new_producer(
                self.bootstrap,
                client_id=self.client_id,
                compression=self.compression,
                max_message_bytes=self.max_message_bytes,
                request_timeout_s=15.0,
                options=self.producer_options,
            )
            try:
                await producer.start()
                partitions = await producer.partitions_for(self.topic)
            except BaseException:
                await producer.stop()
                raise
            return producer, max(len(partitions), 1)

        def said(exc: BaseException, failures: int, delay: float) -> None:
            log.warning("kafka at %s unavailable (%s); retrying in %.1fs", self.bootstrap, exc, delay)

        policy = Policy(initial_s=self.retry_backoff_s, max_s=CONNECT_BACKOFF_MAX_S)
        try:
            return await retry(start, _connect_outcome, policy, stop=self._stop, on_retry=said)
        except GaveUp as gave_up:
            raise gave_up.last from None

    async def _main(self) -> None:
        """Run the send loop; an unexpected error is logged, the spans in flight are counted as failed,
        and the loop starts again (a dead sender would silently end tracing)."""
        while True:
            try:
                await self._pump()
                return
            except Exception:
                log.exception("tracehouse transport loop failed; restarting")
                self.stats.failed += self._in_flight
                self._in_flight = 0
                if self._stopping:
                    self._give_up_queue()
                    return
                await sleep_unless_stopped(self._stop, 1.0)

    async def _pump(self) -> None:
        producer: AIOKafkaProducer | None = None
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        return
                    self._notify_idle()
                    await asyncio.sleep(self.linger_s)
                    continue
                if producer is None:
                    try:
                        producer, partitions = await self._connect()
                    except (KafkaError, OSError):
                        self._give_up_queue()
                        return
                spans = self._drain(self.batch_spans * 8)
                producer = await self._send_with_retry(producer, spans, partitions)
                self._in_flight = 0
        finally:
            if producer is not None:
                await producer.stop()
            self._notify_idle()

    def _drain(self, limit: int) -> list[Span]:
        queue = self._queue
        n = min(len(queue), limit)
        self._in_flight = n  # before popping, so `pending` never dips and `flush` never returns early
        return [queue.popleft() for _ in range(n)]

    def _give_up_queue(self) -> None:
        self.stats.failed += len(self._queue)
        self._queue.clear()

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _messages(self, spans: list[Span], partitions: int) -> list[SpanMessage]:
        """Group spans by partition and encode them into messages (the rule lives in `span_messages`);
        a span that cannot be encoded within the limit is counted as failed."""
        dropped: list[Span] = []
        messages = self._encoder.messages(spans, partitions, dropped)
        self.stats.failed += len(dropped)
        return messages

    def _split_too_large(self, message: SpanMessage) -> list[SpanMessage]:
        """The broker refused `message` as too large (its limit is below ours): split or shrink it."""
        dropped: list[Span] = []
        parts = self._encoder.split_too_large(message, dropped)
        self.stats.failed += len(dropped)
        return parts

    async def _send_one(self, producer: AIOKafkaProducer, message: SpanMessage) -> object:
        """Send one message; the result is the broker's answer or the exception (never raised)."""
        try:
            return await (await producer.send(self.topic, value=message[1], partition=message[0]))
        except Exception as exc:  # `send` itself raises for some errors (e.g. a message too large)
            return exc

    async def _renew(self, producer: AIOKafkaProducer) -> AIOKafkaProducer:
        """A new producer for one whose sequence numbers the broker refuses (see `kafka_producer`)."""
        log.warning("renewing the kafka producer (its sequence numbers were refused)")
        try:
            await asyncio.wait_for(producer.stop(), 5.0)
        except Exception as exc:  # its batches fail: they are sent again by the new producer
            log.debug("stopping the old producer: %s", exc)
        fresh, _ = await self._connect()
        return fresh

    async def _send_with_retry(
        self, producer: AIOKafkaProducer, spans: list[Span], partitions: int
    ) -> AIOKafkaProducer:
        """Send until acknowledged or given up; returns the producer to go on with (a new one when the
        broker refused the old one's sequence numbers)."""
        messages = self._messages(spans, partitions)
        self._in_flight = sum(len(m[2]) for m in messages)  # spans dropped while encoding are accounted
        policy = Policy(initial_s=self.retry_backoff_s, max_s=SEND_BACKOFF_MAX_S, deadline_s=self.max_retry_s)
        backoff = Backoff(policy, self._stop)
        while messages:
            results = await asyncio.gather(*(self._send_one(producer, m) for m in messages))
            again: list[SpanMessage] = []
            for message, result in zip(messages, results, strict=True):
                if not isinstance(result, BaseException):
                    self.stats.sent += len(message[2])
                    self.stats.messages += 1
                elif _send_outcome(result) is Outcome.BAD_CONTENT:
                    again.extend(self._split_too_large(message))
                else:
                    again.append(message)
            messages = again
            self._in_flight = sum(len(m[2]) for m in messages)
            if not messages:
                return producer
            # A batch the broker refused (too large, or out of sequence) breaks the idempotent
            # producer's sequence for its partition: only a new producer can send there again.
            if any(isinstance(r, (*BROKEN_SEQUENCE, MessageSizeTooLargeError)) for r in results):
                producer = await self._renew(producer)
            delay = backoff.failed()
            waited = backoff.elapsed
            if backoff.expired or (self._stopping and waited > STOPPING_GRACE_S):
                self.stats.failed += sum(len(m[2]) for m in messages)
                log.error(
                    "gave up on %d spans after %.0fs of send failures",
                    sum(len(m[2]) for m in messages),
                    waited,
                )
                self._in_flight = 0
                return producer
            self.stats.retries += 1
            first_error = next((r for r in results if isinstance(r, BaseException)), None)
            log.warning("kafka send failed for %d messages (%s); retrying", len(messages), first_error)
            await backoff.sleep(delay)  # cut short by shutdown: resent at once until the grace is over
