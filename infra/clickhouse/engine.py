"""The chdb engine behind the embedded ClickHouse HTTP server: connection handles, sessions, errors.

chdb hosts one ClickHouse engine per process (one data directory, locked against other processes) and
hands out any number of connection handles to it. What was found by experiment with chdb-core 26.9:

* A handle runs one statement at a time: calls from two threads on one handle serialize, and a query on
  a handle with an open result stream or streaming insert fails. Different handles run in parallel (the
  GIL is released), so concurrency comes from a pool of handles, each leased to one request at a time.
* `USE` and `SET` are per handle (a ClickHouse session each). Per-request settings are applied with SET
  on the leased handle, remembering what each handle has so that the common case (a client sending the
  same settings every time) costs nothing, and unwanted ones are put back with `SET x = DEFAULT`.
* `insert_deduplication_token` set that way applies to inserts, so exactly-once inserts into MergeTree
  tables with `non_replicated_deduplication_window` work.
* chdb's streaming insert (`send_insert` ... `finish()`) loses errors the engine raises when it writes the
  block: an insert touching more than `max_partitions_per_insert_block` partitions (252) or violating a
  CHECK constraint (469) is reported as written and nothing is stored (chdb-core 26.9: the insert worker
  never looks at the exception it receives at the end of the query). A plain `query()` raises them, but
  `query()` splits its text into several statements at a blank line, so data must never be inlined in
  SQL. So the request body is spooled to a file and inserted with `INSERT ... FROM INFILE`: the engine
  parses only the file, any error comes back with its real code, and a client that goes away mid-body
  has inserted nothing. Parsing is single-threaded unless a request asks otherwise, as the streaming insert
  was. Cost, against the streaming insert, old and new servers interleaved on a loaded 2-core machine:
  25,000 span rows (39 MB of JSONCompactEachRow) take 530-540 ms of server CPU against 570-580 ms (medians
  of 15 runs, two sessions) and the same wall time within noise; a 10-row insert takes 0.4 ms more server
  CPU (4.4 against 4.0 ms: the engine sets up a file read) and the same wall time (4.7 ms).
* A body compressed with lz4, zstd or gzip whose INSERT is in the URL (clickhouse-connect's `raw_insert`,
  curl) is spooled as it came and read with `COMPRESSION '<method>'`: the engine decompresses it while
  parsing, in C++, and reads concatenated frames (one per client block) and gzip members (tested with many
  frames). Server CPU per span of the issue 12 workload, 5,000-row inserts into a Null table, old and new
  servers interleaved, medians of 7 and 9 runs in two sessions against the Python decoder: gzip 35/30 ->
  23/22 µs, zstd 29/24 -> 25/18, lz4 24/21 -> 21/19 (with the body handed over in the pieces it arrived
  in; uncompressed 24/20 -> 22/19). A corrupt frame is the engine's
  own error (LZ4_DECODER_FAILED, ZSTD_DECODER_FAILED, ZLIB_INFLATE_FAILED). Bodies that carry their
  INSERT inside the compression (clickhouse-connect's `insert()`), `decompress=1` and the other encodings
  are decoded in Python as before.
* `readonly` (1 or 2) cannot be undone on a handle (`SET readonly = 0` is refused in readonly mode), so
  each readonly level has its own handles: the engine itself refuses writes and setting changes, as a
  ClickHouse server does for a readonly user or query.

ClickHouse HTTP sessions (`session_id`) get a dedicated handle that lives until `session_timeout`
expires, so SET, USE and temporary tables persist within a session as they do on a real server.
Requests of one session are serialized instead of failing with SESSION_IS_LOCKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tracehouse.infra.clickhouse.codecs import BodyDecoder, ResponseBody
from tracehouse.infra.clickhouse.sql import InsertHead, quote_identifier, quote_string

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- errors ---------------------------------------------------------------------------------------

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by error name.
_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"),
        403,
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
            "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}  # fmt: skip

_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


class QueryError(Exception):
    """A ClickHouse exception as the HTTP interface reports it: code, name, full message, HTTP status."""

    def __init__(self, code: int, name: str, message: str):
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    @property
    def status(self) -> int:
        return _STATUS_BY_NAME.get(self.name, 500)

    @classmethod
    def make(cls, code: int, name: str, text: str, version: str) -> QueryError:
        return cls(code, name, f"Code: {code}. DB::Exception: {text}. ({name}) (version {version})")


def error_from_chdb(exc: BaseException, version: str, names: dict[int, str]) -> QueryError:
    """chdb raises RuntimeError/ChdbError whose text holds ClickHouse's 'Code: N. DB::Exception: ...'."""
    if isinstance(exc, QueryError):
        return exc
    text = str(exc)
    start = text.find("Code: ")
    match = _CODE_RE.search(text, start) if start >= 0 else None
    if match is None:
        return QueryError.make(1001, "STD_EXCEPTION", text.strip() or type(exc).__name__, version)
    message = text[start:].strip()
    code = int(match.group(1))
    found = _NAME_RE.findall(message)
    name = found[-1] if found else names.get(code, "UNKNOWN_EXCEPTION")
    # chdb re-wraps some errors (INSERT ... FROM INFILE): "Code: 27. DB::Exception: Code: 27. DB::Exception: ..."
    doubled = f"Code: {code}. DB::Exception: "
    while message.startswith(doubled + doubled):
        message = message[len(doubled) :]
    if "(version " not in message:
        message = f"{message} (version {version})"
    return QueryError(code, name, message)


# --- settings -------------------------------------------------------------------------------------

# URL parameters that are part of the HTTP protocol rather than query settings.
HTTP_PARAMS = frozenset(
    {
        "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
        "user", "password", "quota_key", "compress", "decompress", "enable_http_compression",
        "http_zlib_compression_level", "wait_end_of_query", "send_progress_in_http_headers",
        "http_headers_progress_interval_ms", "buffer_size", "client_protocol_version", "role", "stacktrace",
        "http_native_compression_disable_checksumming_on_decompress",
        "cancel_http_readonly_queries_on_client_close", "add_http_cors_header", "http_response_buffer_size",
        "http_wait_end_of_query", "default_session_timeout", "max_session_timeout", "query_kind",
        # applied by choosing a handle of that readonly level (see Engine.lease), never by SET
        "readonly",
    }
)  # fmt: skip


# Where chdb's defaults differ from a ClickHouse server's in ways clients notice. chdb defaults to
# async_insert=1, which makes every insert wait for the async queue's flush (~30 ms) and bypasses the
# MergeTree insert deduplication that exactly-once sinks rely on (async_insert_deduplicate=0).
BASELINE_SETTINGS = {"async_insert": "0"}


def engine_settings(params: dict[str, str], known: frozenset[str]) -> dict[str, str]:
    """The engine settings a request asks for: the server baseline overridden by URL parameters that
    are real settings. Unknown names are dropped rather than failing the query."""
    settings = dict(BASELINE_SETTINGS)
    for k, v in params.items():
        if k in known and k not in HTTP_PARAMS and not k.startswith("param_"):
            settings[k] = v
    return settings


# --- handles --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Stats:
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    elapsed: float = 0.0

    def summary(self) -> str:
        return (
            f'{{"read_rows":"{self.read_rows}","read_bytes":"{self.read_bytes}",'
            f'"written_rows":"{self.written_rows}","written_bytes":"{self.written_bytes}",'
            f'"total_rows_to_read":"{self.read_rows}","result_rows":"{self.result_rows}",'
            f'"result_bytes":"{self.result_bytes}","elapsed_ns":"{int(self.elapsed * 1e9)}"}}'
        )


def _result_stats(result: Any, stats: Stats | None = None) -> Stats:
    stats = stats or Stats()
    try:
        stats.read_rows += result.storage_rows_read()
        stats.read_bytes += result.storage_bytes_read()
        stats.result_rows += result.rows_read()
        stats.result_bytes += result.bytes_read()
        stats.written_rows += result.rows_written()
        stats.written_bytes += result.bytes_written()
        stats.elapsed += result.elapsed()
    except Exception:  # statistics are a courtesy, never a reason to fail a query
        pass
    return stats


@dataclass(eq=False)
class Handle:
    """One chdb connection and what this server has done to its session state.

    All methods block and are meant to run on the engine's worker threads, one request at a time.
    """

    engine: Engine
    conn: Any
    base_database: str = "default"  # what USE restores when a request names no database
    database: str | None = "default"  # None: unknown, the next request issues USE
    settings: dict[str, str] = field(default_factory=dict)
    broken: bool = False  # close instead of reusing: its session state is no longer known
    readonly: int = 0  # the handle's `readonly` level, fixed when it is made

    def prepare(self, database: str | None, settings: dict[str, str]) -> None:
        want = database or self.base_database
        if self.database != want:
            self.database = None
            self._run(f"USE {quote_identifier(want)}")
            self.database = want
        changes = [f"{k} = DEFAULT" for k in self.settings if k not in settings]
        changes += [f"{k} = {quote_string(v)}" for k, v in settings.items() if self.settings.get(k) != v]
        if changes:
            try:
                self._run("SET " + ", ".join(changes))
            except QueryError:
                self.broken = True  # some of the SET may have applied
                raise
            self.settings = dict(settings)

    def forget_settings_if_readonly(self) -> None:
        """A readonly=1 handle cannot `SET x = DEFAULT` a request's settings afterwards (only unchanged
        values may be set), so one that took settings beyond the baseline is closed after this request."""
        if self.readonly == 1 and self.settings != BASELINE_SETTINGS:
            self.broken = True

    def _run(self, sql: str | bytes, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            result = self.conn.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise self.engine.error(exc) from None
        if result is not None and hasattr(result, "has_error") and result.has_error():
            raise self.engine.error(RuntimeError(result.error_message()))
        return result

    def after_statement(self, keyword: bytes, second: bytes, session: bool) -> None:
        """Keep track of session state a statement changed behind this server's back."""
        if keyword == b"USE":
            if session:
                with contextlib.suppress(QueryError):
                    current = bytes(self._run("SELECT currentDatabase()").bytes()).decode().strip()
                    self.base_database = self.database = current
                    return
            self.database = None
        elif keyword == b"SET" or (keyword == b"CREATE" and second == b"TEMPORARY"):
            if session:
                self.settings = {}  # the user's SET wins; re-apply URL settings from scratch next time
            else:
                self.broken = True  # a pooled handle must not carry one request's state into another

    # -- materialized queries ---------------------------------------------------------------------

    def query(
        self,
        database: str | None,
        settings: dict[str, str],
        sql: bytes,
        fmt: str,
        params: dict[str, str],
        out: ResponseBody,
    ) -> tuple[bytes, Stats]:
        self.prepare(database, settings)
        self.forget_settings_if_readonly()
        result = self._run(sql, fmt, params)
        body = bytes(result.bytes()) if result is not None else b""
        stats = _result_stats(result) if result is not None else Stats()
        if body:
            body = self._output(out, body) + out.finish()
        return body, stats

    def _output(self, out: ResponseBody, data: bytes) -> bytes:
        try:
            return out.feed(data)
        except Exception as exc:
            raise self.engine.fail(48, f"Cannot write the result for this client: {exc}") from None

    # -- streamed queries -------------------------------------------------------------------------

    def open_stream(
        self,
        database: str | None,
        settings: dict[str, str],
        sql: bytes,
        fmt: str,
        params: dict[str, str],
        out: ResponseBody,
    ) -> tuple[Any, bytes, bool, Stats]:
        """Start a streaming query and fetch its first block, so that errors the query raises before
        producing data (almost all of them) still become a proper HTTP error status."""
        self.prepare(database, settings)
        self.forget_settings_if_readonly()
        try:
            stream = self.conn.send_query(sql, fmt, params=params)
        except Exception as exc:
            raise self.engine.error(exc) from None
        stats = Stats()
        try:
            data, done = self.next_block(stream, out, stats)
        except BaseException:
            self.close_stream(stream)
            raise
        return stream, data, done, stats

    def next_block(self, stream: Any, out: ResponseBody, stats: Stats | None = None) -> tuple[bytes, bool]:
        """The next piece of the body (possibly empty) and whether the stream is finished."""
        try:
            chunk = stream.fetch()
        except Exception as exc:
            raise self.engine.error(exc) from None
        if chunk is None:
            return out.finish(), True
        data = bytes(chunk.bytes())
        if stats is not None:
            _result_stats(chunk, stats)
        try:
            return self._output(out, data), False
        except QueryError:
            # The engine is still producing; a handle with an open stream answers nothing else
            self.close_stream(stream)
            raise

    def close_stream(self, stream: Any) -> None:
        try:
            stream.close()
        except Exception:
            log.debug("cancelling a result stream failed; dropping its handle", exc_info=True)
            self.broken = True

    # -- inserts ----------------------------------------------------------------------------------

    def insert_body(
        self,
        database: str | None,
        settings: dict[str, str],
        head: InsertHead,
        spool: InsertSpool | None,
        decoder: BodyDecoder,
        decoded: bytes = b"",
        raw: Sequence[bytes] = (),
        compression: str = "none",
    ) -> Stats:
        """Run the INSERT `head` on its body, then forget the body: the `spool` it was written to as it
        arrived, or (None) one made here of a body that came whole (one thread hop for a small insert).
        `compression` is the engine's method for the spooled bytes ("none" when `decoder` decoded them)."""
        spool = spool or self.engine.open_spool(decoder, decoded, raw)
        try:
            spool.finish()
            return self.insert_file(database, settings, head, spool.path, compression)
        finally:
            spool.discard()

    def insert_file(
        self, database: str | None, settings: dict[str, str], head: InsertHead, path: str, compression: str = "none"
    ) -> Stats:
        """Run the INSERT `head` with its data read from the spooled file at `path`, compressed with the
        engine's method `compression`."""
        self.prepare(database, settings)
        self.forget_settings_if_readonly()
        # One parsing thread unless asked otherwise, like chdb's streaming insert: less CPU per row. Not on
        # a readonly=1 handle, which refuses the setting before it refuses the write.
        defaults = {"input_format_parallel_parsing": "0"}
        if "input_format_parallel_parsing" in settings or self.readonly == 1:
            defaults = {}
        try:
            result = self._run(head.infile_sql(path, defaults, compression))
        except QueryError as err:
            # The file is this server's business; the client sent a request body
            err.message = err.message.replace(path, "request body")
            raise
        return _result_stats(result)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class InsertSpool:
    """A request body on its way to `INSERT ... FROM INFILE`: decoded and written to a file as it arrives,
    so a large insert costs no memory, and nothing reaches the engine until the body is complete.

    Methods block (file I/O); call them on the engine's threads.
    """

    def __init__(self, engine: Engine, decoder: BodyDecoder):
        self._engine = engine
        self._decoder = decoder
        # No dot in the name: ClickHouse guesses a compression from a file's extension
        fd, self.path = tempfile.mkstemp(prefix="body-", dir=engine.spool_dir)
        self._file = os.fdopen(fd, "wb")
        self.discarded = False

    def write(self, data: bytes) -> None:
        """Append bytes that are already decoded."""
        self._file.write(data)

    def feed(self, raw: Sequence[bytes]) -> None:
        """Append pieces of body as they came over the wire (Content-Encoding or `decompress=1` still applied)."""
        if self._decoder.identity:
            self._file.writelines(raw)
            return
        for piece in raw:
            self._file.write(self._decode(self._decoder.feed, piece))

    def finish(self) -> None:
        """The body is complete: flush what the decoder still holds and close the file."""
        self._file.write(self._decode(self._decoder.finish))
        self._file.close()

    def _decode(self, fn: Callable[..., bytes], *args: bytes) -> bytes:
        try:
            return fn(*args)
        except Exception as exc:
            raise self._engine.codec_error(exc) from None

    def discard(self) -> None:
        self.discarded = True
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass(eq=False)
class _Session:
    handle: Handle
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    expires: float = 0.0


class EngineLockedError(RuntimeError):
    """Another process has the data directory open."""


# --- the engine -----------------------------------------------------------------------------------


class Engine:
    """The process's chdb engine, its handle pool and sessions, and the threads that call into it."""

    def __init__(self, data_dir: Path, *, max_concurrency: int = 64, max_idle: int = 16):
        import chdb  # imported here so that `TZ` can be fixed before the engine reads it

        self._chdb = chdb
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir = self.data_dir / "http_inserts"  # request bodies of inserts in progress
        try:
            first = chdb.connect(str(self.data_dir))
        except Exception as exc:
            if _dir_locked(self.data_dir):
                raise EngineLockedError(
                    f"ClickHouse data directory {self.data_dir} is in use by another process"
                ) from None
            raise RuntimeError(f"cannot open ClickHouse data directory {self.data_dir}: {exc}") from None
        self.version = "unknown"
        self.code_names: dict[int, str] = {}
        boot = Handle(self, first)
        row = bytes(boot._run("SELECT version(), timezone()").bytes()).decode().strip().split("\t")
        self.version, self.timezone = row[0], row[1] if len(row) > 1 else "UTC"
        names = bytes(boot._run("SELECT name FROM system.settings").bytes()).decode().split("\n")
        self.known_settings = frozenset(n for n in names if n)
        codes = boot._run("SELECT number, errorCodeToName(number) AS n FROM numbers(2000) WHERE n != ''").bytes()
        for line in bytes(codes).decode().splitlines():
            code, _, name = line.partition("\t")
            self.code_names[int(code)] = name
        boot.prepare(None, BASELINE_SETTINGS)
        # Only this process has the directory: spooled bodies left by a crash are garbage
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir()
        self._free: dict[int, list[Handle]] = {0: [boot], 1: [], 2: []}  # idle handles by readonly level
        self._max_idle = max_idle
        self._slots = asyncio.Semaphore(max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency + 2, thread_name_prefix="chdb")
        self._sessions: dict[tuple[str, int, str], _Session] = {}  # by (user, readonly, session id)
        self._closed = False

    # -- errors -----------------------------------------------------------------------------------

    def error(self, exc: BaseException) -> QueryError:
        return error_from_chdb(exc, self.version, self.code_names)

    def fail(self, code: int, text: str) -> QueryError:
        return QueryError.make(code, self.code_names.get(code, "UNKNOWN_EXCEPTION"), text, self.version)

    def codec_error(self, exc: BaseException) -> QueryError:
        code = getattr(exc, "code", 271)  # CANNOT_DECOMPRESS unless the codec said otherwise
        return self.fail(code if isinstance(code, int) else 271, f"Cannot decompress the request body: {exc}")

    # -- threads ----------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking engine call on a worker thread, never on the event loop.

        If the awaiting task is cancelled, wait for the thread to finish anyway: its handle must not be
        reused or closed while chdb is still working on it.
        """
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await fut
            raise

    # -- leasing handles --------------------------------------------------------------------------

    def open_spool(self, decoder: BodyDecoder, decoded: bytes, raw: Sequence[bytes] = ()) -> InsertSpool:
        """A new spool file holding `decoded` (the data that came with the query text) and then `raw`."""
        spool = InsertSpool(self, decoder)
        try:
            spool.write(decoded)
            spool.feed(raw)
        except BaseException:
            spool.discard()
            raise
        return spool

    def _new_handle(self, readonly: int = 0) -> Handle:
        handle = Handle(self, self._chdb.connect(str(self.data_dir)))
        handle.prepare(None, BASELINE_SETTINGS)  # before readonly, which would refuse it
        if readonly:
            handle._run(f"SET readonly = {int(readonly)}")
            handle.readonly = readonly
        return handle

    @contextlib.asynccontextmanager
    async def lease(
        self,
        session_id: str | None = None,
        session_timeout: float = 60.0,
        session_check: bool = False,
        *,
        readonly: int = 0,
        user: str = "",
    ) -> AsyncIterator[tuple[Handle, bool]]:
        """A handle for one request at a `readonly` level (0, 1, 2): the session's own, or one from the
        pool. Yields (handle, is_session).

        A session belongs to the user who opened it and to one readonly level: the same session id from
        another user, or at another level, is another session.
        """
        if self._closed:
            raise self.fail(1002, "Server is shutting down")
        if readonly not in self._free:
            raise self.fail(164, f"Cannot set readonly = {readonly}: it must be 0, 1 or 2")  # READONLY
        if session_id:
            key = (user, readonly, session_id)
            async with self._session(key, session_timeout, session_check) as handle:
                yield handle, True
            return
        free = self._free[readonly]
        async with self._slots:
            handle = free.pop() if free else await self.call(self._new_handle, readonly)
            try:
                yield handle, False
            finally:
                if handle.broken or self._closed or len(free) >= self._max_idle:
                    await self.call(handle.close)
                else:
                    free.append(handle)

    @contextlib.asynccontextmanager
    async def _session(self, key: tuple[str, int, str], timeout: float, check: bool) -> AsyncIterator[Handle]:
        session = self._sessions.get(key)
        if session is None:
            if check:
                raise self.fail(372, f"Session {key[2]} not found")  # SESSION_NOT_FOUND
            session = _Session(handle=await self.call(self._new_handle, key[1]))
            session = self._sessions.setdefault(key, session)
        session.users += 1
        try:
            async with session.lock, self._slots:
                if session.handle.broken:
                    old, session.handle = session.handle, await self.call(self._new_handle, key[1])
                    await self.call(old.close)
                yield session.handle
        finally:
            session.users -= 1
            session.expires = time.monotonic() + timeout

    async def expire_sessions(self, every: float = 5.0) -> None:
        """Close sessions idle past their timeout, as ClickHouse does; runs until cancelled."""
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for sid, session in list(self._sessions.items()):
                if session.users == 0 and session.expires < now:
                    del self._sessions[sid]
                    await self.call(session.handle.close)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        handles = [*(h for free in self._free.values() for h in free), *(s.handle for s in self._sessions.values())]
        for free in self._free.values():
            free.clear()
        self._sessions.clear()
        for handle in handles:
            await self.call(handle.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.spool_dir, ignore_errors=True)


def _dir_locked(data_dir: Path) -> bool:
    """Whether another process holds ClickHouse's lock on `<data_dir>/status`."""
    status = data_dir / "status"
    if not status.exists():
        return False
    try:
        with open(status, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return False
    return False
