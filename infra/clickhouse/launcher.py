"""Starting the embedded ClickHouse server (server.py) as a child process.

A subprocess rather than a thread: chdb allows one data directory per process, a crash in the engine must
not take the caller down, and fault tests need to SIGKILL the database and start it again on the same
directory and port, which is what a real ClickHouse restart looks like to the pipeline.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tracehouse.core.config import parse_clickhouse_url
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ServerProcess

LOG_NAME = "clickhouse-server.log"

# No proxies: the server is local, and a proxy from the environment would answer for it or hide it.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def clickhouse_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a ClickHouse server answers `GET {url}/ping` with "Ok."."""
    try:
        with _opener.open(f"{url.rstrip('/')}/ping", timeout=timeout) as resp:
            return resp.status == 200 and resp.read(16).strip() == b"Ok."
    except (OSError, urllib.error.URLError, ValueError):
        return False


class EmbeddedClickHouse(ServerProcess):
    """The embedded server as a subprocess on host:port with its data in `data_dir`.

    `start()` returns once /ping answers; `stop()` asks politely (SIGTERM) and then insists; `kill()` is
    SIGKILL for fault tests. It can be started again afterwards, on the same directory and port. With
    `users_file`, only its users may query it (see access.py); otherwise the server reads
    TRACEHOUSE_CLICKHOUSE_USERS_FILE from the environment it inherits.

    It stays in the caller's process group (a terminal Ctrl-C reaches it too), as it always has.
    """

    own_session = False
    stop_timeout = 15.0

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        startup_timeout: float = 60.0,
        users_file: Path | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.users_file = users_file
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir / LOG_NAME
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmbeddedClickHouse:
        if self.running:
            return self
        if clickhouse_answers(self.url):
            raise RuntimeError(f"something already answers at {self.url}; not starting a ClickHouse there")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "tracehouse.infra.clickhouse.server",
            "--data-dir", str(self.data_dir), "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip
        if self.users_file is not None:
            cmd += ["--users-file", str(self.users_file)]
        self._spawn(cmd, self.log_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._exited()
            if code is not None:
                raise RuntimeError(
                    f"embedded ClickHouse exited with status {code} while starting on {self.url}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if clickhouse_answers(self.url, timeout=1.0):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"embedded ClickHouse did not answer at {self.url} within {self.startup_timeout:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> EmbeddedClickHouse:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_clickhouse(url: str, data_dir: Path, users_file: Path | None = None) -> EmbeddedClickHouse | None:
    """None if a ClickHouse already answers at `url`; otherwise an embedded one started on the url's
    host and port with its data in `data_dir` (and `users_file`'s users), which the caller must stop."""
    if clickhouse_answers(url):
        return None
    target = parse_clickhouse_url(url)
    return EmbeddedClickHouse(Path(data_dir), target.host, target.port, users_file=users_file).start()
