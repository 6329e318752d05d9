"""Child processes of the local stack (`up`, `demo`, tests): started, watched, stopped, logged to files.

Each component runs as its own process, as in production: the worker and the sink each get a core of
their own instead of sharing one event loop, and a fault test can SIGKILL exactly one of them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

# Servers in a session of their own that still run when the interpreter exits are stopped, so an aborted
# test run does not leave JVMs holding ports and half a GB each. (A SIGKILLed Python cannot clean up.)
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM, group=True)
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL, group=True)
                proc.wait()
    _LIVE.clear()


def _signal(proc: subprocess.Popen[bytes], sig: int, *, group: bool) -> None:
    """Signal the child, or its whole process group (it runs in its own session), so that a launcher
    wrapper and the real server both get it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


class ServerProcess:
    """The pid-and-wait part of a launcher (embedded ClickHouse, Apache Kafka, noida-db): one child
    server process with its output appended to a log file, stopped politely or killed.

    With `own_session` (the brokers) the child runs in a session of its own, so a terminal Ctrl-C reaches
    the parent, which stops children in order; it is signalled as a process group and stopped at
    interpreter exit if still running. Without it (the ClickHouse server, a plain Python child) it stays
    in the caller's process group and is signalled alone. Subclasses write `start()` (what to run, how to
    tell it is ready) and set `stop_timeout`.
    """

    own_session: ClassVar[bool] = True
    stop_timeout: ClassVar[float] = 15.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        """Start `cmd` with stdout and stderr appended to `log_path`, after a line saying what runs."""
        with open(log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=self.own_session,
            )
        if self.own_session:
            _LIVE.add(self._proc)

    def _exited(self) -> int | None:
        """The exit code if the child has exited (it is then forgotten by the exit-time cleanup)."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            _LIVE.discard(self._proc)
        return code

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds (default `stop_timeout`);
        returns the exit code, or None if it was never started."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM, group=self.own_session)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL, group=self.own_session)
                proc.wait()
        _LIVE.discard(proc)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, like a crash, an OOM kill or a power cut."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:  # never signal a reaped pid: it may belong to someone else by now
            _signal(proc, signal.SIGKILL, group=self.own_session)
        proc.wait()
        _LIVE.discard(proc)

    def wait(self) -> int:
        """Block until the child exits; return its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        code = self._proc.wait()
        _LIVE.discard(self._proc)
        return code


class ManagedProcess:
    """A `python -m tracehouse.cli.main ARGS` child with its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> ManagedProcess:
        env = dict(os.environ)
        env.update(self.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["NO_COLOR"] = "1"  # a log file gets text, not terminal colour codes
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracehouse.cli.main", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches the parent, which stops children in order
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL when it does not exit in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the fault tests' way to break a component."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_for_log(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.log_path.read_text(errors="replace"):
                    return True
            except OSError:
                pass
            if not self.alive():
                return False
            time.sleep(0.1)
        return False
