"""`tracehouse receiver --processes 2`: two receivers share one port, both answer and take spans into Kafka,
and a child killed with SIGKILL is replaced while the port keeps answering; SIGTERM stops them all; and
children that keep dying make the parent give up with exit code 1.

Real processes on the session's Apache Kafka; the children are told apart by the `pid` of /health.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _health(port: int) -> dict[str, object] | None:
    """/health over a new connection (so the kernel may pick either child), or None if none answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


def _pids_answering(port: int, tries: int = 40) -> set[int]:
    pids = set()
    for _ in range(tries):
        health = _health(port)
        if health is not None:
            pids.add(int(health["pid"]))  # type: ignore[call-overload]
    return pids


def _post_span(port: int) -> int:
    """One OTLP/HTTP JSON span; the answer's status (200 means Kafka holds it)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "procs"}}]},
            "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": span_id, "name": "step",
                                       "startTimeUnixNano": "1750000000000000000",
                                       "endTimeUnixNano": "1750000000100000000"}]}]}]}  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/traces", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def receivers(settings: Settings) -> Iterator[tuple[ManagedProcess, int]]:
    port = free_port()
    env = LocalStack(settings).child_env()
    proc = ManagedProcess(
        "receivers", ["receiver", "--port", str(port), "--processes", "2"], settings.data_dir / "logs", env
    ).start()
    try:
        assert proc.wait_for_log("started on", timeout=60), proc.log_tail()
        yield proc, port
    finally:
        proc.stop()


def test_two_processes_share_the_port_and_a_killed_one_is_replaced(receivers: tuple[ManagedProcess, int]) -> None:
    proc, port = receivers
    pids = wait_until(lambda: len(_pids_answering(port)) == 2 and _pids_answering(port), timeout=60)
    assert pids and len(pids) == 2, proc.log_tail()
    assert all(_post_span(port) == 200 for _ in range(6)), proc.log_tail()

    killed = min(pids)
    os.kill(killed, signal.SIGKILL)
    replaced = wait_until(
        lambda: (now := _pids_answering(port)) and killed not in now and len(now) == 2 and now, timeout=60
    )
    assert replaced and killed not in replaced and len(replaced) == 2, proc.log_tail()
    assert all(_post_span(port) == 200 for _ in range(6)), proc.log_tail()

    assert proc.stop() == 0, proc.log_tail()  # SIGTERM to the parent reaches every child, which flushes
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in replaced), timeout=30)


def test_children_that_keep_dying_make_the_parent_exit_non_zero(tmp_path: Path) -> None:
    """The port is held by another program (without SO_REUSEPORT): every child fails to listen; the
    parent restarts them a few times, then gives up with exit code 1 instead of looping forever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"TRACEHOUSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}  # nothing there: children start anyway
        proc = ManagedProcess("dying", ["receiver", "--port", str(port), "--processes", "2"], tmp_path, env).start()
        try:
            assert wait_until(lambda: not proc.alive(), timeout=120), proc.log_tail()
        finally:
            code = proc.stop()
    assert code == 1, proc.log_tail()
    assert "died within" in proc.log_tail(), proc.log_tail()
