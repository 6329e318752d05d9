"""Arize Phoenix for the end-to-end benchmark (e2e.py): installed in a venv of its own, served on SQLite in
a temporary directory, watched through its SQLite file (read-only), and always stopped.

Not a benchmark itself and not a test. Phoenix is never a dependency of tracehouse: its venv lives under
~/.cache/tracehouse/phoenix-venv (made with `python3 -m venv` and pip on first use, pinned below).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PHOENIX_VERSION = "20.26.1"  # the newest on PyPI when this was written; installs on Python 3.11
VENV = Path(os.environ.get("TRACEHOUSE_PHOENIX_VENV", Path.home() / ".cache" / "tracehouse" / "phoenix-venv"))
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PhoenixUnavailable(RuntimeError):
    """Phoenix could not be installed or started; the message says why."""


def installed_version(venv: Path = VENV) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('arize-phoenix'))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_phoenix(version: str = PHOENIX_VERSION, venv: Path = VENV, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The `phoenix` executable of `arize-phoenix==version` in `venv`, installing it if needed."""
    have = installed_version(venv)
    if have != version:
        log(f"installing arize-phoenix=={version} into {venv} (first use; about a minute)...")
        venv.parent.mkdir(parents=True, exist_ok=True)
        steps = [
            ["python3", "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"arize-phoenix=={version}"],
        ]
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            except subprocess.TimeoutExpired:
                raise PhoenixUnavailable(f"`{' '.join(cmd)}` did not finish in 20 minutes") from None
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise PhoenixUnavailable(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
    executable = venv / "bin" / "phoenix"
    if not executable.exists():
        raise PhoenixUnavailable(f"{executable} is missing after installing arize-phoenix=={version}")
    return executable


@dataclass
class PhoenixServer:
    """`phoenix serve` on 127.0.0.1:port with SQLite in `workdir`; `stop()` ends its whole process group."""

    executable: Path
    workdir: Path
    port: int
    grpc_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "phoenix.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "phoenix.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 180.0) -> PhoenixServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(self.workdir),
            "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{self.db_path}",
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.executable), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PhoenixUnavailable(f"phoenix serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with _opener.open(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise PhoenixUnavailable(f"phoenix serve did not answer /healthz in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we made with start_new_session
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        else:  # the leader is gone; children of its group may not be
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _epoch(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass
class SpanWatcher:
    """Polls Phoenix's SQLite file (read-only) for new span rows; each row's first-seen time minus its end
    time is its delay to queryable (to within the poll interval)."""

    db_path: Path
    interval: float = 0.5
    last_id: int = 0
    rows: int = 0
    root_delays: list[float] = field(default_factory=list)
    all_delays: list[float] = field(default_factory=list)
    counts: list[tuple[float, int]] = field(default_factory=list)  # (time, spans stored)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def poll(self) -> None:
        if not self.db_path.exists():
            return
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                "SELECT id, parent_id IS NULL, end_time FROM spans WHERE id > ? ORDER BY id", (self.last_id,)
            ).fetchall()
        except sqlite3.OperationalError as exc:  # no table yet, or locked for longer than the timeout
            if "no such table" not in str(exc) and len(self.errors) < 5:
                self.errors.append(str(exc))
            return
        finally:
            con.close()
        now = time.time()
        for rowid, is_root, end_time in rows:
            delay = now - _epoch(end_time)
            self.all_delays.append(delay)
            if is_root:
                self.root_delays.append(delay)
            self.last_id = max(self.last_id, rowid)
        self.rows += len(rows)
        self.counts.append((now, self.rows))

    def start(self) -> SpanWatcher:
        self._thread = threading.Thread(target=self._run, name="bench-phoenix-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.poll()

    def stored_at(self, t: float) -> int:
        """Spans stored by time t (the last poll at or before it)."""
        best = 0
        for when, count in self.counts:
            if when <= t:
                best = count
        return best
