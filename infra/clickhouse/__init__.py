"""The embedded ClickHouse server: the real engine (chdb) behind ClickHouse's HTTP interface.

Development infrastructure, kept apart from the product: tracehouse talks to it exactly as to a
ClickHouse server, and nothing outside this package knows it is not one. One module per job:

- `server`: the HTTP interface (aiohttp) and `python -m tracehouse.infra.clickhouse.server`;
- `engine`: how a request maps onto chdb (queries, sessions, streamed inserts);
- `sql`: reading just enough SQL to route a request (the insert head, the output format);
- `codecs`: request and response bodies (gzip, zstd, lz4, ...);
- `native`: Native blocks for clients that name a protocol revision, and the compressed-block framing;
- `access`: who may use it (users file, readonly, no web pages);
- `launcher`: starting it as a child process (`EmbeddedClickHouse`, `ensure_clickhouse`).

Its tests are in tests/clickhouse/.
"""
