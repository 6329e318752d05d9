"""Slow clients cannot stall `tracehouse receiver`: dozens of uploads that declare a large body and then
send a byte a second (and chunked uploads that trickle) get 408 once their deadline passes, while
one-span requests from a well-behaved client keep getting 200 within a second the whole time.

The receiver runs as its own process on the session's Kafka, with a short body deadline from the
environment (`TRACEHOUSE_RECEIVER_BODY_TIMEOUT`, `TRACEHOUSE_RECEIVER_MIN_UPLOAD_RATE`) so the test
takes seconds; the slow clients are raw sockets, so every byte is under the test's control.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest
from receiver_load import otlp_body

from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess

pytestmark = pytest.mark.timeout(180)

SLOW_SIZED = 48  # Content-Length: 1,000,000, then one byte a second
SLOW_CHUNKED = 6  # Transfer-Encoding: chunked, one 1-byte chunk a second
FLOOR_S = 2.0
MIN_RATE = 250_000  # bytes/s: 1,000,000 declared bytes get 2 + 4 = 6 s


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get_json(port: int, path: str) -> dict[str, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


class SlowUploads:
    """Raw sockets that start an upload and then trickle it, one byte per socket per second, until the
    receiver answers; `answers` holds each socket's status line."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: dict[int, str] = {}
        self._sockets: dict[int, tuple[socket.socket, bool]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def open(self, sized: int, chunked: int) -> SlowUploads:
        for i in range(sized + chunked):
            sock = socket.create_connection(("127.0.0.1", self.port))
            is_chunked = i >= sized
            framing = "Transfer-Encoding: chunked" if is_chunked else "Content-Length: 1000000"
            head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n{framing}\r\n\r\n"
            sock.sendall(head.encode())
            sock.setblocking(False)
            self._sockets[sock.fileno()] = (sock, is_chunked)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        selector = selectors.DefaultSelector()
        for fd, (sock, _) in self._sockets.items():
            selector.register(sock, selectors.EVENT_READ, fd)
        next_byte = time.monotonic()
        while not self._stop.is_set() and len(self.answers) < len(self._sockets):
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                self.answers[key.data] = data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
                selector.unregister(sock)
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for fd, (sock, is_chunked) in self._sockets.items():
                    if fd not in self.answers:
                        try:
                            sock.send(b"1\r\nx\r\n" if is_chunked else b"x")
                        except OSError:
                            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock, _ in self._sockets.values():
            sock.close()


def test_slow_uploads_get_408_while_normal_requests_succeed_within_a_second(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "TRACEHOUSE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRACEHOUSE_DATA_DIR": str(tmp_path),
        "TRACEHOUSE_RECEIVER_BODY_TIMEOUT": str(FLOOR_S),
        "TRACEHOUSE_RECEIVER_MIN_UPLOAD_RATE": str(MIN_RATE),
    }
    receiver = ManagedProcess("receiver", ["receiver", "--port", str(port)], tmp_path / "logs", env).start()
    slow = SlowUploads(port)
    try:
        assert receiver.wait_for_log("started on", timeout=60), receiver.log_tail()
        assert receiver.pid is not None
        slow.open(SLOW_SIZED, SLOW_CHUNKED)
        time.sleep(0.5)  # every slow upload has reached the receiver's body reader
        statuses: list[int] = []
        peak_rss = 0.0
        started = time.monotonic()
        while time.monotonic() - started < 1 / MIN_RATE * 1_000_000 + FLOOR_S + 1:
            body, _ = otlp_body("slow-clients-ok", 1)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)  # within a second, or fail
            try:
                connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            finally:
                connection.close()
            peak_rss = max(peak_rss, rss_mb(receiver.pid))
            time.sleep(0.1)
        assert statuses and set(statuses) == {200}, statuses
        deadline = time.monotonic() + 15
        while len(slow.answers) < SLOW_SIZED + SLOW_CHUNKED and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(set(slow.answers.values())) == ["HTTP/1.1 408 Request Timeout"], slow.answers
        health = get_json(port, "/health")
        assert health["bytes_being_read"] == 0, health  # the slow clients hold nothing any more
        assert health["receiver"]["too_slow"] == SLOW_SIZED + SLOW_CHUNKED  # type: ignore[index]
        assert peak_rss < 210, peak_rss
    finally:
        slow.close()
        receiver.stop()


def test_normal_uploads_are_not_cut_by_the_deadline(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A large body sent at a reasonable pace (above the minimum rate) gets 200, not 408."""
    port = free_port()
    env = {
        "TRACEHOUSE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRACEHOUSE_DATA_DIR": str(tmp_path),
        "TRACEHOUSE_RECEIVER_BODY_TIMEOUT": "1",
        "TRACEHOUSE_RECEIVER_MIN_UPLOAD_RATE": str(MIN_RATE),
    }
    receiver = ManagedProcess("receiver", ["receiver", "--port", str(port)], tmp_path / "logs", env).start()
    try:
        assert receiver.wait_for_log("started on", timeout=60), receiver.log_tail()
        body, _ = otlp_body("slow-but-fine", 400)  # ~0.5 MB: 1 + 2 s allowed at the minimum rate
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
            step = len(body) // 10
            for i in range(0, len(body), step):  # ten pieces over ~1 s: twice the minimum rate or more
                sock.sendall(body[i : i + step])
                time.sleep(0.1)
            answer = sock.recv(4096).split(b"\r\n", 1)[0]
        finally:
            sock.close()
        assert answer == b"HTTP/1.1 200 OK", answer
    finally:
        receiver.stop()


def test_body_deadline_settings_are_read_from_the_environment() -> None:
    from tracehouse.producers.otlp import ReceiverOptions

    options = ReceiverOptions.from_env(
        {
            "TRACEHOUSE_RECEIVER_ACK_TIMEOUT": "2.5",
            "TRACEHOUSE_RECEIVER_BODY_TIMEOUT": "3",
            "TRACEHOUSE_RECEIVER_MIN_UPLOAD_RATE": "1000",
            "TRACEHOUSE_RECEIVER_READ_BUDGET_BYTES": "1048576",
            "TRACEHOUSE_RECEIVER_MAX_PENDING_SPANS": "500",
        }
    )
    assert (options.ack_timeout_s, options.body_timeout_s, options.min_upload_rate) == (2.5, 3.0, 1000)
    assert (options.read_budget_bytes, options.max_pending_spans) == (1_048_576, 500)
    with pytest.raises(ValueError, match="TRACEHOUSE_RECEIVER_ACK_TIMEOUT"):
        ReceiverOptions.from_env({"TRACEHOUSE_RECEIVER_ACK_TIMEOUT": "soon"})


def test_a_head_trickled_a_byte_at_a_time_is_closed_after_the_header_deadline(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """aiohttp waits an hour for a request head by default; the receiver closes such a connection after
    `TRACEHOUSE_RECEIVER_HEADER_TIMEOUT`, while a normal request on another connection is answered."""
    port = free_port()
    env = {
        "TRACEHOUSE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRACEHOUSE_DATA_DIR": str(tmp_path),
        "TRACEHOUSE_RECEIVER_HEADER_TIMEOUT": "2",
    }
    receiver = ManagedProcess("receiver", ["receiver", "--port", str(port)], tmp_path / "logs", env).start()
    sockets = []
    try:
        assert receiver.wait_for_log("started on", timeout=60), receiver.log_tail()
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
        head = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Slow: "
        closed_at: dict[int, float] = {}
        started = time.monotonic()
        for i in range(8):  # a byte a second per socket: the head never completes
            for n, sock in enumerate(sockets):
                if n in closed_at:
                    continue
                try:
                    sock.send(head if i == 0 else b"x")
                except OSError:
                    closed_at[n] = time.monotonic() - started
            body, _ = otlp_body("slow-head-ok", 1)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            try:
                connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
                assert connection.getresponse().status == 200
            finally:
                connection.close()
            time.sleep(1.0)
        for n, sock in enumerate(sockets):  # a closed socket reads as EOF (or a reset)
            if n not in closed_at:
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        closed_at[n] = time.monotonic() - started
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[n] = time.monotonic() - started
        assert len(closed_at) == len(sockets), f"{len(sockets) - len(closed_at)} slow heads still open"
    finally:
        for sock in sockets:
            sock.close()
        receiver.stop()
