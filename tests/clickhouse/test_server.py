"""The embedded ClickHouse server against its real clients: clickhouse-connect (sync and async) and raw HTTP.

Real engine, no mocks: one server subprocess for the module, plus short-lived ones for restart and
lock tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import clickhouse_connect
import lz4.block
import lz4.frame
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse, clickhouse_answers, ensure_clickhouse
from tracehouse.infra.clickhouse.native import city_hash128
from tracehouse.infra.clickhouse.sql import (
    NEED_MORE,
    NOT_DATA_INSERT,
    InsertHead,
    output_format,
    split_insert,
)
from tracehouse.infra.ports import free_port

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

TYPED_TABLE = """
CREATE TABLE IF NOT EXISTS {name}
(
    id UInt64,
    ts DateTime64(9),
    attrs Map(String, String),
    scores Array(Tuple(String, Float64)),
    cost Nullable(Float64),
    model LowCardinality(String)
)
ENGINE = MergeTree ORDER BY id
"""
TYPED_COLUMNS = ["id", "ts", "attrs", "scores", "cost", "model"]
TYPED_ROWS = [
    [
        1,
        dt.datetime(2024, 5, 1, 12, 30, 45, 123456),
        {"k": "v", "env": "dev"},
        [("a", 1.5), ("b", -2.0)],
        None,
        "gpt",
    ],
    [2, dt.datetime(2024, 5, 1, 12, 30, 46), {}, [], 0.25, "claude"],
    [3, dt.datetime(1999, 12, 31, 23, 59, 59, 999999), {"ünï": "cødé"}, [("x", 0.0)], 1e-9, ""],
]


DATABASE = "t"  # the database the shared `client` fixture (conftest.py) creates


def http(
    server: EmbeddedClickHouse,
    params: dict[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> tuple[int, dict[str, str], bytes]:
    """A raw request, as curl would send it: (status, headers, body)."""
    url = server.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with _opener.open(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# --- raw HTTP -------------------------------------------------------------------------------------


def test_ping_and_root(server: EmbeddedClickHouse) -> None:
    assert http(server, path="/ping")[2] == b"Ok.\n"
    assert http(server)[2] == b"Ok.\n"
    assert clickhouse_answers(server.url)
    assert not clickhouse_answers(f"http://127.0.0.1:{free_port()}")
    assert ensure_clickhouse(server.url, Path("/nonexistent")) is None


def test_get_post_and_headers(server: EmbeddedClickHouse) -> None:
    status, headers, body = http(server, {"query": "SELECT 1, 'a'", "query_id": "q-123"})
    assert (status, body) == (200, b"1\ta\n")
    assert headers["X-ClickHouse-Query-Id"] == "q-123"
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"] == "UTC"
    assert "X-ClickHouse-Server-Display-Name" in headers
    assert "read_rows" in json.loads(headers["X-ClickHouse-Summary"])

    status, headers, body = http(server, data=b"SELECT number FROM numbers(3) FORMAT JSONEachRow")
    assert [json.loads(line) for line in body.splitlines()] == [{"number": n} for n in range(3)]
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"

    # URL query and body concatenate; default_format applies when the query names none
    status, _, body = http(server, {"query": "SELECT", "default_format": "CSV"}, data=b"'x', 2")
    assert (status, body) == (200, b'"x",2\n')

    status, _, body = http(server, data=gzip.compress(b"SELECT 42"), headers={"Content-Encoding": "gzip"})
    assert (status, body) == (200, b"42\n")

    status, headers, body = http(server, {"query": "SELECT number FROM numbers(2) FORMAT JSON"})
    assert json.loads(body)["data"] == [{"number": 0}, {"number": 1}]
    assert headers["Content-Type"].startswith("application/json")


def test_inline_and_body_inserts(server: EmbeddedClickHouse, client: Client) -> None:
    client.command("CREATE TABLE t.inline (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    # the data may sit in the URL's query; a write must still be a POST (GET is readonly)
    inline = {"query": 'INSERT INTO t.inline FORMAT JSONEachRow {"id": 1, "s": "get"}'}
    assert http(server, inline, data=b"")[0] == 200
    assert http(server, data=b"INSERT INTO t.inline VALUES (2, 'values')")[0] == 200
    assert http(server, data=b'INSERT INTO t.inline FORMAT CSV\n3,csv\n4,"csv, quoted"\n')[0] == 200
    assert http(server, {"query": "INSERT INTO t.inline FORMAT TSV", "database": "default"}, data=b"5\ttsv\n")[0] == 200
    payload = gzip.compress(b'{"id":6,"s":"gzip"}\n{"id":7,"s":"gzip"}\n')
    status, headers, _ = http(
        server,
        {"query": "INSERT INTO inline FORMAT JSONEachRow", "database": "t"},
        data=payload,
        headers={"Content-Encoding": "gzip"},
    )
    assert status == 200
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "2"
    frames = lz4.frame.compress(b"8,lz4\n") + lz4.frame.compress(b"9,lz4\n")  # one frame per block
    assert http(server, {"query": "INSERT INTO t.inline FORMAT CSV"}, frames, {"Content-Encoding": "lz4"})[0] == 200
    # ClickHouse's native block compression (decompress=1); the checksum is not verified
    raw = b"10,native\n"
    packed = lz4.block.compress(raw, store_size=False)
    block = bytes(16) + bytes([0x82]) + struct.pack("<II", 9 + len(packed), len(raw)) + packed
    assert http(server, {"query": "INSERT INTO t.inline FORMAT CSV", "decompress": "1"}, block)[0] == 200
    rows = client.query("SELECT id, s FROM t.inline ORDER BY id").result_rows
    assert [r[0] for r in rows] == list(range(1, 11))
    assert rows[3] == (4, "csv, quoted")


def test_large_streamed_inserts(server: EmbeddedClickHouse, client: Client) -> None:
    """Bodies larger than one engine hand-off, plain, gzip and chunked, arrive whole."""
    client.command("CREATE TABLE t.big (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    csv = b"".join(b"%d,row number %d with some padding text\n" % (i, i) for i in range(100_000))
    assert len(csv) > 3 * (1 << 20)
    assert http(server, {"query": "INSERT INTO t.big FORMAT CSV"}, data=csv)[0] == 200
    gz = gzip.compress(csv.replace(b"row", b"gz"), compresslevel=1)
    assert http(server, {"query": "INSERT INTO t.big FORMAT CSV"}, gz, {"Content-Encoding": "gzip"})[0] == 200
    chunks = [b"INSERT INTO t.big FORMAT CSV\n"] + [csv[i : i + 65536] for i in range(0, len(csv), 65536)]
    req = urllib.request.Request(server.url + "/", data=iter(chunks), method="POST")  # chunked encoding
    with _opener.open(req, timeout=30) as resp:
        assert resp.status == 200
    counts = client.query("SELECT count(), uniqExact(id), countIf(s LIKE 'gz%') FROM t.big").result_rows
    assert counts == [(300_000, 100_000, 100_000)]


def test_response_compression(server: EmbeddedClickHouse) -> None:
    query = {"query": "SELECT number FROM numbers(50000)"}
    expected = b"".join(b"%d\n" % n for n in range(50000))
    _, headers, body = http(server, {**query, "enable_http_compression": "1"}, headers={"Accept-Encoding": "lz4"})
    assert headers["Content-Encoding"] == "lz4"
    assert lz4.frame.decompress(body) == expected
    _, headers, body = http(server, {**query, "enable_http_compression": "1"}, headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == expected
    _, headers, body = http(server, query, headers={"Accept-Encoding": "gzip"})  # not asked with the setting
    assert "Content-Encoding" not in headers and body == expected


def test_errors_over_http(server: EmbeddedClickHouse) -> None:
    status, headers, body = http(server, {"query": "SELECT * FROM no_such_table"})
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    text = body.decode()
    assert text.startswith("Code: 60. DB::Exception:") and "(UNKNOWN_TABLE)" in text and "(version " in text

    status, headers, _ = http(server, {"query": "SELEC 1"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    status, headers, _ = http(server, {"query": "SELECT 1", "database": "no_such_db"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "81")
    status, headers, _ = http(server, {"query": "SELECT throwIf(1)"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "395")
    status, _, body = http(server, {"query": "INSERT INTO nowhere FORMAT CSV"}, data=b"1\n")
    assert status == 404 and b"UNKNOWN_TABLE" in body
    # credentials of any kind are accepted
    creds = {"user": "default", "password": "x"}
    headers = {"X-ClickHouse-User": "u", "X-ClickHouse-Key": "k", "Authorization": "Basic !!notbase64"}
    assert http(server, {"query": "SELECT 1", **creds}, headers=headers)[2] == b"1\n"


def test_settings_and_sessions(server: EmbeddedClickHouse) -> None:
    def get(params: dict[str, str], data: bytes | None = None) -> bytes:
        status, _, body = http(server, params, data)
        assert status == 200, body
        return body.strip()

    probe = "SELECT getSetting('max_block_size')"
    default = get({"query": probe})
    assert get({"query": probe, "max_block_size": "1234"}) == b"1234"
    assert get({"query": probe}) == default  # a request's settings do not leak into the next
    # unknown and HTTP-only parameters are not errors
    extra = {
        "no_such_setting": "1",
        "wait_end_of_query": "1",
        "send_progress_in_http_headers": "1",
    }
    assert get({"query": "SELECT 7", **extra}) == b"7"

    # SET without a session changes nothing afterwards; within a session it sticks
    get({"query": "SET max_block_size = 999"})
    assert all(get({"query": probe}) == default for _ in range(4))
    session = {"session_id": "s-1"}
    get({"query": "SET max_block_size = 999", **session})
    assert get({"query": probe, **session}) == b"999"
    get({"query": "CREATE TEMPORARY TABLE tmp (x UInt8)", **session}, b"")  # writes are POSTs
    get({"query": "INSERT INTO tmp VALUES (5)", **session}, b"")
    assert get({"query": "SELECT x FROM tmp", **session}, b"") == b"5"
    _, headers, _ = http(server, {"query": "SELECT 1", "session_id": "nope", "session_check": "1"})
    assert headers["X-ClickHouse-Exception-Code"] == "372"


# --- clickhouse-connect ---------------------------------------------------------------------------


def _assert_typed_rows(rows: list[tuple]) -> None:
    assert [list(r) for r in rows] == TYPED_ROWS


def test_sync_client_roundtrip(client: Client) -> None:
    client.command(TYPED_TABLE.format(name="t.typed"))
    summary = client.insert("t.typed", TYPED_ROWS, column_names=TYPED_COLUMNS)
    assert summary.written_rows == 3
    _assert_typed_rows(client.query(f"SELECT {', '.join(TYPED_COLUMNS)} FROM t.typed ORDER BY id").result_rows)

    line = {"id": 4, "ts": "2024-05-01 00:00:00.123456789", "attrs": {"a": "b"}, "scores": [["q", 2.5]]}
    client.raw_insert("t.typed", None, (json.dumps(line) + "\n").encode(), fmt="JSONEachRow")
    row = client.query("SELECT id, ts, attrs, scores, cost, model FROM t.typed WHERE id = 4").result_rows[0]
    assert row == (4, dt.datetime(2024, 5, 1, 0, 0, 0, 123456), {"a": "b"}, [("q", 2.5)], None, "")
    nanos = client.query("SELECT toUnixTimestamp64Nano(ts) % 1000000000 FROM t.typed WHERE id = 4").result_rows
    assert nanos == [(123456789,)]

    assert client.command("SELECT 1") == 1
    assert "typed" in client.command("SHOW TABLES FROM t")
    result = client.query("SELECT number, toString(number) AS s FROM numbers(300000)")
    assert len(result.result_rows) == 300000 and result.result_rows[-1] == (299999, "299999")


def test_query_parameters_and_settings(client: Client) -> None:
    value = "tab\there 'quote' \\ back\nnew"
    result = client.query(
        "SELECT {x:String}, {n:UInt32}, {a:Array(String)}", parameters={"x": value, "n": 7, "a": ["p", "q"]}
    )
    assert result.result_rows == [(value, 7, ["p", "q"])]
    big = "x" * 200_000  # too long for the URL: clickhouse-connect sends it as a multipart form field
    assert client.query("SELECT length({s:String})", parameters={"s": big}).result_rows == [(200_000,)]
    probe = "SELECT getSetting('max_block_size')"
    assert client.query(probe, settings={"max_block_size": 4321}).result_rows == [(4321,)]
    assert client.query(probe).result_rows != [(4321,)]
    assert client.query("SELECT getSetting('async_insert')").result_rows == [(False,)]


def test_client_errors(client: Client) -> None:
    with pytest.raises(DatabaseError) as err:
        client.query("SELECT * FROM t.no_such_table")
    assert err.value.code == 60 and "UNKNOWN_TABLE" in str(err.value)
    with pytest.raises(DatabaseError) as err:
        client.command("CREATE TABLE broken (")
    assert err.value.code == 62 and "Syntax error" in str(err.value)
    with pytest.raises(DatabaseError) as err:  # fails after the first blocks are already sent
        client.query("SELECT number, throwIf(number = 250000) FROM numbers(400000)", settings={"max_block_size": 1000})
    assert err.value.code == 395
    with pytest.raises(DatabaseError) as err:  # bad data: the code the sink uses to split batches
        client.raw_insert("t.typed", ["id"], b'{"id": "not a number"}\n', fmt="JSONEachRow")
    assert err.value.code in (6, 26, 27, 72, 117)
    assert client.command("SELECT 2") == 2  # the connection and the server are fine afterwards


def test_insert_compressions(server: EmbeddedClickHouse, client: Client) -> None:
    client.command("CREATE TABLE t.comp (id UInt64, codec String) ENGINE = MergeTree ORDER BY id")
    for i, codec in enumerate(("lz4", "zstd", "gzip", False)):
        c = clickhouse_connect.get_client(host=server.host, port=server.port, compress=codec)
        rows = [[i * 10000 + n, str(codec)] for n in range(10000)]
        c.insert("t.comp", rows, column_names=["id", "codec"])
        assert c.query(
            "SELECT count() FROM t.comp WHERE codec = {c:String}", parameters={"c": str(codec)}
        ).result_rows == [(10000,)]
        c.close()


def test_native_insert_whose_data_starts_with_a_newline(server: EmbeddedClickHouse, client: Client) -> None:
    """Ten columns: the Native block starts with byte 0x0A right after "FORMAT Native\\n"."""
    cols = [f"c{i}" for i in range(10)]
    client.command(f"CREATE TABLE t.ten ({', '.join(c + ' UInt8' for c in cols)}) ENGINE = MergeTree ORDER BY c0")
    for codec in (False, "lz4"):
        c = clickhouse_connect.get_client(host=server.host, port=server.port, compress=codec)
        c.insert("t.ten", [list(range(10))] * 3, column_names=cols)
        c.close()
    assert client.query("SELECT count(), sum(c9) FROM t.ten").result_rows == [(6, 54)]


@pytest.mark.parametrize(
    ("text", "complete", "expected"),
    [
        (b"INSERT INTO t FORMAT Native\n\n\x01", True, ("INSERT INTO t", "Native", b"\n\x01")),
        (b"insert into format format CSV\n1,2", True, ("insert into format", "CSV", b"1,2")),
        (
            b"/* c */ INSERT INTO db.`values` (a, b) VALUES (1, 'x')",
            True,
            ("/* c */ INSERT INTO db.`values` (a, b)", "Values", b" (1, 'x')"),
        ),
        (
            b"INSERT INTO t SETTINGS x = 'FORMAT' FORMAT TSV\r\n1",
            True,
            ("INSERT INTO t", "TSV", b"1"),
        ),
        (b"INSERT INTO t SELECT 1", True, NOT_DATA_INSERT),
        (b"SELECT 1 FORMAT CSV", True, NOT_DATA_INSERT),
        (b"INSER", False, NEED_MORE),
        (b"INSERT INTO t FORMAT JSONEach", False, NEED_MORE),
        (b"INSERT INTO t FORMAT CSV 'data", False, ("INSERT INTO t", "CSV", b"'data")),
        (b"INSERT INTO t SETTINGS x = 'unfinished", False, NEED_MORE),
    ],
)
def test_split_insert(text: bytes, complete: bool, expected: object) -> None:
    found = split_insert(text, complete)
    if isinstance(found, InsertHead):
        found = (found.statement, found.format, text[found.data_start :])
    assert found == expected


def test_insert_reads_its_data_from_a_file() -> None:
    """The SETTINGS clause moves after FROM INFILE, where ClickHouse wants it; the table may be `settings`."""
    head = split_insert(b"INSERT INTO t (a) SETTINGS x = 'FORMAT', y = 2 FORMAT TSV\n1", True)
    assert isinstance(head, InsertHead) and head.settings == "SETTINGS x = 'FORMAT', y = 2"
    assert head.infile_sql("/s/b'1", {"z": "0", "Y": "5"}) == (
        "INSERT INTO t (a) FROM INFILE '/s/b\\'1' COMPRESSION 'none' SETTINGS x = 'FORMAT', y = 2, z = '0' FORMAT TSV"
    )
    head = split_insert(b"INSERT INTO settings VALUES (1)", True)
    assert isinstance(head, InsertHead) and (head.statement, head.settings, head.format) == (
        "INSERT INTO settings",
        "",
        "Values",
    )


def test_output_format() -> None:
    assert output_format(b"SELECT 1 FORMAT JSON") == "JSON"
    assert output_format(b"select format('{}', 1) format TSV settings x = 1;") == "TSV"
    assert output_format(b"SELECT format FROM t") is None
    assert output_format(b"SELECT 'FORMAT JSON'") is None


def test_insert_deduplication_token(server: EmbeddedClickHouse, client: Client) -> None:
    client.command(
        "CREATE TABLE t.dedup (id UInt64) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )

    def insert(ids: list[int], token: str | None) -> None:
        settings = {"insert_deduplication_token": token} if token else {}
        client.insert("t.dedup", [[i] for i in ids], column_names=["id"], settings=settings)

    def count() -> int:
        return client.query("SELECT count() FROM t.dedup").result_rows[0][0]

    insert([1, 2], "batch-1")
    insert([1, 2], "batch-1")  # a retry of the same batch
    assert count() == 2
    insert([3], "batch-1")  # the token decides, not the data
    assert count() == 2
    insert([1, 2], "batch-2")
    assert count() == 4
    insert([7], None)  # the previous request's token must not stick to the connection
    assert count() == 5
    # the same over raw HTTP, as curl would send it
    for _ in range(2):
        params = {"query": "INSERT INTO t.dedup FORMAT CSV", "insert_deduplication_token": "raw-1"}
        assert http(server, params, data=b"100\n101\n")[0] == 200
    assert count() == 7


async def test_async_client_roundtrip_and_concurrency(server: EmbeddedClickHouse) -> None:
    ac = await clickhouse_connect.get_async_client(host=server.host, port=server.port, compress="lz4")
    try:
        await ac.command(TYPED_TABLE.format(name="t.typed_async"))
        await ac.insert("t.typed_async", TYPED_ROWS, column_names=TYPED_COLUMNS)
        result = await ac.query(f"SELECT {', '.join(TYPED_COLUMNS)} FROM t.typed_async ORDER BY id")
        _assert_typed_rows(result.result_rows)
        assert (await ac.query("SELECT {s:String}", parameters={"s": "ok"})).result_rows == [("ok",)]

        await ac.command("CREATE TABLE t.conc (w UInt32, i UInt32) ENGINE = MergeTree ORDER BY (w, i)")

        async def insert(w: int) -> None:
            await ac.insert("t.conc", [[w, i] for i in range(2000)], column_names=["w", "i"])

        async def total(n: int) -> int:
            return (await ac.query(f"SELECT sum(number) FROM numbers({n})")).result_rows[0][0]

        sizes = [1_000_000 + k for k in range(8)]
        results = await asyncio.gather(*(insert(w) for w in range(8)), *(total(n) for n in sizes))
        assert results[8:] == [n * (n - 1) // 2 for n in sizes]
        counts = await ac.query("SELECT count(), uniqExact(w) FROM t.conc")
        assert counts.result_rows == [(16000, 8)]

        # eight slow queries at once finish together: the server runs them in parallel
        start = time.monotonic()
        await asyncio.gather(*(ac.query("SELECT sleep(0.5)") for _ in range(8)))
        assert time.monotonic() - start < 2.5
    finally:
        await ac.close()


# --- process lifecycle ----------------------------------------------------------------------------


def test_kill_and_restart_keeps_data(tmp_path: Path) -> None:
    with EmbeddedClickHouse(tmp_path / "ch") as ch:
        c = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        c.command("CREATE TABLE kept (id UInt64) ENGINE = MergeTree ORDER BY id")
        c.insert("kept", [[i] for i in range(100)], column_names=["id"])
        first_pid = ch.pid
        ch.kill()
        assert not clickhouse_answers(ch.url)
        ch.start()
        assert ch.pid != first_pid
        c = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        assert c.query("SELECT count(), sum(id) FROM kept").result_rows == [(100, 4950)]
    assert not clickhouse_answers(ch.url)


def test_data_dir_and_port_are_exclusive(server: EmbeddedClickHouse, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="in use by another process"):
        EmbeddedClickHouse(server.data_dir, startup_timeout=30).start()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "tracehouse.infra.clickhouse.server", "--data-dir", str(tmp_path / "ch"),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


# --- clients that name a protocol revision (clickhouse-go, so Grafana) ----------------------------

BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"


def test_native_for_protocol_revisions(server: EmbeddedClickHouse, client: Client) -> None:
    query = {"query": "SELECT 1 AS check FORMAT Native"}
    assert http(server, query)[2] == b"\x01\x01\x05check\x05UInt8\x01"
    # clickhouse-connect's probe revision: BlockInfo only
    body = http(server, {**query, "client_protocol_version": "54405"})[2]
    assert body == BLOCK_INFO + b"\x01\x01\x05check\x05UInt8\x01"
    # clickhouse-go's: BlockInfo and a custom-serialization flag per column
    for params in ({}, {"wait_end_of_query": "1"}):  # streamed, and in one piece
        body = http(server, {**query, "client_protocol_version": "54460", **params})[2]
        assert body == BLOCK_INFO + b"\x01\x01\x05check\x05UInt8\x00\x01"
    assert client.protocol_version == 54405

    many_types = (
        "SELECT number AS n, toString(number) AS s, toLowCardinality(toString(number % 3)) AS lc, "
        "map('k', toString(number)) AS m, [('a', toFloat64(number))] AS arr, "
        "if(number % 2 = 0, NULL, number * 1.5) AS nul, [toLowCardinality(toString(number))] AS alc, "
        "toDecimal64(number, 4) AS d, toUUID('00000000-0000-0000-0000-000000000001') AS u, "
        "toFixedString('ab', 2) AS fs, now64(9) AS t, CAST('a', 'Enum8(\\'a\\' = 1)') AS e, "
        "toLowCardinality(toNullable(toString(number))) AS lcn, NULL AS nothing, "
        "CAST((1, 'x'), 'Tuple(a UInt8, b String)') AS tup "
        "FROM numbers(20000) SETTINGS max_block_size = 7000 FORMAT Native"
    )
    plain = http(server, {"query": many_types, "wait_end_of_query": "1"})[2]
    for params in ({}, {"wait_end_of_query": "1"}):
        status, _, upgraded = http(server, {"query": many_types, "client_protocol_version": "54460", **params})
        assert status == 200
        blocks = 3  # 20000 rows in blocks of 7000
        assert len(upgraded) == len(plain) + blocks * (len(BLOCK_INFO) + 15)
        assert upgraded.startswith(BLOCK_INFO)


def test_native_rewrite_of_unsupported_type_fails_cleanly(server: EmbeddedClickHouse) -> None:
    query = "SELECT sumState(number) FROM numbers(100) GROUP BY number % 3 FORMAT Native"
    status, headers, body = http(server, {"query": query, "client_protocol_version": "54460"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (501, "48")
    assert b"AggregateFunction" in body
    for _ in range(5):  # the handle that failed went back to the pool in a usable state
        assert http(server, {"query": "SELECT 3"})[2] == b"3\n"


def _native_blocks(body: bytes) -> bytes:
    """Undo compress=1 framing, checking every block's CityHash128 as clickhouse-go does."""
    out, pos = [], 0
    while pos < len(body):
        low, high = struct.unpack_from("<QQ", body, pos)
        method, compressed, size = struct.unpack_from("<BII", body, pos + 16)
        frame = body[pos + 16 : pos + 16 + compressed]
        assert city_hash128(frame) == (low, high)
        assert method == 0x82
        out.append(lz4.block.decompress(frame[9:], uncompressed_size=size))
        pos += 16 + compressed
    return b"".join(out)


def test_native_block_compression_of_responses(server: EmbeddedClickHouse) -> None:
    status, headers, body = http(server, {"query": "SELECT number FROM numbers(300000)", "compress": "1"})
    assert status == 200 and "Content-Encoding" not in headers
    assert _native_blocks(body) == b"".join(b"%d\n" % n for n in range(300000))


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [  # from github.com/go-faster/city _testdata/ch128.csv, the Go client's checksum implementation
        ("uM4", 0xF567F556F5E83547, 0xA5C90EFC9FBFD1F4),
        ("EqO2w", 0xA860DC368778E5CC, 0x4FD9BA7DE405E7D2),
        ("3Nv7DSqKym", 0xA15C18688F33289, 0xA992A0EB969152CC),
        ("y2JxfVmFTDCc5E8j6SyJ", 0x55DBDA31FD73DB4F, 0xE93B771A2F3821EA),
        (
            "FBEDVed3uJrNqDDtSumHy9uH8SBEjHIVIIpHzxPkOlTB7RLRZK5OV7Ooi6kbgI1jOrxrSHEhLvSmS43PnfjfYZRR4loLR1V10n8U",
            0xA4B5A2EADAD2E953,
            0x99737018CA2FA11D,
        ),
        (
            "FmTFrzqxR7zR0WmKGJPUIkkM7eg1Joc7PTnWfSBg7Si4zLcmUKAPOUW3vkkJoo7PtywMk511W7hdgBMbeImf2SweykZnz21CkTDTs"
            "JlwpXPvWeEZzK6OQfnAarPYaOAtydW36084iuQ",
            0x7AA500857557627F,
            0x66327FF2F2FAC621,
        ),
    ],
)
def test_city_hash128(text: str, low: int, high: int) -> None:
    assert city_hash128(text.encode()) == (low, high)
