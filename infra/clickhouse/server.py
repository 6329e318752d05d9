"""`tracehouse clickhouse`: the real ClickHouse engine (chdb, in process) behind ClickHouse's HTTP interface.

Production points tracehouse at a ClickHouse server; for development and tests the same clients
(clickhouse-connect sync and async, curl, Grafana's ClickHouse data source) talk to this process instead,
so there is one code path to the database. It speaks the parts of the HTTP protocol those clients use:
the query in the URL and/or the body, `param_*` query parameters, settings as URL parameters, sessions,
inserts with the data in the body (compressed or not), streamed results, and ClickHouse's error format
and status codes. For clickhouse-go (Grafana) it also writes Native for the `client_protocol_version` a
client names and frames responses in ClickHouse's compressed blocks for `compress=1`; see
native.py. See engine.py for how requests map onto chdb.

Who may use it is access.py's business: requests from web pages are refused, GET and `readonly`
are read-only as on a ClickHouse server, and with a users file every request must authenticate.

Not supported: external data (file fields in a multipart form), progress headers, query cancellation by
KILL QUERY, HTTPS, roles, quotas and grants beyond a user's readonly level.

Run it as `python -m tracehouse.infra.clickhouse.server --data-dir DIR --port 8123`; it serves until
SIGINT or SIGTERM. Only one process may open a data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from tracehouse.core import settings as env
from tracehouse.core.config import CLICKHOUSE_USERS_FILE_ENV
from tracehouse.infra.clickhouse.access import Access, Refused, Users, readonly_level
from tracehouse.infra.clickhouse.codecs import BodyDecoder, CodecError, ResponseBody, response_encoder
from tracehouse.infra.clickhouse.engine import (
    Engine,
    EngineLockedError,
    Handle,
    QueryError,
    Stats,
    engine_settings,
)
from tracehouse.infra.clickhouse.native import compress_blocks, upgrade_blocks
from tracehouse.infra.clickhouse.sql import (
    NEED_MORE,
    RESULT_KEYWORDS,
    InsertHead,
    output_format,
    second_statement_at,
    split_insert,
    tokens,
)

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", Engine)

# Output formats whose per-block outputs concatenate into one valid stream; anything with a global
# header or footer (JSON, *WithNames, Parquet, Arrow, Pretty...) is produced in one piece instead.
STREAMABLE = frozenset(
    {
        "native", "tabseparated", "tsv", "tabseparatedraw", "tsvraw", "csv", "jsoneachrow", "jsonlines",
        "ndjson", "jsoncompacteachrow", "jsonstringseachrow", "jsoncompactstringseachrow", "rowbinary",
        "values", "tskv", "lineasstring", "rawblob",
    }
)  # fmt: skip

# chdb streams only SELECTs ("Streaming query is not supported for query: SHOW TABLES")
STREAMED_KEYWORDS = frozenset({b"SELECT", b"WITH", b"("})

_TEXT = "text/plain; charset=UTF-8"
_BINARY = "application/octet-stream"
CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnames": "text/tab-separated-values; charset=UTF-8; header=present",
    "tsvwithnames": "text/tab-separated-values; charset=UTF-8; header=present",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsonstrings": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "jsonlines": "application/x-ndjson; charset=UTF-8",
    "ndjson": "application/x-ndjson; charset=UTF-8",
    "xml": "application/xml; charset=UTF-8",
}
_BINARY_FORMATS = ("native", "rowbinary", "parquet", "arrow", "orc", "avro", "protobuf", "capnproto", "msgp")

INSERT_BATCH = 1 << 20  # bytes of request body handed to the engine per thread hop
MAX_QUERY_BYTES = 256 << 20  # a non-INSERT body is SQL text and is read whole


def content_type(fmt: str) -> str:
    low = fmt.lower()
    if low in CONTENT_TYPES:
        return CONTENT_TYPES[low]
    return _BINARY if low.startswith(_BINARY_FORMATS) else _TEXT


class _Request:
    """What one HTTP request asks for, gathered from URL parameters, form fields and headers."""

    __slots__ = ("database", "default_format", "eof", "params", "query_id", "readonly", "settings", "user")

    def __init__(
        self, engine: Engine, request: web.Request, params: dict[str, str], eof: bool, user: str, readonly: int
    ):
        headers = request.headers
        self.params = params
        self.user = user
        self.readonly = readonly
        self.database = params.get("database") or headers.get("X-ClickHouse-Database") or None
        self.default_format = params.get("default_format") or headers.get("X-ClickHouse-Format") or "TabSeparated"
        # echoed in a header, so no line breaks
        self.query_id = "".join(params.get("query_id", "").split()) or str(uuid.uuid4())
        self.settings = engine_settings(params, engine.known_settings)
        self.eof = eof

    def response_body(self, request: web.Request, fmt: str | None, streamed: bool) -> ResponseBody:
        """How this request's result bytes must be shaped: protocol revision and compression."""
        params = self.params
        revision = params.get("client_protocol_version", "0")
        rewrite = None
        if fmt is not None and fmt.lower() == "native" and revision.isdigit() and int(revision) > 0:
            rewrite = functools.partial(upgrade_blocks, revision=int(revision), single_block=streamed)
        if params.get("compress") == "1":
            return ResponseBody(rewrite=rewrite, blocks=compress_blocks)
        encoder = None
        if params.get("enable_http_compression", "0").lower() in ("1", "true"):
            level = params.get("http_zlib_compression_level", "3")
            level_n = int(level) if level.isdigit() else 3
            encoder = response_encoder(request.headers.get("Accept-Encoding"), level_n)
        return ResponseBody(encoder, rewrite)

    @property
    def query_params(self) -> dict[str, str]:
        return {k[6:]: v for k, v in self.params.items() if k.startswith("param_")}

    @property
    def session(self) -> tuple[str | None, float, bool]:
        try:
            timeout = min(float(self.params.get("session_timeout", "60")), 3600.0)  # max_session_timeout
        except ValueError:
            timeout = 60.0
        return self.params.get("session_id") or None, timeout, self.params.get("session_check") == "1"


class ClickHouseHTTP:
    """The request handlers; one instance per server, around one Engine."""

    def __init__(self, engine: Engine, access: Access):
        self.engine = engine
        self.access = access
        self.display_name = socket.gethostname()

    # -- helpers ----------------------------------------------------------------------------------

    def _headers(
        self,
        req: _Request | None,
        stats: Stats | None = None,
        fmt: str | None = None,
        out: ResponseBody | None = None,
    ) -> dict[str, str]:
        headers = {
            "X-ClickHouse-Server-Display-Name": self.display_name,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Summary": (stats or Stats()).summary(),
        }
        if req is not None:
            headers["X-ClickHouse-Query-Id"] = req.query_id
            if req.params.get("add_http_cors_header") == "1":
                headers["Access-Control-Allow-Origin"] = "*"
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = content_type(fmt)
        else:
            headers["Content-Type"] = _TEXT
        if out is not None and out.content_encoding is not None:
            headers["Content-Encoding"] = out.content_encoding
        return headers

    def _error(self, err: QueryError, req: _Request | None) -> web.Response:
        headers = self._headers(req)
        headers["X-ClickHouse-Exception-Code"] = str(err.code)
        return web.Response(status=err.status, body=(err.message + "\n").encode(), headers=headers)

    # -- routes -----------------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"There is no handle {request.path}\n\nUse / or /ping.\n")

    async def options(self, request: web.Request) -> web.Response:
        try:  # a preflight from a foreign page gets no permission
            self.access.check_browser(request.method, request.headers, request.content_type)
        except Refused as err:
            return self._error(self.engine.fail(err.code, err.text), None)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "*",
            },
        )

    async def root(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        try:  # before reading any of the body
            self.access.check_browser(request.method, request.headers, request.content_type)
            user, profile_readonly = self.access.authenticate(request.headers, params)
        except Refused as err:
            return self._error(self.engine.fail(err.code, err.text), None)
        has_body = request.method == "POST" and request.body_exists
        if has_body and request.content_type == "multipart/form-data":
            try:
                await self._read_form(request, params)
            except QueryError as err:
                return self._error(err, None)
            has_body = False
        if not has_body and "query" not in params:
            return web.Response(text="Ok.\n")
        try:
            readonly = readonly_level(profile_readonly, params.get("readonly"), request.method)
            req = _Request(self.engine, request, params, not has_body, user, readonly)
            decoder = BodyDecoder(request.headers.get("Content-Encoding"), params.get("decompress") == "1")
        except Refused as err:
            return self._error(self.engine.fail(err.code, err.text), None)
        except CodecError as err:
            return self._error(self.engine.fail(err.code, str(err)), None)
        try:
            return await self._execute(request, req, decoder)
        except QueryError as err:
            return self._error(err, req)
        except ConnectionResetError:
            # The client went away mid-request; an insert it was sending has been cancelled
            log.debug("client disconnected during query %s", req.query_id)
            return web.Response(status=400, text="Connection lost\n")
        except Exception as exc:  # a bug here must still answer the way ClickHouse would
            log.exception("query %s failed", req.query_id)
            return self._error(self.engine.error(exc), req)  # keeps a ClickHouse code found in the text

    async def _read_form(self, request: web.Request, params: dict[str, str]) -> None:
        """multipart/form-data: clickhouse-connect sends the query and large parameters as form fields."""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.filename:
                raise self.engine.fail(48, "External data (file form fields) is not supported by this server")
            params[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")

    # -- execution --------------------------------------------------------------------------------

    async def _execute(self, request: web.Request, req: _Request, decoder: BodyDecoder) -> web.StreamResponse:
        url_query = req.params.get("query", "").encode()
        buf = bytearray(url_query + b"\n" if url_query and not req.eof else url_query)
        content = request.content
        body_untouched = True  # no byte of the body read yet: it can go to the engine as it came
        while True:
            found = split_insert(bytes(buf), req.eof)
            if found != NEED_MORE:
                break
            body_untouched = False
            await self._read_more(req, content, decoder, buf)
        if isinstance(found, InsertHead):
            data = bytes(buf[found.data_start :])
            compression = "none"
            if body_untouched and not data and decoder.engine_compression is not None:
                # The engine decompresses the file as it parses it: no pass over the body in Python
                compression, decoder = decoder.engine_compression, BodyDecoder(None, False)
            return await self._insert(req, found, data, content, decoder, compression)
        while not req.eof:
            await self._read_more(req, content, decoder, buf)
            if len(buf) > MAX_QUERY_BYTES:
                raise self.engine.fail(229, f"Query is too large ({len(buf)} bytes)")  # QUERY_IS_TOO_LARGE
        return await self._query(request, req, bytes(buf))

    async def _read_more(self, req: _Request, content: Any, decoder: BodyDecoder, buf: bytearray) -> None:
        chunk = await content.readany()
        try:
            if chunk:
                buf += decoder.feed(chunk)
            else:
                req.eof = True
                buf += decoder.finish()
        except QueryError:
            raise
        except Exception as exc:
            raise self.engine.codec_error(exc) from None

    async def _insert(
        self, req: _Request, head: InsertHead, data: bytes, content: Any, decoder: BodyDecoder, compression: str
    ) -> web.Response:
        """Spool the body to a file as it arrives, then run the INSERT on it with `FROM INFILE`: the engine's
        answer is then the whole truth (see engine.py), and a body cut short inserts nothing. The file is
        compressed with the engine's method `compression` ("none": `decoder` has decoded it)."""
        engine = self.engine
        spool = None
        raw: list[bytes] = []
        try:
            if not req.eof:
                raw, req.eof = await _read_batch(content, INSERT_BATCH)
            if not req.eof:  # more than one batch: spool it as it arrives, holding no engine handle
                spool = await engine.call(engine.open_spool, decoder, data, raw)
                data, raw = b"", []
                while not req.eof:
                    more, req.eof = await _read_batch(content, INSERT_BATCH)
                    await engine.call(spool.feed, more)
            async with engine.lease(*req.session, readonly=req.readonly, user=req.user) as (handle, _):
                stats = await engine.call(
                    handle.insert_body, req.database, req.settings, head, spool, decoder, data, raw, compression
                )
        finally:
            if spool is not None and not spool.discarded:
                await engine.call(spool.discard)
        return web.Response(body=b"", headers=self._headers(req, stats))

    async def _query(self, request: web.Request, req: _Request, sql: bytes) -> web.StreamResponse:
        engine = self.engine
        extra = second_statement_at(sql)
        if extra is not None:
            rest = sql[extra : extra + 40].decode("utf-8", "replace")
            text = f"Syntax error (Multi-statements are not allowed): failed at position {extra + 1}: {rest}"
            raise engine.fail(62, text)  # SYNTAX_ERROR, as a ClickHouse server answers over HTTP
        toks = tokens(sql)
        first = next(toks, None)
        keyword = first.upper if first is not None else b""
        second = next(toks, None)
        is_result = keyword in RESULT_KEYWORDS
        fmt = (output_format(sql) if is_result else None) or req.default_format
        stream = keyword in STREAMED_KEYWORDS and fmt.lower() in STREAMABLE
        out = req.response_body(request, fmt if is_result else None, stream)
        async with engine.lease(*req.session, readonly=req.readonly, user=req.user) as (handle, in_session):
            try:
                if stream:
                    return await self._stream(request, req, handle, sql, fmt, out)
                body, stats = await engine.call(
                    handle.query, req.database, req.settings, sql, fmt, req.query_params, out
                )
            finally:
                if keyword in (b"USE", b"SET", b"CREATE"):
                    second_kw = second.upper if second is not None else b""
                    await engine.call(handle.after_statement, keyword, second_kw, in_session)
        show_format = fmt if is_result or body else None
        headers = self._headers(req, stats, show_format, out if body else None)
        return web.Response(body=body, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        req: _Request,
        handle: Handle,
        sql: bytes,
        fmt: str,
        out: ResponseBody,
    ) -> web.StreamResponse:
        engine = self.engine
        stream, data, done, stats = await engine.call(
            handle.open_stream, req.database, req.settings, sql, fmt, req.query_params, out
        )
        try:
            if req.params.get("wait_end_of_query") == "1":
                # Buffer the whole result so that a late error still gets an error status
                parts = [data]
                while not done:
                    data, done = await engine.call(handle.next_block, stream, out)
                    parts.append(data)
                body = b"".join(parts)
                headers = self._headers(req, stats, fmt, out if body else None)
                return web.Response(body=body, headers=headers)
            tag = secrets.token_hex(8)
            headers = self._headers(req, stats, fmt, out)
            headers["X-ClickHouse-Exception-Tag"] = tag
            response = web.StreamResponse(headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                while True:
                    if data:
                        await response.write(data)
                    if done:
                        break
                    data, done = await engine.call(handle.next_block, stream, out)
            except QueryError as err:
                # Headers are gone: report the error in the body the way ClickHouse 25.11+ does
                done = True
                message = err.message.encode()
                block = b"__exception__\r\n%s\r\n%s\n%d %s\r\n__exception__\r\n" % (
                    tag.encode(), message, len(message), tag.encode(),
                )  # fmt: skip
                block = out.frame(block) + out.finish()
                response.force_close()
                await response.write(block)
            except ConnectionResetError:
                return response  # the client went away; `finally` cancels the query
            await response.write_eof()
            return response
        finally:
            if not done:
                await engine.call(handle.close_stream, stream)


async def _read_batch(content: Any, limit: int) -> tuple[list[bytes], bool]:
    """Up to about `limit` bytes of body, in the pieces they arrived in, and whether the body is finished.

    Pieces, not one bytes object: joining them (here, or in `readany`) copied the body once more on the
    event loop, which profiled at a fifth of its CPU on large inserts."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk, end_of_http_chunk = await content.readchunk()
        if chunk:
            parts.append(chunk)
            size += len(chunk)
        elif not end_of_http_chunk:  # (b"", False) is the end of the body
            return parts, True
    return parts, content.at_eof()


# --- app and entry points -------------------------------------------------------------------------


def make_app(engine: Engine, access: Access) -> web.Application:
    handlers = ClickHouseHTTP(engine, access)
    app = web.Application(client_max_size=MAX_QUERY_BYTES)
    app[ENGINE_KEY] = engine
    app.router.add_route("GET", "/ping", handlers.ping)
    app.router.add_route("GET", "/replicas_status", handlers.ping)
    app.router.add_route("GET", "/", handlers.root)
    app.router.add_route("POST", "/", handlers.root)
    app.router.add_route("OPTIONS", "/{tail:.*}", handlers.options)
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)

    async def sessions_reaper(app: web.Application):
        task = asyncio.create_task(engine.expire_sessions())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()

    app.cleanup_ctx.append(sessions_reaper)
    return app


async def start_server(
    data_dir: Path, host: str = "127.0.0.1", port: int = 8123, users: Users | None = None
) -> web.AppRunner:
    """Open the engine on `data_dir` and serve on host:port in the running loop; `await runner.cleanup()`
    stops it. Raises EngineLockedError if another process has the directory, OSError if the port is taken.
    With `users`, every request must authenticate as one of them.

    chdb allows one data directory per process, so in-process use is for a single server per process.
    """
    engine = await asyncio.to_thread(Engine, Path(data_dir))
    app = make_app(engine, Access(host, port, users))
    # auto_decompress off: this server decodes Content-Encoding itself (aiohttp does not know lz4)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _serve(data_dir: Path, host: str, port: int, users: Users | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await start_server(data_dir, host, port, users)
    who = "users from the users file" if users is not None else "any user"
    print(f"clickhouse listening on http://{host}:{port} (data {data_dir}; {who})", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8123,
    timezone: str | None = "UTC",
    users_file: Path | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. Exits the process with status 1 and a one-line reason if the data
    directory is in use, the port is taken or the users file cannot be used.

    The engine's timezone is fixed to `timezone` (UTC by default) so results do not depend on where the
    server runs; pass None to keep the process's. `users_file` defaults to TRACEHOUSE_CLICKHOUSE_USERS_FILE.
    """
    if users_file is None:
        users_file = env.get(env.CLICKHOUSE_USERS_FILE)
    try:
        users = Users.load(users_file) if users_file is not None else None
    except ValueError as exc:
        print(f"clickhouse: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if timezone:
        os.environ["TZ"] = timezone
        time.tzset()
    try:
        asyncio.run(_serve(Path(data_dir), host, port, users))
    except EngineLockedError as exc:
        print(f"clickhouse: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except OSError as exc:
        reason = exc.strerror or exc
        print(f"clickhouse: cannot listen on {host}:{port}: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except RuntimeError as exc:
        print(f"clickhouse: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracehouse.infra.clickhouse.server",
        description="ClickHouse (chdb, in process) served over ClickHouse's HTTP interface.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="where the databases live")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--timezone", default="UTC", help="server timezone ('' keeps the process's)")
    parser.add_argument(
        "--users-file",
        type=Path,
        default=None,
        help=f"TOML users with passwords and readonly levels (default ${CLICKHOUSE_USERS_FILE_ENV}; none: any user)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.data_dir, args.host, args.port, args.timezone or None, args.users_file)


if __name__ == "__main__":
    main()
