"""The web server against hostile clients on the same machine (issue 17): slow or stuck connections do not
stall it, request bodies have a deadline and a size cap, and a web page on another site cannot make a
browser send it a write.

The server runs for real (tests/web_server.py) with short limits, plus one test-only POST route (the
API has no write yet; scores will sit behind the same middleware). The clients are raw sockets, so they
can be as slow, as partial and as cross-site as a hostile page or script.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tracehouse.core.config import Settings
from tracehouse.web.app import Limits, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from web_server import ServerThread, get

LIMITS = Limits(header_s=1.0, body_floor_s=1.0, body_bytes_per_s=1_000_000.0, max_body_bytes=64 * 1024, linger_s=0.5)
CALLS: list[bytes] = []  # what the test route received


def app_with_a_write(settings: Settings, limits: Limits) -> web.Application:
    app = create_app(settings, limits)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        CALLS.append(body)
        return web.json_response({"bytes": len(body)})

    app.router.add_post("/api/test-write", echo)
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    # No ClickHouse needed: nothing here reads data, and the reader connects only on first use.
    running = ServerThread(Settings.from_env(clickhouse_url="http://127.0.0.1:9"), limits=LIMITS,
                           app=app_with_a_write).start()  # fmt: skip
    try:
        yield running
    finally:
        running.stop()


def connect(server: ServerThread, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head)
    return sock


def answer_then_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def error_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def assert_serving(server: ServerThread) -> None:
    """Normal requests are answered while the slow clients hang on (a bounded wait, not a speed test)."""
    for _ in range(5):
        status, spec, _ = get(server.url, "/api/openapi.json")
        assert status == 200 and spec["openapi"].startswith("3.1")
        assert get(server.url, "/")[0] == 200


# ---- slow and stuck clients --------------------------------------------------------------------------


def test_slow_request_heads_are_closed_and_do_not_stall_others(server: ServerThread) -> None:
    stuck = [connect(server, b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\nX-Slow: 1") for _ in range(100)]
    silent = [connect(server, b"") for _ in range(100)]
    try:
        assert_serving(server)
        for sock in stuck + silent:  # closed by the server after header_s, without an answer
            assert answer_then_close(sock) == b""
    finally:
        for sock in stuck + silent:
            sock.close()


def test_a_body_too_slow_is_408_and_its_connection_closed(server: ServerThread) -> None:
    head = (f"POST /api/test-write HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 60000\r\n\r\n{").encode()  # fmt: skip
    CALLS.clear()
    slow = [connect(server, head) for _ in range(50)]
    try:
        assert_serving(server)
        for sock in slow:
            status, error = error_of(answer_then_close(sock))
            assert (status, error["code"]) == (408, "request_timeout"), error
            assert "did not arrive within" in error["message"]
    finally:
        for sock in slow:
            sock.close()
    assert CALLS == []  # the handler never saw a partial body


def test_a_body_over_the_cap_is_413_before_it_is_read(server: ServerThread) -> None:
    sock = connect(server, f"POST /api/test-write HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                           "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n".encode())  # fmt: skip
    with sock:
        status, error = error_of(answer_then_close(sock))
    assert (status, error["code"]) == (413, "payload_too_large") and "65536 bytes" in error["message"]
    chunked = (
        f"POST /api/test-write HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json"
        "\r\nTransfer-Encoding: chunked\r\n\r\n" + "10001\r\n" + "x" * 0x10001 + "\r\n0\r\n\r\n"
    ).encode()
    with connect(server, chunked) as sock:  # no length declared: the cap holds while reading
        status, error = error_of(answer_then_close(sock))
    assert (status, error["code"]) == (413, "payload_too_large")


def test_a_body_in_time_reaches_the_handler(server: ServerThread) -> None:
    status, body, _ = get(server.url, "/api/test-write", "POST", body=b'{"a": 1}',
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert (status, body) == (200, {"bytes": 8})


# ---- cross-site writes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"Origin": "http://evil.example", "Content-Type": "application/json"}, "origin 'http://evil.example'"),
        ({"Origin": "null", "Content-Type": "application/json"}, "origin 'null'"),
        ({"Origin": "http://127.0.0.1:1", "Content-Type": "application/json"}, "is refused"),
        ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, "is refused"),
        ({"Origin": "SAME", "Content-Type": "text/plain;charset=UTF-8"}, "text/plain"),
        ({"Origin": "SAME", "Content-Type": "application/x-www-form-urlencoded"}, "form-urlencoded"),
        ({"Origin": "SAME", "Content-Type": "multipart/form-data; boundary=x"}, "multipart/form-data"),
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, "another site"),
        # DNS rebinding: the page's own name now points at 127.0.0.1, so its Origin matches its Host
        ({"Host": "evil.example", "Origin": "http://evil.example", "Content-Type": "application/json"}, "loopback"),
    ],
)
def test_cross_site_writes_are_refused(server: ServerThread, headers: dict[str, str], says: str) -> None:
    headers = {k: v.replace("SAME", server.url) for k, v in headers.items()}
    CALLS.clear()
    for path in ("/api/test-write", "/api/traces", "/api/nothing-here"):
        status, body, _ = get(server.url, path, "POST", body=b"DROP DATABASE tracehouse", headers=headers)
        assert status == 403, (path, body)
        assert body["error"]["code"] == "cross_site_refused" and says in body["error"]["message"], body
    assert CALLS == []


def test_same_site_and_non_browser_writes_pass_the_guard(server: ServerThread) -> None:
    json_type = {"Content-Type": "application/json"}
    for headers in (json_type, {**json_type, "Origin": server.url}, {**json_type, "Sec-Fetch-Site": "same-origin"}):
        status, body, _ = get(server.url, "/api/test-write", "POST", body=b"{}", headers=headers)
        assert (status, body) == (200, {"bytes": 2}), headers
        # a route that takes no write still answers with its own error, not the guard's
        status, body, _ = get(server.url, "/api/traces", "POST", body=b"{}", headers=headers)
        assert status == 405 and body["error"]["code"] == "method_not_allowed"
