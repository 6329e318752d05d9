"""Serving the receiver: `tracehouse receiver` (blocking, signal-aware), an async server object, and a
background-thread variant for tests, notebooks and the benchmark.

Shutdown order matters for "no span lost": stop accepting connections, let requests in flight finish
(their spans enter the transport's queue or get a 503), then flush the transport so every accepted span
is acknowledged by Kafka before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from aiohttp import web

from .app import RECEIVER_KEY, Receiver, ReceiverOptions, SpanQueue, create_app
from .auth import load_tokens

if TYPE_CHECKING:
    from tracehouse.core.config import Settings

__all__ = ["BackgroundReceiver", "ReceiverServer", "run_receiver"]

log = logging.getLogger("tracehouse.receiver")


class ReceiverServer:
    """The receiver app listening on host:port (port 0: any free port; see `.port`)."""

    def __init__(
        self,
        queue: SpanQueue,
        options: ReceiverOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 4318,
        *,
        shutdown_timeout: float = 15.0,
    ) -> None:
        self.app = create_app(queue, options)
        self.host = host
        self._requested_port = port
        self._runner = web.AppRunner(
            self.app,
            auto_decompress=False,  # the receiver decompresses itself, under its size limit
            access_log=None,  # one log line per request costs more than decoding a small request
            shutdown_timeout=shutdown_timeout,
        )
        self._site: web.TCPSite | None = None

    @property
    def receiver(self) -> Receiver:
        return self.app[RECEIVER_KEY]

    async def start(self) -> ReceiverServer:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._requested_port, backlog=1024)
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
        queue: SpanQueue,
        options: ReceiverOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.server = ReceiverServer(queue, options, host, port)
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


async def _serve(queue: SpanQueue, options: ReceiverOptions, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ReceiverServer(queue, options, host, port)
    await server.start()
    auth = "bearer tokens required" if server.receiver.auth.enabled else "no authentication"
    print(f"tracehouse receiver started on {server.url}", file=sys.stderr, flush=True)
    log.info("receiving OTLP/HTTP traces at %s/v1/traces (%s)", server.url, auth)
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("receiver stopped: %s", server.receiver.stats.snapshot())


def run_receiver(settings: Settings, host: str, port: int, tokens: list[str]) -> int:
    """`tracehouse receiver`: serve OTLP/HTTP on host:port until SIGTERM or Ctrl-C, forwarding spans to
    Kafka through a `SpanTransport`; on the way out, finish the requests in flight and flush.

    `tokens`: bearer tokens to require; when empty, `TRACEHOUSE_RECEIVER_TOKENS(_FILE)` are used (so
    authentication configured in the environment is never switched off by a missing flag). Other limits
    come from `TRACEHOUSE_RECEIVER_*` (see `ReceiverOptions`). Returns the process exit code.
    """
    from tracehouse.producers.transport import SpanTransport

    try:
        options = ReceiverOptions.from_env(tokens=list(tokens) or load_tokens())
    except (OSError, ValueError) as exc:
        print(f"tracehouse receiver: bad configuration: {exc}", file=sys.stderr)
        return 2
    transport = SpanTransport(settings.kafka_bootstrap, client_id="tracehouse-receiver")
    code = 0
    try:
        asyncio.run(_serve(transport, options, host, port))
    except OSError as exc:  # the port is taken, the address does not exist
        print(f"tracehouse receiver: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        code = 1
    finally:
        flushed = transport.flush(timeout=30.0)
        transport.shutdown(timeout=5.0)
        stats = transport.stats.snapshot()
        log.info("transport: %s", stats)
        if not flushed:
            print(
                f"tracehouse receiver: {transport.pending} spans were not acknowledged by Kafka at exit",
                file=sys.stderr,
            )
    return code
