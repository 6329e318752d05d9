"""The embedded default broker: noida-db's Kafka-compatible service, started as a child process.

Why noida by default: it is an 11 MB native binary installed by pip (`tracehouse[embedded]`), answers in
milliseconds and idles at a few MB, where real Kafka needs a JDK, Maven and ~350 MB. `KafkaBroker` (real
Apache Kafka) remains the reference the test suite checks behaviour against.

What was checked against noida-db 0.2.3 (and is covered by tests/integration/test_brokers.py):
- answers Metadata v4 within ~10 ms of launch; SIGTERM and SIGINT both exit 0 in well under a second,
  write `DATA_DIR/kafka.json` and remove `DATA_DIR/noida.control.json`;
- the admin CreateTopics request honours the partition count (auto-created topics get 1 partition), and
  re-creating returns TOPIC_ALREADY_EXISTS like Kafka does;
- it keeps data in memory and saves to disk about a second after a change, so a SIGKILL within that
  second loses the latest writes (a clean stop never does); a stale control file after a SIGKILL does not
  prevent the next start.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from types import TracebackType

from tracehouse.infra.kafka_broker import (
    _tail,
    kafka_answers,  # re-exported: the probe belongs to both brokers
)
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ServerProcess

__all__ = ["NoidaError", "NoidaKafka", "kafka_answers", "noida_binary"]

_BINARY = "noida-db.exe" if os.name == "nt" else "noida-db"


class NoidaError(RuntimeError):
    """noida-db is missing or failed to start; the message carries its output."""


def noida_binary() -> Path:
    """The noida-db executable, preferring the native binary inside the `noida_db` package.

    Order matters: the `noida-db` console script next to `sys.executable` is a Python wrapper that runs
    the binary with `subprocess.call` and does not forward signals, so stopping the wrapper would orphan
    the server. (We signal the whole process group anyway, so the wrappers still work as fallbacks.)
    """
    spec = importlib.util.find_spec("noida_db")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _BINARY
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):  # the wrapper chmods it on first use; so do we
                candidate.chmod(candidate.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return candidate
    beside_python = Path(sys.executable).parent / _BINARY
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("noida-db")
    if on_path:
        return Path(on_path)
    raise NoidaError("noida-db is not installed; `pip install 'tracehouse[embedded]'` (or `pip install noida-db`)")


class NoidaKafka(ServerProcess):
    """noida-db running only its Kafka service on 127.0.0.1:`port`, data in `data_dir`.

    Output (including a harmless GLIBC weak-version warning the binary prints) goes to `data_dir/noida.log`.
    The port is chosen on first start and kept across restarts. `stop()` is SIGTERM (noida saves its data
    and exits 0), SIGKILL after 10 s; `kill()` loses writes from roughly the last second (noida saves about
    once a second).
    """

    stop_timeout = 10.0

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        super().__init__()
        #: Seconds the last `start()` took until Kafka answered.
        self.start_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise NoidaError("noida has no port yet; call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "noida.log"

    @property
    def control_file(self) -> Path:
        """Written by noida while it runs (pid, control port, token); removed on a clean exit."""
        return self.data_dir / "noida.control.json"

    def start(self, timeout: float = 15.0) -> NoidaKafka:
        """Start noida and return once its Kafka service answers metadata requests."""
        if self.running:
            return self
        binary = noida_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        cmd = [
            str(binary), "start", "--only", "kafka", "--kafka-port", str(self.port),
            "--host", "127.0.0.1", "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        started = time.monotonic()
        self._spawn(cmd, self.log_file)
        while not kafka_answers(self.bootstrap, timeout=0.5):
            code = self._exited()
            if code is not None:
                raise NoidaError(
                    f"noida-db exited with code {code} while starting on port {self.port}:\n" + _tail(self.log_file)
                )
            if time.monotonic() - started > timeout:
                self.kill()
                raise NoidaError(
                    f"noida-db did not answer on {self.bootstrap} within {timeout:.0f}s; killed it:\n"
                    + _tail(self.log_file)
                )
            time.sleep(0.02)
        self.start_seconds = time.monotonic() - started
        return self

    def restart(self, timeout: float = 15.0) -> NoidaKafka:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> NoidaKafka:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"NoidaKafka({self.data_dir}, port={self.port}, {state})"
