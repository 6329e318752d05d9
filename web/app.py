"""The web trace explorer: an aiohttp application serving the JSON API and the single-page UI.

`create_app(settings)` builds the application (tests run it in process); `run_web(settings, host, port)`
serves it until SIGINT/SIGTERM. The UI is static files (HTML, CSS and JavaScript modules, no build step)
that call the API; everything the browser shows comes from `/api/...`.

Errors are answers, not stack traces: a bad parameter is a 400 and an unknown trace a 404, each as
`{"error": {"status", "code", "message"}}`; ClickHouse trouble is a 503 (unreachable, schema missing)
or 502 (it answered with an error), reduced to its first line; anything unexpected is a 500 whose
details go to the server's log only.

Slow or stuck clients (`Limits`): aiohttp serves each connection as its own task, so a slow one cannot
block another, but by default it waits an hour for a request's head and forever for a body. Here a
connection has `header_s` to send a complete request head (and is closed after as long idle between
requests); a body has a deadline proportional to its declared size with a floor (408 when it is
missed) and a size cap (413), and after such an early answer the rest of the body is drained for at most
`linger_s` (so the client sees the answer, not a reset) before the connection is closed.

Cross-site writes (`writes_guard`): any request with a body (POST, PUT, PATCH, DELETE) is refused with
403 when it carries an `Origin` other than the server's own host, or an `Origin` with a content type a web
page may send without a CORS preflight (text/plain, form, multipart). Browsers always send `Origin` on
such requests; scripts and API clients send none and are not affected. The one write route, scores
(`web/writes.py`), sits behind this guard and answers only when the operator turned writes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from tracehouse.core.browsers import browser_refusal
from tracehouse.core.config import Settings
from tracehouse.web.api import ENDPOINTS, READER, json_response
from tracehouse.web.models import ApiErrorBody, ErrorBody
from tracehouse.web.openapi import build_openapi
from tracehouse.web.params import ApiError
from tracehouse.web.reader import Reader
from tracehouse.web.writes import WebWrites
from tracehouse.web.writes import install as install_score_writes

log = logging.getLogger("tracehouse.web")

STATIC_DIR = Path(str(resources.files("tracehouse.web") / "static"))
DEFAULT_PORT = 8787
# The UI loads only its own files; span content (LLM output, documents) is shown as text, never as markup.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The address the server listens on: a loopback one makes it answer only to loopback Host names.
LISTEN_HOST = web.AppKey("listen_host", str)
CLOSE_AFTER = frozenset({408, 413})  # the rest of the body is not worth waiting for


@dataclass(frozen=True)
class Limits:
    """How long and how much the server waits for one client."""

    header_s: float = 15.0  # from connect (or the last answer) to a complete request head; aiohttp: an hour
    body_floor_s: float = 10.0  # the least time any body gets
    body_bytes_per_s: float = 64 * 1024  # the slowest upload rate accepted, beyond the floor
    max_body_bytes: int = 1024 * 1024
    linger_s: float = 2.0  # after an early answer (408, 413, 405), the rest of a body is drained this long

    def body_deadline_s(self, declared_bytes: int | None) -> float:
        """Proportional to the declared size (the cap when it is not declared), with a floor."""
        size = self.max_body_bytes if declared_bytes is None else min(declared_bytes, self.max_body_bytes)
        return self.body_floor_s + size / self.body_bytes_per_s


LIMITS = Limits()


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response(ApiErrorBody(ErrorBody(status, code, message)), status=status)


def _first_line(exc: BaseException) -> str:
    """A driver error reduced to what a user can act on: its first line, without the server's stack trace."""
    text = str(exc).strip()
    for marker in ("Stack trace", "(version "):
        text = text.split(marker, 1)[0]
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line[:400]


def _clickhouse_error(exc: ClickHouseError, settings: Settings) -> web.Response:
    target = settings.clickhouse
    where = f"ClickHouse at {target.url}, database {target.database}"
    text = str(exc)
    if "UNKNOWN_TABLE" in text or "UNKNOWN_DATABASE" in text or "doesn't exist" in text:
        return error_response(503, "schema_missing", f"{where}: the schema is not there (run: tracehouse migrate)")
    if isinstance(exc, OperationalError) and exc.__class__ is OperationalError:
        return error_response(503, "clickhouse_unavailable", f"{where} cannot be reached: {_first_line(exc)}")
    return error_response(502, "clickhouse_error", f"{where}: {_first_line(exc)}")


def errors_middleware(settings: Settings) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        api = request.path.startswith("/api/")
        try:
            return await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message)
            if exc.status in CLOSE_AFTER:
                response.force_close()
            return response
        except web.HTTPException as exc:
            if not api or exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "http_error")
            message = f"no API endpoint {request.path} (see /api/openapi.json)" if exc.status == 404 else exc.reason
            return error_response(exc.status, code, message)
        except ClickHouseError as exc:
            log.warning("ClickHouse error on %s: %s", request.path_qs, _first_line(exc))
            return _clickhouse_error(exc, settings)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            log.warning("ClickHouse unreachable on %s: %r", request.path_qs, exc)
            target = settings.clickhouse
            return error_response(503, "clickhouse_unavailable", f"ClickHouse at {target.url} cannot be reached")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error on %s", request.path_qs)
            return error_response(500, "internal_error", "unexpected server error; the server's log has details")

    return middleware


def refuse_cross_site(request: web.Request) -> None:
    """403 for a request with a body that a web page on another site could have made a browser send
    (`core/browsers.py`: the embedded ClickHouse server's rule too)."""
    reason = browser_refusal(request.method, request.headers, request.content_type, request.app[LISTEN_HOST])
    if reason is not None:
        raise ApiError(403, "cross_site_refused", reason)


async def read_body(request: web.Request, limits: Limits) -> None:
    """Read the whole body within its deadline (then `request.read()`/`json()` answer from memory)."""
    declared = request.content_length
    if declared is not None and declared > limits.max_body_bytes:
        raise ApiError(413, "payload_too_large", f"the body may be at most {limits.max_body_bytes} bytes")
    deadline = limits.body_deadline_s(declared)
    try:
        async with asyncio.timeout(deadline):
            await request.read()
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {deadline:.0f} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large", f"the body may be at most {limits.max_body_bytes} bytes") from None


def writes_guard(limits: Limits) -> Middleware:
    """Requests with a body: refused when cross-site, read within a deadline and a size cap before any
    handler sees them (the scores route, `web/writes.py`, sits behind this)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in UNSAFE_METHODS:
            refuse_cross_site(request)
            if request.match_info.http_exception is None and request.body_exists:
                await read_body(request, limits)
        return await handler(request)

    return middleware


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    else:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("Cache-Control", "no-cache")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(settings: Settings, limits: Limits = LIMITS, writes: WebWrites | None = None) -> web.Application:
    """The application: /api/... (JSON), /api/openapi.json, / (the UI) and /static/... (its files).
    `writes`: whether `POST /api/traces/{id}/scores` is on (default: from the environment, off)."""
    app = web.Application(
        middlewares=[errors_middleware(settings), writes_guard(limits)], client_max_size=limits.max_body_bytes
    )
    app[READER] = Reader(settings)
    app[LISTEN_HOST] = "127.0.0.1"  # `serve` sets the address it listens on
    openapi = msgspec.json.encode(build_openapi())

    async def openapi_json(request: web.Request) -> web.Response:
        return json_response(openapi)

    async def close_reader(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[READER].close()

    app.cleanup_ctx.append(close_reader)
    for endpoint in ENDPOINTS:  # a session id may hold a slash (sent as %2F): it takes the rest of the path
        app.router.add_get(endpoint.path.replace("{session_id}", "{session_id:.+}"), endpoint.handler)
    install_score_writes(app, settings, writes)
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.on_response_prepare.append(_security_headers)
    return app


async def serve(
    settings: Settings,
    host: str,
    port: int,
    stop: asyncio.Event,
    started: Callable[[int], None] | None = None,
    *,
    limits: Limits = LIMITS,
    app: web.Application | None = None,
) -> None:
    """Serve until `stop` is set; prints the address (the real port, when port 0 asked for a free one)
    and hands the port to `started`. `app` (tests): an application from `create_app`, with routes added."""
    app = app or create_app(settings, limits)
    app[LISTEN_HOST] = host
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=limits.header_s,
        lingering_time=limits.linger_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"tracehouse web started on http://{shown}:{bound}", file=sys.stderr, flush=True)
        if started is not None:
            started(bound)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_web(settings: Settings, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, embedded: bool = True) -> int:
    """Serve the explorer in the foreground until Ctrl-C or SIGTERM; returns the exit status.

    With `embedded`, the embedded ClickHouse engine is started on the local data when nothing answers at
    the configured URL (as the reading commands do), and stopped on exit.
    """
    server = None
    if embedded:
        with contextlib.suppress(ImportError):
            import chdb  # noqa: F401  (only the [embedded] extra has it)

            from tracehouse.infra.clickhouse.launcher import ensure_clickhouse

            server = ensure_clickhouse(settings.clickhouse_url, settings.clickhouse_data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await serve(settings, host, port, stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"tracehouse web: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    return 0
