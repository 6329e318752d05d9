"""The embedded ClickHouse server answers like a ClickHouse server where it matters for data and safety.

1. An insert the engine refuses is reported with ClickHouse's code and stores nothing: more partitions
   than `max_partitions_per_insert_block` (252), a CHECK constraint (469). chdb's streaming insert reports
   both as written; the server must not.
2. Web pages cannot drive it (foreign Origin, browser-only content types, DNS rebinding, GET writes),
   `readonly` is honoured, and with a users file only its users get in, read-only ones read-only.

Real server processes, real clients (clickhouse-connect, raw HTTP and raw sockets); no mocks.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from waiting import wait_until

from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Like `spans`: one partition per day
DAILY = (
    "CREATE TABLE {name} (ts DateTime64(9), id UInt64, s String) ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY id"
)
CHECKED = "CREATE TABLE {name} (id UInt64, v Int64, CONSTRAINT v_small CHECK v < 100) ENGINE = MergeTree ORDER BY id"


DATABASE = "g"  # the database the shared `client` fixture (conftest.py) creates


def http(
    url: str,
    params: dict[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A raw request, as curl (or a browser) would send it: (status, headers, body)."""
    full = url + "/" + ("?" + urllib.parse.urlencode(params) if params else "")
    req = urllib.request.Request(full, data=data, headers=headers or {}, method=method)
    try:
        with _opener.open(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def code_of(headers: dict[str, str]) -> str | None:
    return headers.get("X-ClickHouse-Exception-Code")


def daily_rows(days: int, start: dt.date = dt.date(2026, 1, 1)) -> bytes:
    """JSONCompactEachRow rows, one per day over `days` days."""
    return b"".join(
        json.dumps([f"{start + dt.timedelta(days=i)} 12:00:00.000000000", i, f"day {i}"]).encode() + b"\n"
        for i in range(days)
    )


def spool_files(server: EmbeddedClickHouse) -> list[Path]:
    return list((server.data_dir / "http_inserts").iterdir())


# --- 1. inserts the engine refuses ----------------------------------------------------------------


def test_too_many_partitions_answers_252_and_stores_nothing(server: EmbeddedClickHouse, client: Client) -> None:
    client.command(DAILY.format(name="g.daily"))
    rows = daily_rows(150)
    with pytest.raises(DatabaseError) as err:  # the sink's call
        client.raw_insert("g.daily", ["ts", "id", "s"], rows, fmt="JSONCompactEachRow")
    assert err.value.code == 252 and "Too many partitions for single INSERT block" in str(err.value)

    status, headers, body = http(server.url, {"query": "INSERT INTO g.daily FORMAT JSONCompactEachRow"}, rows)
    assert status == 500 and code_of(headers) == "252"
    assert body.startswith(b"Code: 252. DB::Exception: Too many partitions for single INSERT block")
    assert b"(TOO_MANY_PARTS)" in body
    assert client.command("SELECT count() FROM g.daily") == 0

    # 100 partitions is the limit, not an error, and the next batch is unaffected
    client.raw_insert("g.daily", ["ts", "id", "s"], daily_rows(100), fmt="JSONCompactEachRow")
    assert client.command("SELECT count() FROM g.daily") == 100
    assert spool_files(server) == []


def test_check_constraint_answers_469_and_stores_nothing(server: EmbeddedClickHouse, client: Client) -> None:
    client.command(CHECKED.format(name="g.checked"))
    with pytest.raises(DatabaseError) as err:
        client.insert("g.checked", [[1, 5], [2, 500]], column_names=["id", "v"])
    assert err.value.code == 469 and "VIOLATED_CONSTRAINT" in str(err.value)

    status, headers, body = http(server.url, data=b"INSERT INTO g.checked FORMAT CSV\n3,5\n4,500\n")
    assert status == 500 and code_of(headers) == "469"
    assert body.startswith(b"Code: 469. DB::Exception: Constraint `v_small`") and b"(VIOLATED_CONSTRAINT)" in body
    assert client.command("SELECT count() FROM g.checked") == 0

    client.insert("g.checked", [[5, 5], [6, 99]], column_names=["id", "v"])
    assert client.command("SELECT count() FROM g.checked") == 2


def test_large_insert_is_counted_right(server: EmbeddedClickHouse, client: Client) -> None:
    """The sink's shape: 25,000 JSONCompactEachRow rows in a chunked body; and the same gzipped, raw."""
    client.command(DAILY.format(name="g.large"))
    today = "2026-03-01 10:00:00.000000000"
    lines = [json.dumps([today, i, "x" * (i % 300)]).encode() + b"\n" for i in range(25_000)]
    summary = client.raw_insert("g.large", ["ts", "id", "s"], iter(lines), fmt="JSONCompactEachRow")
    assert summary.written_rows == 25_000
    body = gzip.compress(b"".join(lines).replace(b'", ', b'", 1', 1), compresslevel=1)
    status, headers, _ = http(
        server.url,
        {"query": "INSERT INTO g.large FORMAT JSONCompactEachRow"},
        body,
        {"Content-Encoding": "gzip"},
    )
    assert status == 200 and json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "25000"
    assert client.query("SELECT count(), uniqExact(id) FROM g.large").result_rows == [(50_000, 25_000)]
    assert spool_files(server) == []


def test_insert_data_is_never_run_as_sql(server: EmbeddedClickHouse, client: Client) -> None:
    """chdb's query() splits text at a blank line; an INSERT's data must not become statements."""
    client.command("CREATE TABLE g.victim (id UInt64) ENGINE = MergeTree ORDER BY id")
    client.command("CREATE TABLE g.rows (id UInt64) ENGINE = MergeTree ORDER BY id")
    status, _, _ = http(server.url, data=b'INSERT INTO g.rows FORMAT JSONEachRow\n{"id": 1}\n\n{"id": 2}\n')
    assert status == 200
    status, headers, _ = http(server.url, data=b"INSERT INTO g.rows FORMAT CSV\n3\n\nDROP TABLE g.victim\n")
    assert status != 200 and code_of(headers) is not None
    assert client.command("EXISTS TABLE g.victim") == 1
    assert client.query("SELECT id FROM g.rows ORDER BY id").result_rows == [(1,), (2,)]


def test_a_body_cut_short_inserts_nothing(server: EmbeddedClickHouse, client: Client) -> None:
    client.command("CREATE TABLE g.cut (id UInt64) ENGINE = MergeTree ORDER BY id")
    part = b"".join(b"%d\n" % i for i in range(50_000))
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(
            b"POST /?query=INSERT+INTO+g.cut+FORMAT+CSV HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(part) * 2)
        )
        sock.sendall(part)  # half the promised body, then the client goes away
    assert wait_until(lambda: spool_files(server) == [], timeout=30)
    assert client.command("SELECT count() FROM g.cut") == 0


# --- 2. browsers, readonly ------------------------------------------------------------------------


def test_a_web_page_cannot_drop_the_database(server: EmbeddedClickHouse, client: Client) -> None:
    client.command("CREATE DATABASE IF NOT EXISTS precious")
    evil = {"Origin": "http://evil.example"}
    # the classic: a form or fetch(no-cors) POST of text/plain, which the browser delivers without asking
    status, headers, body = http(
        server.url, data=b"DROP DATABASE precious", headers={**evil, "Content-Type": "text/plain"}
    )
    assert (status, code_of(headers)) == (403, "497") and b"Origin" in body
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, headers, _ = http(
            server.url, data=b"DROP DATABASE precious", headers={**evil, "Content-Type": content_type}
        )
        assert (status, code_of(headers)) == (403, "497")
    # any foreign Origin, whatever the method or content type, and its preflight
    assert http(server.url, data=b"DROP DATABASE precious", headers=evil)[0] == 403
    assert http(server.url, {"query": "SELECT 1"}, headers=evil)[0] == 403
    assert http(server.url, headers={**evil, "Access-Control-Request-Method": "POST"}, method="OPTIONS")[0] == 403
    assert http(server.url, data=b"DROP DATABASE precious", headers={"Origin": "null"})[0] == 403
    # an <img src="http://127.0.0.1:8123/?query=DROP..."> sends a GET with no Origin: GET is readonly
    status, headers, body = http(server.url, {"query": "DROP DATABASE precious"})
    assert code_of(headers) == "164" and b"readonly" in body
    # DNS rebinding: the page's own name now resolves to 127.0.0.1
    status, headers, _ = http(server.url, {"query": "SELECT 1"}, headers={"Host": f"evil.example:{server.port}"})
    assert (status, code_of(headers)) == (403, "497")
    assert client.command("EXISTS DATABASE precious") == 1


def test_clients_without_origin_and_own_origin_still_work(server: EmbeddedClickHouse, client: Client) -> None:
    assert client.command("SELECT 3") == 3  # clickhouse-connect sends no Origin
    own = {"Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/octet-stream"}
    assert http(server.url, data=b"SELECT 4", headers=own)[2] == b"4\n"
    assert http(server.url, data=b"SELECT 5", headers={"Content-Type": "text/plain"})[2] == b"5\n"  # curl -d
    assert http(server.url, {"query": "SELECT 6"}, headers={"Host": f"localhost:{server.port}"})[2] == b"6\n"
    # own origin, but a browser-only content type: only a page would send that
    assert http(server.url, data=b"SELECT 7", headers={**own, "Content-Type": "text/plain"})[0] == 403


def test_one_statement_per_request(server: EmbeddedClickHouse, client: Client) -> None:
    """As over a ClickHouse server's HTTP interface; a second statement could otherwise leave a pooled
    connection readonly, in another database or with another request's settings."""
    for sql in (b"SELECT 1; SET readonly = 1", b"SELECT 1; USE system", b"SELECT 1;\n-- c\nDROP DATABASE g"):
        status, headers, body = http(server.url, data=sql)
        assert (status, code_of(headers)) == (400, "62") and b"Multi-statements are not allowed" in body
    assert http(server.url, data=b"SELECT ';' ;\n")[2] == b";\n"  # a trailing ';' is fine
    for _ in range(4):  # the pooled handles (no session) are as they were
        probe = b"SELECT currentDatabase(), getSetting('readonly')"
        assert http(server.url, data=probe, headers={"Content-Type": "application/octet-stream"})[2] == b"default\t0\n"


@pytest.mark.parametrize("level", ["1", "2"])
def test_readonly_refuses_writes_and_allows_reads(server: EmbeddedClickHouse, client: Client, level: str) -> None:
    client.command(f"CREATE TABLE IF NOT EXISTS g.ro{level} (id UInt64) ENGINE = MergeTree ORDER BY id")
    ro = {"readonly": level}
    writes = [
        b"INSERT INTO g.ro%s FORMAT CSV\n1\n" % level.encode(),
        b"INSERT INTO g.ro%s SELECT 1" % level.encode(),
        b"CREATE TABLE g.new%s (id UInt64) ENGINE = Memory" % level.encode(),
        b"DROP TABLE g.ro%s" % level.encode(),
        b"DROP DATABASE g",
    ]
    for statement in writes:
        status, headers, body = http(server.url, ro, statement)
        assert code_of(headers) == "164", (statement, body)
        assert b"Cannot execute query in readonly mode" in body
    assert http(server.url, ro, b"SELECT count() FROM g.ro" + level.encode())[2] == b"0\n"
    # readonly=1 also refuses setting changes; readonly=2 allows them
    status, headers, _ = http(server.url, {**ro, "max_threads": "1"}, b"SELECT getSetting('max_threads')")
    if level == "1":
        assert code_of(headers) == "164"
    else:
        assert (status, _) == (200, b"1\n")
    status, headers, _ = http(server.url, ro, b"SET readonly = 0; DROP TABLE g.ro" + level.encode())
    assert status != 200
    # (clickhouse-connect as a read-only user: test_users_file_readonly_user_reads_and_writer_writes)
    assert client.command(f"EXISTS TABLE g.ro{level}") == 1  # and the pooled handles are not left readonly
    client.insert(f"g.ro{level}", [[9]], column_names=["id"])
    assert client.command(f"SELECT count() FROM g.ro{level}") == 1


# --- 2b. users file -------------------------------------------------------------------------------


def _sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedClickHouse]:
    root = tmp_path_factory.mktemp("guarded")
    users = root / "users.toml"
    users.write_text(
        f'[users.writer]\npassword_sha256_hex = "{_sha("w-secret")}"\n\n'
        f'[users.grafana]\npassword_sha256_hex = "{_sha("g-secret")}"\nreadonly = true\n'
    )
    ch = EmbeddedClickHouse(root / "ch", users_file=users)
    ch.start()
    yield ch
    ch.stop()


def _client(ch: EmbeddedClickHouse, user: str, password: str) -> Client:
    return clickhouse_connect.get_client(host=ch.host, port=ch.port, username=user, password=password)


def test_users_file_wrong_password_is_refused(guarded: EmbeddedClickHouse) -> None:
    with pytest.raises(DatabaseError) as err:
        _client(guarded, "writer", "wrong")
    assert err.value.code == 516
    with pytest.raises(DatabaseError) as err:
        _client(guarded, "nobody", "w-secret")
    assert err.value.code == 516
    status, headers, body = http(guarded.url, {"query": "SELECT 1"})  # no credentials: user `default`
    assert (status, code_of(headers)) == (403, "516") and b"AUTHENTICATION_FAILED" in body
    assert http(guarded.url, data=b"SELECT 1", headers={"X-ClickHouse-User": "writer"})[0] == 403


def test_users_file_readonly_user_reads_and_writer_writes(guarded: EmbeddedClickHouse) -> None:
    writer = _client(guarded, "writer", "w-secret")
    grafana = _client(guarded, "grafana", "g-secret")
    try:
        writer.command("CREATE DATABASE IF NOT EXISTS u")
        writer.command("CREATE TABLE IF NOT EXISTS u.t (id UInt64) ENGINE = MergeTree ORDER BY id")
        writer.insert("u.t", [[1], [2]], column_names=["id"])
        assert grafana.command("SELECT count() FROM u.t") == 2
        for attempt in (
            lambda: grafana.insert("u.t", [[3]], column_names=["id"]),
            lambda: grafana.command("DROP TABLE u.t"),
            lambda: grafana.command("CREATE TABLE u.g (id UInt64) ENGINE = Memory"),
        ):
            with pytest.raises(DatabaseError) as err:
                attempt()
            assert err.value.code == 164
        # the profile's readonly cannot be lowered from the URL
        headers = {"X-ClickHouse-User": "grafana", "X-ClickHouse-Key": "g-secret"}
        _, got, body = http(guarded.url, {"readonly": "0"}, b"DROP TABLE u.t", headers)
        assert code_of(got) == "164" and b"Cannot modify 'readonly' setting in readonly mode" in body
        # every way a ClickHouse server takes credentials
        assert http(guarded.url, {"user": "writer", "password": "w-secret"}, b"SELECT 8")[2] == b"8\n"
        headers = {"X-ClickHouse-User": "writer", "X-ClickHouse-Key": "w-secret"}
        assert http(guarded.url, data=b"SELECT 9", headers=headers)[2] == b"9\n"
        # a session belongs to its user: another user naming it gets a session of its own
        session = {"session_id": "shared-name", "user": "writer", "password": "w-secret"}
        http(guarded.url, session, b"CREATE TEMPORARY TABLE mine (x UInt8)")
        assert http(guarded.url, session, b"EXISTS TEMPORARY TABLE mine")[2] == b"1\n"
        other = {**session, "user": "grafana", "password": "g-secret"}
        assert http(guarded.url, other, b"EXISTS TEMPORARY TABLE mine")[2] == b"0\n"
        assert writer.command("SELECT count() FROM u.t") == 2
    finally:
        writer.close()
        grafana.close()


def test_an_unusable_users_file_stops_the_server(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.x]\npassword_sha256_hex = "not hex"\n')
    with pytest.raises(RuntimeError, match="password_sha256_hex"):
        EmbeddedClickHouse(tmp_path / "ch", users_file=users, startup_timeout=30).start()
