"""The chdb engine behind the embedded ClickHouse HTTP server: connection handles, sessions, errors.

chdb hosts one ClickHouse engine per process (one data directory, locked against other processes) and
hands out any number of connection handles to it. What was found by experiment with chdb-core 26.9:

* A handle runs one statement at a time: calls from two threads on one handle serialize, and a query on
  a handle with an open result stream or streaming insert fails. Different handles run in parallel (the
  GIL is released), so concurrency comes from a pool of handles, each leased to one request at a time.
* `USE` and `SET` are per handle (a ClickHouse session each). Per-request settings are applied with SET
  on the leased handle, remembering what each handle has so that the common case (a client sending the
  same settings every time) costs nothing, and unwanted ones are put back with `SET x = DEFAULT`.
* `insert_deduplication_token` set that way applies to the streaming insert API (`send_insert`), so
  exactly-once inserts into MergeTree tables with `non_replicated_deduplication_window` work.

ClickHouse HTTP sessions (`session_id`) get a dedicated handle that lives until `session_timeout`
expires, so SET, USE and temporary tables persist within a session as they do on a real server.
Requests of one session are serialized instead of failing with SESSION_IS_LOCKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tracehouse.infra.clickhouse_codecs import BodyDecoder, ResponseBody
from tracehouse.infra.clickhouse_sql import quote_identifier, quote_string

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
        # `readonly` would lock the pooled handle against the SET that undoes it; the server is local anyway
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

    # -- streamed inserts -------------------------------------------------------------------------

    def begin_insert(
        self,
        database: str | None,
        settings: dict[str, str],
        statement: str,
        fmt: str,
        decoder: BodyDecoder,
        raw: bytes,
        decoded: bytes,
        last: bool,
    ) -> tuple[Any, Stats | None]:
        """Open an insert and feed it the first bytes; with `last`, also commit it (one thread hop for
        the common small insert)."""
        self.prepare(database, settings)
        try:
            inserter = self.conn.send_insert(statement, fmt)
        except Exception as exc:
            raise self.engine.error(exc) from None
        try:
            if decoded:
                self._append(inserter, decoded)
            self.feed(inserter, decoder, raw)
            if last:
                return None, self.finish_insert(inserter, decoder)
        except BaseException:
            self.cancel_insert(inserter)
            raise
        return inserter, None

    def feed(self, inserter: Any, decoder: BodyDecoder, raw: bytes) -> None:
        if not raw:
            return
        try:
            data = decoder.feed(raw)
        except Exception as exc:
            raise self.engine.codec_error(exc) from None
        if data:
            self._append(inserter, data)

    def _append(self, inserter: Any, data: bytes) -> None:
        # chdb parses on its own threads: bad data may fail here or only at finish()
        try:
            inserter.append(data)
        except Exception as exc:
            raise self.engine.error(exc) from None

    def finish_insert(self, inserter: Any, decoder: BodyDecoder) -> Stats:
        try:
            tail = decoder.finish()
        except Exception as exc:
            raise self.engine.codec_error(exc) from None
        try:
            if tail:
                inserter.append(tail)
            result = inserter.finish()
        except Exception as exc:
            raise self.engine.error(exc) from None
        return Stats(
            written_rows=result.rows_written, written_bytes=result.bytes_written, elapsed=result.elapsed
        )

    def cancel_insert(self, inserter: Any) -> None:
        try:
            inserter.cancel()
        except Exception:
            log.debug("cancelling an insert failed; dropping its handle", exc_info=True)
            self.broken = True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


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
        codes = boot._run(
            "SELECT number, errorCodeToName(number) AS n FROM numbers(2000) WHERE n != ''"
        ).bytes()
        for line in bytes(codes).decode().splitlines():
            code, _, name = line.partition("\t")
            self.code_names[int(code)] = name
        boot.prepare(None, BASELINE_SETTINGS)
        self._free: list[Handle] = [boot]
        self._max_idle = max_idle
        self._slots = asyncio.Semaphore(max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency + 2, thread_name_prefix="chdb")
        self._sessions: dict[str, _Session] = {}
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

    def _new_handle(self) -> Handle:
        handle = Handle(self, self._chdb.connect(str(self.data_dir)))
        handle.prepare(None, BASELINE_SETTINGS)
        return handle

    @contextlib.asynccontextmanager
    async def lease(
        self, session_id: str | None = None, session_timeout: float = 60.0, session_check: bool = False
    ) -> AsyncIterator[tuple[Handle, bool]]:
        """A handle for one request: the session's own, or one from the pool. Yields (handle, is_session)."""
        if self._closed:
            raise self.fail(1002, "Server is shutting down")
        if session_id:
            async with self._session(session_id, session_timeout, session_check) as handle:
                yield handle, True
            return
        async with self._slots:
            handle = self._free.pop() if self._free else await self.call(self._new_handle)
            try:
                yield handle, False
            finally:
                if handle.broken or self._closed or len(self._free) >= self._max_idle:
                    await self.call(handle.close)
                else:
                    self._free.append(handle)

    @contextlib.asynccontextmanager
    async def _session(self, session_id: str, timeout: float, check: bool) -> AsyncIterator[Handle]:
        session = self._sessions.get(session_id)
        if session is None:
            if check:
                raise self.fail(372, f"Session {session_id} not found")  # SESSION_NOT_FOUND
            session = _Session(handle=await self.call(self._new_handle))
            session = self._sessions.setdefault(session_id, session)
        session.users += 1
        try:
            async with session.lock, self._slots:
                if session.handle.broken:
                    old, session.handle = session.handle, await self.call(self._new_handle)
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
        handles = [*self._free, *(s.handle for s in self._sessions.values())]
        self._free.clear()
        self._sessions.clear()
        for handle in handles:
            await self.call(handle.close)
        self._executor.shutdown(wait=False, cancel_futures=True)


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
