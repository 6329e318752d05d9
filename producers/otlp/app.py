"""The OTLP/HTTP trace receiver as an aiohttp application: `POST /v1/traces`, `POST /v1/scores` (scores
added after the fact, JSON `{"scores": [...]}`), `GET /health` (numbers), `GET /health/live` and
`GET /health/ready` (for a supervisor, as the worker and the sink serve them).

Every answer follows the OTLP/HTTP spec, because exporters decide what to do from the status code:

- 200 with an `ExportTraceServiceResponse` in the request's encoding; `partial_success` counts the spans
  refused (bad ids, inverted times) and says why — the exporter must not send those again.
- 400 for a body that does not decode, 413 above the size limits (compressed or decompressed),
  415 for a content type or encoding the receiver does not speak, 401 without a valid bearer token:
  all with a `google.rpc.Status` body, none retried by exporters.
- 503 with `Retry-After` when Kafka cannot take the spans now: it has not acknowledged them within
  `ack_timeout_s` (they may still arrive; a retry is harmless, spans are deduplicated by span id
  downstream), it is not reachable or the topic does not exist yet, too many spans await its
  acknowledgement (`max_pending_spans`, refused before the body is read), or the receiver is stopping.
- 408 for a body that does not arrive within its deadline (`body_timeout_s + size / min_upload_rate`).

A 200 means Kafka holds every span of the request (acks=all): the spans go through the
`AckedSpanSender` on this event loop, which shares Kafka sends between concurrent requests.

`POST /v1/scores` is held to the same rules (bearer token, body deadline and byte budget, 200 only once
Kafka holds every score, 503 with Retry-After otherwise) with a second sender of the same kind on
`tracehouse.scores`. A request is all or nothing: one bad item is a 400 naming its index and field
(`scores[2].value: ...`) and nothing of the request is sent. The 200 lists the score ids (generated where
the client sent none), so a client can retry idempotently.

Memory and CPU are bounded without letting slow clients hold anything that others need: bodies being
read share a byte budget (`read_budget_bytes`, counted as bytes arrive, not as declared), each at most
`max_body_bytes` as received and `max_decompressed_bytes` after decompression; a decoding slot (at most
`max_concurrency`) is taken only once a body is complete, for the decoding alone.

The CPU work of a request (decompress, decode, map) runs inline for small bodies and on one worker
thread for large ones, so a 16 MB body never stalls the event loop while small requests stay on the
fast path without a thread handoff. See `tests/benchmarks/receiver_throughput.py` for the figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aiohttp import web

from tracehouse.core import settings
from tracehouse.core.schema import SchemaError, Span
from tracehouse.core.scores import MAX_SCORES_PER_REQUEST, Score, decode_score_items

from ..acked_scores import store_scores
from ..acked_sender import SendOutcome
from ..payload import DEFAULT_MAX_PAYLOAD_BYTES
from .auth import TokenCheck, load_tokens
from .body import SUPPORTED_ENCODINGS, decompress
from .body_reader import BudgetExhausted, ByteBudget, read_body
from .errors import RequestError
from .ingest import IngestResult, ingest
from .responses import JSON, PROTOBUF, export_response, status_body

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HEALTH_PATH",
    "LIVE_PATH",
    "READY_PATH",
    "RECEIVER_KEY",
    "SCORES_PATH",
    "TRACES_PATH",
    "Receiver",
    "ReceiverOptions",
    "ReceiverStats",
    "SpanSender",
    "create_app",
]

log = logging.getLogger("tracehouse.receiver")

TRACES_PATH = "/v1/traces"
SCORES_PATH = "/v1/scores"
MAX_SCORES_BODY_BYTES = 4 * 1024 * 1024  # MAX_SCORES_PER_REQUEST scores of bounded size fit well within
HEALTH_PATH = "/health"
READY_PATH = "/health/ready"
LIVE_PATH = "/health/live"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318  # OTLP/HTTP's registered port

_MEDIA_TYPES = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}


class SpanSender(Protocol):
    """What the receiver needs from a sender; `AckedSpanSender` is the production one."""

    max_pending: int

    @property
    def pending(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    @property
    def closing(self) -> bool: ...

    def health(self) -> dict[str, Any]: ...

    async def start(self) -> Any: ...

    async def stop(self, timeout: float = ...) -> bool: ...

    def submit(self, spans: list[Span], encoded: list[bytes] | None = None) -> asyncio.Future[SendOutcome]: ...


# Every setting of the receiver, by field (the variables, defaults and parsing: core/settings.py).
_ENV_VARS = {
    "max_body_bytes": settings.RECEIVER_MAX_BODY_BYTES,
    "max_decompressed_bytes": settings.RECEIVER_MAX_DECOMPRESSED_BYTES,
    "max_payload_bytes": settings.RECEIVER_MAX_PAYLOAD_BYTES,
    "max_concurrency": settings.RECEIVER_MAX_CONCURRENCY,
    "offload_bytes": settings.RECEIVER_OFFLOAD_BYTES,
    "retry_after_s": settings.RECEIVER_RETRY_AFTER,
    "ack_timeout_s": settings.RECEIVER_ACK_TIMEOUT,
    "max_pending_spans": settings.RECEIVER_MAX_PENDING_SPANS,
    "body_timeout_s": settings.RECEIVER_BODY_TIMEOUT,
    "min_upload_rate": settings.RECEIVER_MIN_UPLOAD_RATE,
    "read_budget_bytes": settings.RECEIVER_READ_BUDGET_BYTES,
    "header_timeout_s": settings.RECEIVER_HEADER_TIMEOUT,
}


@dataclass(frozen=True)
class ReceiverOptions:
    """Limits and behaviour of the receiver; `from_env()` reads `TRACEHOUSE_RECEIVER_*`."""

    max_body_bytes: int = 20 * 1024 * 1024  # as received (compressed); the OTel Collector's default
    max_decompressed_bytes: int = 64 * 1024 * 1024
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES  # per text (input, message, attribute), as the SDK
    max_concurrency: int = 4  # bodies decoded at once (a slot is held while decoding only)
    offload_bytes: int = 128 * 1024  # bodies at least this big are processed on the worker thread
    retry_after_s: int = 2  # the Retry-After of a 503
    ack_timeout_s: float = 5.0  # longest wait for Kafka's acknowledgement before answering 503
    max_pending_spans: int = 100_000  # spans accepted and not yet acknowledged by Kafka
    body_timeout_s: float = 10.0  # the floor of a body's deadline
    min_upload_rate: int = 64 * 1024  # bytes/s a body must arrive at, beyond the floor
    read_budget_bytes: int = 64 * 1024 * 1024  # bytes of bodies being read at once, all requests together
    # From connect (or the last answer) to a complete request head, and the longest idle keep-alive: a
    # client trickling its headers is closed after this (aiohttp's default waits an hour).
    header_timeout_s: float = 15.0
    tokens: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ReceiverOptions:
        """Options from the environment; raises OSError when a named token file cannot be read and
        ValueError when a number is not one."""
        chosen = {name: setting for name, setting in _ENV_VARS.items() if settings.is_set(setting, env)}
        numbers = {name: settings.get(setting, env) for name, setting in chosen.items()}
        base = cls(**numbers, tokens=tuple(load_tokens(env)))  # type: ignore[arg-type]
        given = {k: v for k, v in overrides.items() if v is not None}
        if "tokens" in given:
            given["tokens"] = tuple(given["tokens"])  # type: ignore[arg-type]
        return replace(base, **given)  # type: ignore[arg-type]


@dataclass
class ReceiverStats:
    """Counters for operators (served on /health); they only ever increase."""

    requests: int = 0
    spans_accepted: int = 0  # acknowledged by Kafka and answered 200
    spans_rejected: int = 0  # reported in partial_success
    bad_requests: int = 0  # 400
    unauthorized: int = 0  # 401
    too_slow: int = 0  # 408: the body did not arrive within its deadline
    too_large: int = 0  # 413
    unsupported: int = 0  # 415
    throttled: int = 0  # 503 of any kind: the exporter retries
    ack_timeouts: int = 0  # 503 because Kafka did not acknowledge within ack_timeout_s
    send_failures: int = 0  # 503 because Kafka refused the spans (not retriable) or the sender stopped
    score_requests: int = 0  # POST /v1/scores
    scores_accepted: int = 0  # acknowledged by Kafka and answered 200

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class Receiver:
    """The handlers and their state: the sender, the limits, the byte budget, the worker thread."""

    def __init__(
        self, sender: SpanSender, options: ReceiverOptions | None = None, score_sender: SpanSender | None = None
    ) -> None:
        self.sender = sender
        self.score_sender = score_sender  # None: this receiver takes no scores (503)
        self.options = options or ReceiverOptions()
        self.stats = ReceiverStats()
        self.auth = TokenCheck(self.options.tokens)
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._budget: ByteBudget | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        self._slots = asyncio.Semaphore(self.options.max_concurrency)
        self._budget = ByteBudget(self.options.read_budget_bytes)
        # One thread: decoding holds the GIL, so more threads would only contend for it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracehouse-receiver")
        if self.score_sender is not None:
            await asyncio.gather(self.sender.start(), self.score_sender.start())
        else:
            await self.sender.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        """After the requests in flight are answered: flush what is left, then stop."""
        timeout = self.options.ack_timeout_s + 5
        if self.score_sender is not None and not await self.score_sender.stop(timeout=timeout):
            log.error("%d scores accepted before the stop were not acknowledged by Kafka", self.score_sender.pending)
        if not await self.sender.stop(timeout=timeout):
            log.error("%d spans accepted before the stop were not acknowledged by Kafka", self.sender.pending)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ---- answers ----------------------------------------------------------------------------

    def _error(self, status: int, media_type: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status,
            body=status_body(media_type, status, message),
            content_type=media_type,
            headers=headers,
        )

    def _throttled(self, media_type: str, message: str) -> web.Response:
        self.stats.throttled += 1
        return self._error(503, media_type, message, {"Retry-After": str(self.options.retry_after_s)})

    def _not_now(self, media_type: str) -> web.Response | None:
        """A 503 when the sender cannot take spans now (checked before reading a body), else None."""
        sender = self.sender
        if sender.closing:
            return self._throttled(media_type, "receiver is shutting down; retry later")
        if not sender.connected:
            return self._throttled(media_type, "Kafka is not reachable or the spans topic does not exist yet")
        if sender.pending >= sender.max_pending:
            return self._throttled(media_type, "too many spans await Kafka's acknowledgement; retry later")
        return None

    # ---- handlers ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Liveness and the numbers that tell whether the receiver keeps up."""
        sender = self.sender
        pending = sender.pending
        if sender.closing:
            status = "stopping"
        elif not sender.ready:
            status = "kafka_unavailable"
        elif pending >= sender.max_pending:
            status = "backpressure"
        else:
            status = "ok"
        body = {
            "status": status,
            "pid": os.getpid(),  # which process answered, with `--processes N` sharing the port
            "pending_spans": pending,
            "queue_capacity": sender.max_pending,
            "receiver": self.stats.snapshot(),
            "bytes_being_read": self._budget.used if self._budget is not None else 0,
            **{k: v for k, v in sender.health().items() if k != "pending_spans"},
        }
        if self.score_sender is not None:
            body["scores"] = self.score_sender.health()  # the same numbers, counting scores
        return web.json_response(body)

    async def ready(self, request: web.Request) -> web.Response:
        """`/health/ready` (as the worker's and the sink's): 200 when spans sent now can be acknowledged,
        503 with the reason otherwise."""
        sender = self.sender
        if sender.closing:
            reason = "stopping"
        elif not sender.connected:
            reason = "waiting for Kafka or the spans topic"
        elif not sender.ready:
            reason = "Kafka is not acknowledging"
        elif sender.pending >= sender.max_pending:
            reason = "too many spans await Kafka's acknowledgement"
        else:
            return web.json_response({"process": "receiver", "ready": True})
        return web.json_response({"process": "receiver", "ready": False, "reason": reason}, status=503)

    async def live(self, request: web.Request) -> web.Response:
        """`/health/live`: the event loop turns (a blocked loop cannot answer)."""
        return web.json_response({"process": "receiver", "live": True})

    async def traces(self, request: web.Request) -> web.Response:
        """`POST /v1/traces`."""
        stats = self.stats
        stats.requests += 1
        media_type = _MEDIA_TYPES.get(request.content_type)
        reply_as = media_type or PROTOBUF
        if not self.auth.allows(request.headers.get("Authorization")):
            stats.unauthorized += 1
            return self._error(401, reply_as, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        if media_type is None:
            stats.unsupported += 1
            return self._error(
                415,
                reply_as,
                f"Content-Type {request.content_type!r} is not supported; "
                "use application/x-protobuf or application/json",
            )
        content_encoding = request.headers.get("Content-Encoding", "")
        if content_encoding.strip().lower() not in SUPPORTED_ENCODINGS:
            stats.unsupported += 1
            return self._error(
                415, reply_as, f"Content-Encoding {content_encoding!r} is not supported; use gzip or deflate"
            )
        refused = self._not_now(reply_as)  # before reading the body: a 503 then costs nothing
        if refused is not None:
            return refused

        assert self._slots is not None and self._budget is not None, "the receiver app was not started"
        options = self.options
        held = 0
        try:
            body, held = await read_body(
                request,
                self._budget,
                max_bytes=options.max_body_bytes,
                floor_s=options.body_timeout_s,
                min_rate=options.min_upload_rate,
            )
            async with self._slots:  # the CPU and memory bound: held while decoding only
                result = await self._process(body, media_type, content_encoding)
            del body
        except RequestError as exc:
            if exc.status == 408:
                stats.too_slow += 1
            elif exc.status == 413:
                stats.too_large += 1
            elif exc.status == 415:
                stats.unsupported += 1
            else:
                stats.bad_requests += 1
            log.debug("refused a request with %d: %s", exc.status, exc.reason)
            response = self._error(exc.status, reply_as, exc.reason)
            if exc.status in (408, 413):
                response.force_close()  # do not linger reading the rest of a body we refused
            return response
        except BudgetExhausted as exc:
            return self._throttled(reply_as, f"receiver busy: {exc}; retry later")
        except Exception:  # a bug here must answer like a server, and be seen
            log.exception("failed to process an OTLP request")
            return self._error(500, reply_as, "internal error while decoding the request")
        finally:
            await self._budget.give_back(held)
        return await self._forward(result, reply_as)

    async def scores(self, request: web.Request) -> web.Response:
        """`POST /v1/scores`: JSON `{"scores": [...]}`; 200 `{"accepted": n, "score_ids": [...]}` once
        Kafka holds every score, 400 naming the first bad item's index and field (nothing sent)."""
        stats = self.stats
        stats.requests += 1
        stats.score_requests += 1
        if not self.auth.allows(request.headers.get("Authorization")):
            stats.unauthorized += 1
            return self._error(401, JSON, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        if request.content_type != "application/json":
            stats.unsupported += 1
            return self._error(
                415, JSON, f"Content-Type {request.content_type!r} is not supported; use application/json"
            )
        content_encoding = request.headers.get("Content-Encoding", "")
        if content_encoding.strip().lower() not in SUPPORTED_ENCODINGS:
            stats.unsupported += 1
            return self._error(
                415, JSON, f"Content-Encoding {content_encoding!r} is not supported; use gzip or deflate"
            )
        sender = self.score_sender
        if sender is None:
            return self._throttled(JSON, "this receiver was started without a scores sender")
        if sender.closing or not sender.connected:
            why = (
                "shutting down"
                if sender.closing
                else "waiting for Kafka or the scores topic (run `tracehouse migrate`)"
            )
            return self._throttled(JSON, f"receiver is {why}; retry later")

        assert self._budget is not None, "the receiver app was not started"
        options = self.options
        held = 0
        try:
            body, held = await read_body(
                request,
                self._budget,
                max_bytes=min(options.max_body_bytes, MAX_SCORES_BODY_BYTES),
                floor_s=options.body_timeout_s,
                min_rate=options.min_upload_rate,
            )
            body = decompress(body, content_encoding, min(options.max_decompressed_bytes, 4 * MAX_SCORES_BODY_BYTES))
            scores: list[Score] = decode_score_items(body, max_items=MAX_SCORES_PER_REQUEST)
        except SchemaError as exc:
            stats.bad_requests += 1
            return self._error(400, JSON, exc.reason)
        except RequestError as exc:
            if exc.status == 408:
                stats.too_slow += 1
            elif exc.status == 413:
                stats.too_large += 1
            else:
                stats.bad_requests += 1
            response = self._error(exc.status, JSON, exc.reason)
            if exc.status in (408, 413):
                response.force_close()
            return response
        except BudgetExhausted as exc:
            return self._throttled(JSON, f"receiver busy: {exc}; retry later")
        finally:
            await self._budget.give_back(held)
        refusal = await store_scores(sender, scores, options.ack_timeout_s)  # type: ignore[arg-type]
        if refusal is not None:
            return self._throttled(JSON, refusal.message)
        stats.scores_accepted += len(scores)
        return web.json_response({"accepted": len(scores), "score_ids": [s.score_id for s in scores]})

    async def _process(self, body: bytes, media_type: str, content_encoding: str) -> IngestResult:
        options = self.options
        args = (body, media_type, content_encoding, options.max_decompressed_bytes, options.max_payload_bytes)
        if len(body) < options.offload_bytes or self._executor is None:
            return ingest(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, ingest, *args)

    async def _forward(self, result: IngestResult, media_type: str) -> web.Response:
        """Hand the spans to the sender and answer once Kafka has acknowledged them all (200), or 503
        when it has not within `ack_timeout_s` or refused them."""
        spans = result.spans
        count = len(spans)
        sender = self.sender
        rejected, reason = result.rejected, result.error_message
        if count:
            if count > sender.max_pending:
                self.stats.too_large += 1
                return self._error(
                    413, media_type, f"{count} spans in one request is more than the receiver holds; send fewer"
                )
            refused = self._not_now(media_type)
            if refused is None and sender.pending + count > sender.max_pending:
                refused = self._throttled(media_type, "too many spans await Kafka's acknowledgement; retry later")
            if refused is not None:
                return refused
            outcome_future = sender.submit(spans, result.encoded or None)
            try:
                outcome = await asyncio.wait_for(asyncio.shield(outcome_future), self.options.ack_timeout_s)
            except asyncio.TimeoutError:
                self.stats.ack_timeouts += 1
                return self._throttled(
                    media_type,
                    f"Kafka has not acknowledged the spans within {self.options.ack_timeout_s:g}s; retry "
                    "(spans that arrive twice are stored once)",
                )
            if not outcome.ok:
                self.stats.send_failures += 1
                return self._throttled(media_type, f"spans not stored: {outcome.error}; retry later")
            self.stats.spans_accepted += count - outcome.refused
            if outcome.refused:
                rejected += outcome.refused
                why = f"{outcome.refused} spans cannot be encoded within the Kafka message limit"
                reason = f"{reason}; {why}" if reason else why
        if rejected:
            self.stats.spans_rejected += rejected
            log.debug("rejected %d spans: %s", rejected, reason)
        return web.Response(body=export_response(media_type, rejected, reason), content_type=media_type)


RECEIVER_KEY = web.AppKey("tracehouse_receiver", Receiver)


def create_app(
    sender: SpanSender, options: ReceiverOptions | None = None, score_sender: SpanSender | None = None
) -> web.Application:
    """The receiver application; it starts `sender` on its event loop and stops (flushes) it last.
    Serve it with aiohttp's transparent decompression off (`AppRunner(app, auto_decompress=False)`,
    as `ReceiverServer` does): the receiver decompresses bodies itself, under its size limit.

    `score_sender` carries `POST /v1/scores`; when None and `sender` is an `AckedSpanSender`, one like it
    on `tracehouse.scores` is made (same Kafka, same client options)."""
    if score_sender is None:
        from ..acked_scores import scores_sender
        from ..acked_sender import AckedSpanSender

        if isinstance(sender, AckedSpanSender):
            score_sender = scores_sender(
                sender.bootstrap,
                client_id=f"{sender.client_id}-scores",
                max_pending=sender.max_pending,
                producer_options=sender.producer_options,
            )
    receiver = Receiver(sender, options, score_sender)
    app = web.Application()
    app[RECEIVER_KEY] = receiver
    app.router.add_post(TRACES_PATH, receiver.traces)
    app.router.add_post(SCORES_PATH, receiver.scores)
    app.router.add_get(HEALTH_PATH, receiver.health)
    app.router.add_get(READY_PATH, receiver.ready)
    app.router.add_get(LIVE_PATH, receiver.live)
    app.on_startup.append(receiver._on_startup)
    app.on_cleanup.append(receiver._on_cleanup)
    return app
