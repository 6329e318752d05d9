"""Serving the receiver: `tracehouse receiver` (blocking, signal-aware), an async server object, and a
background-thread variant for tests, notebooks and the benchmark.

Shutdown order matters for "no span lost": stop accepting connections, let requests in flight finish
(each gets 200 if Kafka acknowledged its spans within the bound, else 503), then flush the sender so
whatever is still on its way to Kafka gets there before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from aiohttp import web

from .app import RECEIVER_KEY, Receiver, ReceiverOptions, SpanSender, create_app
from .auth import load_tokens

if TYPE_CHECKING:
    from tracehouse.core.config import Settings

__all__ = ["BackgroundReceiver", "ReceiverServer", "run_receiver"]

log = logging.getLogger("tracehouse.receiver")


class ReceiverServer:
    """The receiver app listening on host:port (port 0: any free port; see `.port`)."""

    def __init__(
        self,
        sender: SpanSender,
        options: ReceiverOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 4318,
        *,
        shutdown_timeout: float | None = None,
        reuse_port: bool = False,
    ) -> None:
        options = options or ReceiverOptions()
        self.app = create_app(sender, options)
        if shutdown_timeout is None:  # long enough for every request in flight to get its answer
            shutdown_timeout = options.ack_timeout_s + 5.0
        self.host = host
        self._requested_port = port
        self._reuse_port = reuse_port  # `--processes N`: N receivers share the port (SO_REUSEPORT)
        self._runner = web.AppRunner(
            self.app,
            auto_decompress=False,  # the receiver decompresses itself, under its size limit
            access_log=None,  # one log line per request costs more than decoding a small request
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=options.header_timeout_s,  # bounds a head that arrives too slowly
        )
        self._site: web.TCPSite | None = None

    @property
    def receiver(self) -> Receiver:
        return self.app[RECEIVER_KEY]

    async def start(self) -> ReceiverServer:
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.host, self._requested_port, backlog=1024, reuse_port=self._reuse_port or None
        )
        await self._site.start()
        return self

    @property
    def port(self) -> int:
        addresses = self._runner.addresses
        return int(addresses[0][1]) if addresses else self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening and wait (up to the shutdown timeout) for requests in flight."""
        await self._runner.cleanup()


class BackgroundReceiver:
    """A `ReceiverServer` on its own event loop in a daemon thread: an in-process receiver that
    synchronous code (the OpenTelemetry SDK's exporter, a test) can send to."""

    def __init__(
        self,
        sender: SpanSender,
        options: ReceiverOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.server = ReceiverServer(sender, options, host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="tracehouse-receiver-loop", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.server.stop())
        self._loop.close()

    def start(self, timeout: float = 10.0) -> BackgroundReceiver:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the receiver did not start in time")
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def receiver(self) -> Receiver:
        return self.server.receiver

    def stop(self, timeout: float = 20.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(sender: SpanSender, options: ReceiverOptions, host: str, port: int, reuse_port: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ReceiverServer(sender, options, host, port, reuse_port=reuse_port)
    await server.start()
    auth = "bearer tokens required" if server.receiver.auth.enabled else "no authentication"
    print(f"tracehouse receiver started on {server.url}", file=sys.stderr, flush=True)
    log.info("receiving OTLP/HTTP traces at %s/v1/traces and scores at %s/v1/scores (%s)", server.url, server.url, auth)
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("receiver stopped: %s", server.receiver.stats.snapshot())


def run_receiver(settings: Settings, host: str, port: int, tokens: list[str], reuse_port: bool = False) -> int:
    """`tracehouse receiver`: serve OTLP/HTTP on host:port until SIGTERM or Ctrl-C, answering 200 once
    Kafka has acknowledged a request's spans (`AckedSpanSender`); on the way out, stop accepting,
    answer the requests in flight honestly and flush.

    `tokens`: bearer tokens to require; when empty, `TRACEHOUSE_RECEIVER_TOKENS(_FILE)` are used (so
    authentication configured in the environment is never switched off by a missing flag). Other limits
    come from `TRACEHOUSE_RECEIVER_*` (see `ReceiverOptions`). Returns the process exit code.
    """
    from tracehouse.producers.acked_sender import AckedSpanSender

    try:
        options = ReceiverOptions.from_env(tokens=list(tokens) or load_tokens())
    except (OSError, ValueError) as exc:
        print(f"tracehouse receiver: bad configuration: {exc}", file=sys.stderr)
        return 2
    sender = AckedSpanSender(
        settings.kafka_bootstrap, max_pending=options.max_pending_spans, client_id="tracehouse-receiver"
    )
    try:
        asyncio.run(_serve(sender, options, host, port, reuse_port))
    except OSError as exc:  # the port is taken, the address does not exist
        print(f"tracehouse receiver: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    log.info("sender: %s", sender.stats.snapshot())
    if sender.pending:
        print(f"tracehouse receiver: {sender.pending} spans were not acknowledged by Kafka at exit", file=sys.stderr)
    return 0
