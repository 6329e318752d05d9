"""The OTLP/HTTP trace receiver as an aiohttp application: `POST /v1/traces` and `GET /health`.

Every answer follows the OTLP/HTTP spec, because exporters decide what to do from the status code:

- 200 with an `ExportTraceServiceResponse` in the request's encoding; `partial_success` counts the spans
  refused (bad ids, inverted times) and says why — the exporter must not send those again.
- 400 for a body that does not decode, 413 above the size limits (compressed or decompressed),
  415 for a content type or encoding the receiver does not speak, 401 without a valid bearer token:
  all with a `google.rpc.Status` body, none retried by exporters.
- 503 with `Retry-After` when the transport's queue cannot take the spans (Kafka slow or away). The
  exporter retries later; nothing is dropped in silence. This is the receiver's backpressure: memory
  stays bounded by the queue, not by the load (Phoenix's lesson in DESIGN.md).

Memory per request is bounded too: at most `max_concurrency` bodies are read and decoded at once (the
others wait before their body is read, so TCP pushes back on the senders), each at most
`max_body_bytes` as received and `max_decompressed_bytes` after decompression.

The CPU work of a request (decompress, decode, map) runs inline for small bodies and on one worker
thread for large ones, so a 16 MB body never stalls the event loop while small requests stay on the
fast path without a thread handoff. See `tests/benchmarks/receiver_throughput.py` for the figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from tracehouse.core.schema import Span

from ..payload import DEFAULT_MAX_PAYLOAD_BYTES
from .auth import TokenCheck, load_tokens
from .body import SUPPORTED_ENCODINGS
from .errors import BadRequest, PayloadTooLarge, RequestError
from .ingest import IngestResult, ingest
from .responses import JSON, PROTOBUF, export_response, status_body

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HEALTH_PATH",
    "RECEIVER_KEY",
    "TRACES_PATH",
    "Receiver",
    "ReceiverOptions",
    "ReceiverStats",
    "SpanQueue",
    "create_app",
]

log = logging.getLogger("tracehouse.receiver")

TRACES_PATH = "/v1/traces"
HEALTH_PATH = "/health"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318  # OTLP/HTTP's registered port

_MEDIA_TYPES = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}


class SpanQueue(Protocol):
    """What the receiver needs from a transport; `SpanTransport` is the production one."""

    max_queue: int

    @property
    def pending(self) -> int: ...

    def submit_many(self, spans: list[Span]) -> int: ...


_ENV_VARS = {
    "max_body_bytes": "TRACEHOUSE_RECEIVER_MAX_BODY_BYTES",
    "max_decompressed_bytes": "TRACEHOUSE_RECEIVER_MAX_DECOMPRESSED_BYTES",
    "max_payload_bytes": "TRACEHOUSE_RECEIVER_MAX_PAYLOAD_BYTES",
    "max_concurrency": "TRACEHOUSE_RECEIVER_MAX_CONCURRENCY",
    "offload_bytes": "TRACEHOUSE_RECEIVER_OFFLOAD_BYTES",
    "retry_after_s": "TRACEHOUSE_RECEIVER_RETRY_AFTER",
}


@dataclass(frozen=True)
class ReceiverOptions:
    """Limits and behaviour of the receiver; `from_env()` reads `TRACEHOUSE_RECEIVER_*`."""

    max_body_bytes: int = 20 * 1024 * 1024  # as received (compressed); the OTel Collector's default
    max_decompressed_bytes: int = 64 * 1024 * 1024
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES  # per text (input, message, attribute), as the SDK
    max_concurrency: int = 4  # bodies read and decoded at once
    offload_bytes: int = 128 * 1024  # bodies at least this big are processed on the worker thread
    retry_after_s: int = 2  # the Retry-After of a 503
    tokens: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> ReceiverOptions:
        """Options from the environment; raises OSError when a named token file cannot be read."""
        source = os.environ if env is None else env
        numbers = {name: int(source[var]) for name, var in _ENV_VARS.items() if source.get(var)}
        base = cls(**numbers, tokens=tuple(load_tokens(source)))  # type: ignore[arg-type]
        given = {k: v for k, v in overrides.items() if v is not None}
        if "tokens" in given:
            given["tokens"] = tuple(given["tokens"])  # type: ignore[arg-type]
        return replace(base, **given)  # type: ignore[arg-type]


@dataclass
class ReceiverStats:
    """Counters for operators (served on /health); they only ever increase."""

    requests: int = 0
    spans_accepted: int = 0
    spans_rejected: int = 0  # reported in partial_success
    bad_requests: int = 0  # 400
    unauthorized: int = 0  # 401
    too_large: int = 0  # 413
    unsupported: int = 0  # 415
    throttled: int = 0  # 503: the queue was full; the exporter retries

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class Receiver:
    """The handlers and their state: the span queue, the limits, the worker thread."""

    def __init__(self, queue: SpanQueue, options: ReceiverOptions | None = None) -> None:
        self.queue = queue
        self.options = options or ReceiverOptions()
        self.stats = ReceiverStats()
        self.auth = TokenCheck(self.options.tokens)
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        self._slots = asyncio.Semaphore(self.options.max_concurrency)
        # One thread: decoding holds the GIL, so more threads would only contend for it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracehouse-receiver")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ---- answers ----------------------------------------------------------------------------

    def _error(
        self, status: int, media_type: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=status_body(media_type, status, message),
            content_type=media_type,
            headers=headers,
        )

    def _throttled(self, media_type: str, message: str) -> web.Response:
        self.stats.throttled += 1
        return self._error(503, media_type, message, {"Retry-After": str(self.options.retry_after_s)})

    # ---- handlers ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Liveness and the numbers that tell whether the receiver keeps up."""
        queue = self.queue
        pending = queue.pending
        body = {
            "status": "ok" if pending < queue.max_queue else "backpressure",
            "pending_spans": pending,
            "queue_capacity": queue.max_queue,
            "receiver": self.stats.snapshot(),
        }
        transport_stats = getattr(queue, "stats", None)
        snapshot = getattr(transport_stats, "snapshot", None)
        if callable(snapshot):
            body["transport"] = snapshot()
        return web.json_response(body)

    async def traces(self, request: web.Request) -> web.Response:
        """`POST /v1/traces`."""
        stats = self.stats
        stats.requests += 1
        media_type = _MEDIA_TYPES.get(request.content_type)
        reply_as = media_type or PROTOBUF
        if not self.auth.allows(request.headers.get("Authorization")):
            stats.unauthorized += 1
            return self._error(
                401, reply_as, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
            )
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
        if self.queue.pending >= self.queue.max_queue:  # full already: do not even read the body
            return self._throttled(reply_as, "span queue is full; retry later")

        assert self._slots is not None, "the receiver app was not started"
        async with self._slots:
            try:
                body = await self._read_body(request)
                result = await self._process(body, media_type, content_encoding)
            except RequestError as exc:
                if exc.status == 413:
                    stats.too_large += 1
                elif exc.status == 415:
                    stats.unsupported += 1
                else:
                    stats.bad_requests += 1
                log.debug("refused a request with %d: %s", exc.status, exc.reason)
                return self._error(exc.status, reply_as, exc.reason)
            except Exception:  # a bug here must answer like a server, and be seen
                log.exception("failed to process an OTLP request")
                return self._error(500, reply_as, "internal error while decoding the request")
        return self._forward(result, reply_as)

    async def _read_body(self, request: web.Request) -> bytes:
        """The body as sent, refused as soon as it passes `max_body_bytes` (before reading it all when
        Content-Length says so)."""
        limit = self.options.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"body of {length} bytes is above the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        stream = request.content
        try:
            while True:
                chunk = await stream.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is above the limit of {limit} bytes")
                chunks.append(chunk)
        except (RequestPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise BadRequest(f"incomplete request body: {exc}") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _process(self, body: bytes, media_type: str, content_encoding: str) -> IngestResult:
        options = self.options
        args = (body, media_type, content_encoding, options.max_decompressed_bytes, options.max_payload_bytes)
        if len(body) < options.offload_bytes or self._executor is None:
            return ingest(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, ingest, *args)

    def _forward(self, result: IngestResult, media_type: str) -> web.Response:
        """Hand the spans to the queue whole or not at all, and answer."""
        spans = result.spans
        count = len(spans)
        queue = self.queue
        if count:
            if count > queue.max_queue:
                self.stats.too_large += 1
                return self._error(
                    413, media_type, f"{count} spans in one request is more than the queue holds; send fewer"
                )
            if queue.pending + count > queue.max_queue:
                return self._throttled(media_type, "span queue is full; retry later")
            accepted = queue.submit_many(spans)
            if accepted < count:  # the transport is stopping: the exporter sends them again elsewhere
                self.stats.spans_accepted += accepted
                return self._throttled(media_type, "receiver is shutting down; retry later")
            self.stats.spans_accepted += count
        if result.rejected:
            self.stats.spans_rejected += result.rejected
            log.debug("rejected %d spans: %s", result.rejected, result.error_message)
        return web.Response(
            body=export_response(media_type, result.rejected, result.error_message), content_type=media_type
        )


RECEIVER_KEY = web.AppKey("tracehouse_receiver", Receiver)


def create_app(queue: SpanQueue, options: ReceiverOptions | None = None) -> web.Application:
    """The receiver application. Serve it with aiohttp's transparent decompression off
    (`AppRunner(app, auto_decompress=False)`, as `ReceiverServer` does): the receiver decompresses
    bodies itself, under its size limit."""
    receiver = Receiver(queue, options)
    app = web.Application()
    app[RECEIVER_KEY] = receiver
    app.router.add_post(TRACES_PATH, receiver.traces)
    app.router.add_get(HEALTH_PATH, receiver.health)
    app.on_startup.append(receiver._on_startup)
    app.on_cleanup.append(receiver._on_cleanup)
    return app
