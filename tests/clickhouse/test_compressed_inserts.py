"""Compressed insert bodies: handed to the engine as they came when it can decompress them itself
(`INSERT ... FROM INFILE ... COMPRESSION`), decoded in Python otherwise; and the client's choice of
compression by where ClickHouse is."""

from __future__ import annotations

import gzip
import os
import urllib.error
import urllib.parse
import urllib.request

import clickhouse_connect
import lz4.frame
import pytest
from backports import zstd
from clickhouse_connect.driver.client import Client

from tracehouse.core.config import parse_clickhouse_url
from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse
from tracehouse.sinks.clickhouse import compression, is_loopback

DATABASE = "cz"
COMPRESS = {"lz4": lz4.frame.compress, "zstd": zstd.compress, "gzip": gzip.compress}
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(server: EmbeddedClickHouse, query: str, body: bytes, encoding: str) -> tuple[int, dict[str, str], bytes]:
    url = f"{server.url}/?{urllib.parse.urlencode({'query': query})}"
    req = urllib.request.Request(url, data=body, headers={"Content-Encoding": encoding}, method="POST")
    try:
        with _opener.open(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def frames(data: bytes, codec: str, size: int) -> bytes:
    """`data` as concatenated frames of `codec`, one per `size` bytes, as clickhouse-connect sends blocks."""
    return b"".join(COMPRESS[codec](data[i : i + size]) for i in range(0, len(data), size))


def rows(count: int, start: int = 0) -> bytes:
    # hex text compresses to about half: a 4 MB body stays larger than one engine hand-off (1 MiB)
    return b"".join(b'[%d,"%s"]\n' % (i, os.urandom(50).hex().encode()) for i in range(start, start + count))


@pytest.mark.parametrize("codec", ["lz4", "zstd", "gzip"])
def test_compressed_body_reaches_the_engine_whole(server: EmbeddedClickHouse, client: Client, codec: str) -> None:
    table = f"{DATABASE}.frames_{codec}"
    client.command(f"CREATE TABLE {table} (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    insert = f"INSERT INTO {table} FORMAT JSONCompactEachRow"
    small, large = frames(rows(100), codec, 1000), frames(rows(40_000, 100), codec, 64 << 10)
    assert len(large) > 1 << 20  # spooled in several hand-offs
    for body in (small, large):
        status, _, text = post(server, insert, body, codec)
        assert status == 200, text
    expected = 40_100, sum(range(40_100))
    assert client.query(f"SELECT count(), sum(id) FROM {table}").result_rows == [expected]

    # A corrupt frame: ClickHouse's own decompression error, nothing stored, no server path in the text
    bad = large[: len(large) // 2] + b"not compressed" + large[len(large) // 2 :]
    status, headers, text = post(server, insert, bad, codec)
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] in ("618", "561", "354")  # LZ4/ZSTD/ZLIB decoder failed
    assert text.startswith(b"Code: ") and b"request body" in text and b"http_inserts" not in text
    status, _, text = post(server, insert, b"", codec)  # an empty body inserts nothing
    assert status == 200, text
    assert client.query(f"SELECT count(), sum(id) FROM {table}").result_rows == [expected]


def test_compressed_query_in_the_body_is_decoded_here(server: EmbeddedClickHouse, client: Client) -> None:
    """The INSERT inside the compressed body (curl's way, and clickhouse-connect's `insert()`): decoded in
    Python to find where the data starts; many blocks of many frames all arrive."""
    client.command(f"CREATE TABLE {DATABASE}.inline (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    body = b"INSERT INTO inline FORMAT JSONCompactEachRow\n" + rows(20_000)
    req = urllib.request.Request(
        f"{server.url}/?database={DATABASE}", data=frames(body, "zstd", 64 << 10), headers={"Content-Encoding": "zstd"}
    )
    with _opener.open(req, timeout=60) as resp:
        assert resp.status == 200
    for codec in ("lz4", False):
        c = clickhouse_connect.get_client(host=server.host, port=server.port, database=DATABASE, compress=codec)
        # 300-byte strings: clickhouse-connect cuts 30,000 rows into several Native blocks (2 MiB each)
        c.insert("inline", [[100_000 + i, "y" * 300] for i in range(30_000)], column_names=["id", "s"])
        c.close()
    assert client.query(f"SELECT count() FROM {DATABASE}.inline").result_rows == [(80_000,)]


def test_no_compression_over_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST.", "ch.localhost"):
        assert is_loopback(host), host
    for host in ("10.0.0.5", "::ffff:10.0.0.5", "clickhouse", "example.com", "localhost.example.com"):
        assert not is_loopback(host), host
    local, remote = parse_clickhouse_url("http://127.0.0.1:8123"), parse_clickhouse_url("https://ch.example:8443")
    assert compression(local, {}) is False and compression(remote, {}) == "lz4"
    on, off = {"TRACEHOUSE_CLICKHOUSE_COMPRESS": "1"}, {"TRACEHOUSE_CLICKHOUSE_COMPRESS": "0"}
    assert compression(local, on) == "lz4" and compression(remote, off) is False
