"""A real, single-node Apache Kafka (KRaft) broker run from jars, for tests and `tracehouse kafka`.

Why real Kafka and not only the embedded noida-db: the pipeline relies on broker behaviour (consumer group
rebalances, compression, durability across a crash) that only the real thing proves. Why jars and not
Docker or the release tarball: CI machines here have a JDK and Maven but no Docker, and Maven already knows
how to fetch, verify and cache artifacts from Maven Central — so `kafka/pom.xml` lists the broker and this
module runs `java -cp 'jars/*' kafka.Kafka` directly.

The broker is tuned for a small (2-core) test machine: a 512 MB serial-GC heap, C1-only JIT (less compile
work while starting), few threads, 1-partition internal topics and a short broker session timeout so a
restart after SIGKILL does not wait 9 s for the old registration to expire.

Command line (backs `tracehouse kafka`):

    python -m tracehouse.infra.kafka_broker --data-dir DIR --port 9092
    python -m tracehouse.infra.kafka_broker --fetch-only     # just download the jars (CI cache warm-up)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

# Topic administration lives in core (the CLI, the stack and the tests use it against any Kafka); the
# names stay importable from here for the benchmarks and tests that start a broker and make topics on it.
from tracehouse.core import settings as env
from tracehouse.core.topic_admin import create_topics, ensure_topics  # noqa: F401
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ServerProcess

POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
# Written into the jars directory only after Maven succeeded; its absence means "fetch (again)".
MARKER_NAME = ".tracehouse-complete"
# Serialises concurrent fetches; its presence also marks the directory as one we fill (not user-provided).
LOCK_NAME = ".tracehouse-fetch.lock"
# Java's defaults (heap up to 1/4 of RAM, G1, C2 compiler threads competing for the 2 cores) suit long-lived
# servers. These cap the heap, so a session broker plus a test's own broker fit on CI, and cut JIT work at
# startup: ready in ~1.2-1.4 s on a 2-core box vs ~1.5 s with defaults (more when the cores are busy).
# C1-only code is slower at steady state, irrelevant at test volumes. Append your own with
# TRACEHOUSE_KAFKA_JVM_OPTS (later flags win), e.g. "-Xmx2g" for benchmarks.
JVM_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
)


class KafkaBrokerError(RuntimeError):
    """The broker (or fetching its jars) failed; the message carries what to do or the log tail."""


# --------------------------------------------------------------------------------------------------- jars


def kafka_version() -> str:
    """The Kafka version to run: `TRACEHOUSE_KAFKA_VERSION`, else the default pinned in `kafka/pom.xml`.

    Read from the pom so the version lives in exactly one place.
    """
    override = env.get(env.KAFKA_VERSION)
    if override:
        return override
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", POM_PATH.read_text())
    if not match:
        raise KafkaBrokerError(f"no <kafka.version> property in {POM_PATH}")
    return match.group(1)


def kafka_jars_dir() -> Path:
    """Where the broker jars live: `TRACEHOUSE_KAFKA_JARS`, else `~/.cache/tracehouse/kafka-<version>/`.

    A per-version cache directory lets CI cache it as one unit and lets versions coexist.
    """
    override = env.get(env.KAFKA_JARS)
    if override is not None:
        return override.expanduser()
    return Path.home() / ".cache" / "tracehouse" / f"kafka-{kafka_version()}"


def _jars_complete(directory: Path) -> bool:
    """True if `directory` holds a usable broker classpath.

    Our own downloads are complete once the marker exists; a directory we did not fill (say the `libs/`
    of an Apache Kafka tarball, given via TRACEHOUSE_KAFKA_JARS) counts if it has the broker jar.
    """
    if (directory / MARKER_NAME).is_file():
        return True
    ours = (directory / LOCK_NAME).exists()  # created before Maven runs: a fetch of ours was interrupted
    return not ours and any(directory.glob("kafka_2.*.jar"))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so parallel test processes do not run Maven into the same directory at once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_kafka_jars(dest: Path | None = None) -> Path:
    """Make sure the broker jars are in `dest` (default `kafka_jars_dir()`), running Maven if needed.

    Maven copies the broker, its runtime dependencies and a logging backend into `dest`; the marker file
    is written only after Maven succeeded, so an interrupted fetch is simply redone next time.
    """
    dest = Path(dest).expanduser() if dest is not None else kafka_jars_dir()
    if _jars_complete(dest):
        return dest
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError(
            "Apache Kafka jars are missing and Maven (`mvn`) is not on PATH to fetch them. Install Maven "
            "(e.g. `apt-get install maven`), or point TRACEHOUSE_KAFKA_JARS at a directory of Kafka jars "
            f"(the libs/ folder of an Apache Kafka {kafka_version()} download works)."
        )
    _java_executable()  # fail now rather than after a download that cannot be used
    version = kafka_version()
    dest.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest / LOCK_NAME):
        if _jars_complete(dest):  # another process fetched while we waited for the lock
            return dest
        print(
            f"tracehouse: fetching Apache Kafka {version} jars from Maven Central into {dest} (one time, ~50 MB)...",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM_PATH),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={dest}",
            f"-Dkafka.version={version}",
        ]
        # Captured, not streamed: with -q Maven prints only errors (plus stray ANSI resets), shown on failure.
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise KafkaBrokerError(
                f"Maven failed (exit {result.returncode}) fetching Kafka {version}: {shlex.join(cmd)}\n"
                f"{result.stdout}{result.stderr}"
            )
        if not any(dest.glob("kafka_2.*.jar")):
            raise KafkaBrokerError(f"Maven succeeded but no kafka_2.*.jar landed in {dest}")
        jars = sorted(p.name for p in dest.glob("*.jar"))
        (dest / MARKER_NAME).write_text(f"kafka {version}\n" + "\n".join(jars) + "\n")
        print(
            f"tracehouse: fetched {len(jars)} jars in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return dest


def _java_executable() -> str:
    """`$JAVA_HOME/bin/java` if set (what Maven and the Kafka scripts use too), else `java` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError("Java is not installed (no `java` on PATH, no JAVA_HOME); Kafka needs JDK 17+.")
    return java


# ------------------------------------------------------------------------------------------ probing


def _parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host:  # "host" without a port
            host, port = item, "9092"
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _metadata_probe(host: str, port: int, timeout: float) -> bool:
    """Send a Metadata v4 request and check a broker list comes back.

    Raw socket on purpose: it is synchronous (callable from async code without nesting event loops) and
    logs nothing, unlike a client library retrying connections. v4 is the oldest version Kafka 4.x still
    accepts and has been supported since Kafka 1.0. A KRaft broker only lists itself once it is unfenced,
    so a non-empty broker list means it really serves.
    """
    correlation_id = 0x7EAC
    client_id = b"tracehouse-probe"
    api_key, api_version = 3, 4
    body = struct.pack(">i", 0) + b"\x00"  # no topics (cheap); allow_auto_topic_creation = false
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    request = header + body
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.sendall(struct.pack(">i", len(request)) + request)
            response = b""
            while len(response) < 16:  # size, correlation id, throttle ms, broker count
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                response += chunk
    except OSError:
        return False
    _size, got_correlation, _throttle, brokers = struct.unpack(">iiii", response[:16])
    return got_correlation == correlation_id and brokers >= 1


def kafka_answers(bootstrap: str, timeout: float = 1.0) -> bool:
    """True if a Kafka broker at `bootstrap` ("host:port[,host:port]") answers a metadata request.

    Stronger than a TCP connect: a port can be open (or taken by something else) while the broker is not
    yet serving. Never raises and never takes much longer than `timeout` per address.
    """
    try:
        addresses = _parse_bootstrap(bootstrap)
    except ValueError:
        return False
    return any(_metadata_probe(host, port, timeout) for host, port in addresses)


# ------------------------------------------------------------------------------------ processes


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} is empty)"


def _random_cluster_id() -> str:
    """A cluster id as Kafka's `Uuid.randomUuid().toString()` makes them (url-safe base64, no padding,
    never starting with '-', which the CLI tools would read as a flag)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


# --------------------------------------------------------------------------------------- broker


class KafkaBroker(ServerProcess):
    """A single-node Apache Kafka in KRaft mode (broker and controller in one JVM), data in `data_dir`.

    Layout of `data_dir`: `server.properties` and `log4j.properties` (rewritten on each start), `kafka-logs/`
    (the topic data; formatted once), `kafka.log` (broker log, WARN and up) and `kafka.out` (JVM stdout and
    stderr). Ports are chosen on first start and kept across `restart()`, so clients can reconnect.
    `stop()` is SIGTERM (Kafka flushes and writes its clean-shutdown marker), SIGKILL after 30 s; `kill()`
    is like a crash or an OOM kill: the next start runs log recovery.
    """

    stop_timeout = 30.0

    def __init__(self, data_dir: Path, port: int | None = None, jars: Path | None = None, partitions: int = 4) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port: int | None = None
        self.partitions = partitions
        self._jars = Path(jars) if jars is not None else None
        super().__init__()
        #: Seconds the last `start()` took from launching the JVM to answering metadata requests.
        self.start_seconds: float | None = None

    # -- facts

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise KafkaBrokerError("broker has no port yet; call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        """Kafka's `log.dirs`: where topic partitions are stored."""
        return self.data_dir / "kafka-logs"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def out_file(self) -> Path:
        return self.data_dir / "kafka.out"

    # -- configuration

    def server_properties(self) -> dict[str, str]:
        """The broker configuration; a method so tests can see (or subclasses extend) what is run."""
        assert self.port is not None and self.controller_port is not None
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static quorum: works for formatting on 3.9 and 4.x without --standalone, and the controller
            # port may change between runs because static voters are not stored in the metadata log.
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": str(self.partitions),
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # One partition, not 50: the first consumer group otherwise waits for 50 partitions to appear.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",  # Kafka 4.x share groups
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the controller keeps the dead broker's registration until its session
            # expires (default 9 s) and refuses the restarted broker until then; 3 s keeps restarts quick
            # with enough heartbeats (every 0.5 s) to survive a busy 2-core machine.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # Fewer threads and a 16 MB (not 128 MB) log-cleaner buffer: a 512 MB heap on 2 cores.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }

    def _log4j_properties(self) -> str:
        log_file = str(self.log_file).replace("\\", "/")
        return "\n".join(
            [
                "# Written by tracehouse.infra.kafka_broker on every start.",
                "log4j.rootLogger=WARN, file",
                "log4j.appender.file=org.apache.log4j.FileAppender",
                f"log4j.appender.file.File={log_file}",
                "log4j.appender.file.Append=true",
                "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
                "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
                # The one INFO line worth having: when the server finished starting (or shutting down).
                "log4j.logger.kafka.server.KafkaRaftServer=INFO",
                "",
            ]
        )

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        body = "".join(f"{k}={v}\n" for k, v in self.server_properties().items())
        props.write_text("# Written by tracehouse.infra.kafka_broker on every start.\n" + body)
        (self.data_dir / "log4j.properties").write_text(self._log4j_properties())
        # Kafka 4.x also has log4j2 on the classpath (for its log-level admin API); an empty log4j2 config
        # stops it complaining "No configuration found" into kafka.out. Logging itself goes via reload4j.
        (self.data_dir / "log4j2.properties").write_text("status = off\nrootLogger.level = warn\n")
        return props

    def _java_cmd(self, jars: Path, main_class: str, *args: str) -> list[str]:
        extra = shlex.split(env.get(env.KAFKA_JVM_OPTS) or "")
        log4j = (self.data_dir / "log4j.properties").as_uri()
        return [
            _java_executable(),
            *JVM_OPTS,
            f"-Dlog4j.configuration={log4j}",
            f"-Dlog4j2.configurationFile={(self.data_dir / 'log4j2.properties').as_uri()}",
            f"-Dkafka.logs.dir={self.data_dir}",
            *extra,
            "-cp",
            f"{jars}{os.sep}*",
            main_class,
            *args,
        ]

    def _format_storage(self, jars: Path, props: Path) -> None:
        """Format `log.dirs` once (KRaft will not start on an unformatted directory)."""
        if (self.log_dir / "meta.properties").is_file():
            return
        cmd = self._java_cmd(
            jars, "kafka.tools.StorageTool", "format", "-t", _random_cluster_id(), "-c", str(props),
            "--ignore-formatted",
        )  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise KafkaBrokerError(
                f"formatting Kafka storage in {self.log_dir} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def _logs_tail(self) -> str:
        """The root cause first (a Java stack trace buries it, e.g. "Address already in use"), then tails."""
        try:
            causes = [line for line in self.log_file.read_text(errors="replace").splitlines() if "Caused by:" in line]
        except OSError:
            causes = []
        cause = f"root cause: {causes[-1].strip()}\n" if causes else ""
        return f"{cause}--- {self.log_file}:\n{_tail(self.log_file)}\n--- {self.out_file}:\n{_tail(self.out_file, 10)}"

    # -- lifecycle

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        """Start the broker and return once it serves metadata requests (or raise with the log tail)."""
        if self.running:
            return self
        jars = self._jars if self._jars is not None else fetch_kafka_jars()
        if not any(jars.glob("kafka_2.*.jar")):
            raise KafkaBrokerError(f"{jars} has no kafka_2.*.jar; run fetch_kafka_jars() first")
        if self.port is None:
            self.port = free_port()
        if self.controller_port is None:
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()
        props = self._write_config()
        self._format_storage(jars, props)
        started = time.monotonic()
        self._spawn(self._java_cmd(jars, "kafka.Kafka", str(props)), self.out_file)
        deadline = started + timeout
        while True:
            code = self._exited()
            if code is not None:
                raise KafkaBrokerError(
                    f"Kafka exited with code {code} while starting (port {self.port}).\n" + self._logs_tail()
                )
            if kafka_answers(self.bootstrap, timeout=1.0):
                break
            if time.monotonic() > deadline:
                self.kill()
                raise KafkaBrokerError(
                    f"Kafka did not answer on {self.bootstrap} within {timeout:.0f}s; killed it.\n" + self._logs_tail()
                )
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - started
        return self

    def restart(self, timeout: float = 90.0) -> KafkaBroker:
        """Stop (if running) and start again on the same ports and data."""
        self.stop()
        return self.start(timeout)

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        if self._proc is None:
            raise KafkaBrokerError("broker was never started")
        return super().wait()

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"KafkaBroker({self.data_dir}, port={self.port}, {state})"


# ------------------------------------------------------------------------------------------ CLI


def run_foreground(data_dir: Path, port: int, *, partitions: int = 4) -> int:
    """Run a broker until Ctrl-C or SIGTERM, then stop it cleanly; the exit code for `tracehouse kafka`."""
    broker = KafkaBroker(data_dir, port=port, partitions=partitions)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        broker.start()
        print(
            f"Apache Kafka {kafka_version()} (KRaft) listening on {broker.bootstrap} — started in "
            f"{broker.start_seconds:.1f}s; data in {broker.data_dir}, log in {broker.log_file}. "
            "Ctrl-C stops it.",
            flush=True,
        )
        code = broker.wait()
        print(f"tracehouse kafka: broker exited with code {code}\n{_tail(broker.log_file)}", file=sys.stderr)
        return code or 1
    except KafkaBrokerError as exc:
        print(f"tracehouse kafka: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping Kafka...", file=sys.stderr, flush=True)
        broker.stop()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    from tracehouse.core.config import Settings

    parser = argparse.ArgumentParser(
        prog="python -m tracehouse.infra.kafka_broker",
        description="Run a single-node Apache Kafka (KRaft) from jars fetched with Maven.",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $TRACEHOUSE_DATA_DIR/kafka")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--partitions", type=int, default=4, help="num.partitions for auto-created topics")
    parser.add_argument("--fetch-only", action="store_true", help="download the jars into the cache and exit")
    args = parser.parse_args(argv)
    if args.fetch_only:
        try:
            print(fetch_kafka_jars())
        except KafkaBrokerError as exc:
            print(f"tracehouse: {exc}", file=sys.stderr)
            return 1
        return 0
    data_dir = args.data_dir or Settings.from_env().data_dir / "kafka"
    return run_foreground(data_dir, args.port, partitions=args.partitions)


if __name__ == "__main__":
    sys.exit(main())
