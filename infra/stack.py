"""The local stack behind `tracehouse up` and `tracehouse demo`: start what is missing, stop what we started.

Whatever already answers at `TRACEHOUSE_KAFKA_BOOTSTRAP` and `TRACEHOUSE_CLICKHOUSE_URL` is used as it is
(a production-like setup, or a broker and server you run yourself). What does not answer is started
embedded on that address: the noida-db Kafka broker (pip-installed, starts in well under a second, no JVM)
and the real ClickHouse engine behind ClickHouse's HTTP interface. Then topics and schema are made
idempotently, and the worker and the sink run as child processes, as they would in production.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracehouse.core import settings as setting_vars
from tracehouse.core.config import CLICKHOUSE_USER_ENV, Settings
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.secrets import CLICKHOUSE_PASSWORD_ENV
from tracehouse.core.topic_admin import TopicAdminError, ensure_topics
from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse, clickhouse_answers, ensure_clickhouse
from tracehouse.infra.clickhouse.local_users import WRITER, local_users
from tracehouse.infra.kafka_broker import kafka_answers
from tracehouse.infra.noida_broker import NoidaKafka
from tracehouse.infra.processes import ManagedProcess

log = logging.getLogger("tracehouse.stack")

_USER_ENV = CLICKHOUSE_USER_ENV
_PASSWORD_FILE_ENV = f"{CLICKHOUSE_PASSWORD_ENV}_FILE"  # a secret may come from a file (core/secrets.py)


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


@dataclass
class LocalStack:
    """Everything a local run needs, in start order; `stop()` undoes it in reverse."""

    settings: Settings
    partitions: int | None = None
    with_worker: bool = True
    with_sink: bool = True
    with_receiver: bool = False
    with_web: bool = False
    started: list[str] = field(default_factory=list)
    clickhouse: EmbeddedClickHouse | None = None
    kafka: NoidaKafka | None = None
    worker: ManagedProcess | None = None
    sink: ManagedProcess | None = None
    receiver: ManagedProcess | None = None
    web: ManagedProcess | None = None
    password_file: Path | None = None  # the writer's, when this stack gave the embedded server its users

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def start(self) -> LocalStack:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not clickhouse_answers(settings.clickhouse_url):
            users_file = None
            if not setting_vars.is_set(setting_vars.CLICKHOUSE_USERS_FILE) and settings.clickhouse_user is None:
                users_file, self.password_file = local_users(settings.data_dir)
                password = self.password_file.read_text().strip()
                self.settings = settings = replace(settings, clickhouse_user=WRITER, clickhouse_password=password)
            self.clickhouse = ensure_clickhouse(settings.clickhouse_url, settings.clickhouse_data_dir, users_file)
        if self.clickhouse is not None:
            self.started.append(f"ClickHouse (embedded engine) at {self.clickhouse.url}")
        if not kafka_answers(settings.kafka_bootstrap):
            _, port = _host_port(settings.kafka_bootstrap)
            self.kafka = NoidaKafka(settings.data_dir / "kafka", port=port)
            self.kafka.start()
            self.started.append(f"Kafka (noida-db) at {self.kafka.bootstrap}")
            self.settings = settings = replace(settings, kafka_bootstrap=self.kafka.bootstrap)
        partitions = self.partitions or settings.spans_partitions
        try:
            asyncio.run(self._prepare(partitions))
        except TopicAdminError as exc:  # e.g. existing topics with another partition count: say what to do
            self.stop()
            raise SystemExit(f"tracehouse: {exc}") from None
        env = self.child_env()
        if self.with_worker:
            self.worker = ManagedProcess("worker", ["worker"], self.log_dir, env).start()
        if self.with_sink:
            self.sink = ManagedProcess("sink", ["sink"], self.log_dir, env).start()
        if self.with_receiver:
            self.receiver = ManagedProcess("receiver", ["receiver"], self.log_dir, env).start()
        if self.with_web:  # reads as the read-only default user: the explorer writes scores through Kafka
            reader_env = {k: v for k, v in env.items() if k not in (_USER_ENV, _PASSWORD_FILE_ENV)}
            self.web = ManagedProcess("web", ["web"], self.log_dir, reader_env).start()
        for proc in self.children:
            if not proc.wait_for_log("started", timeout=60):
                tail = proc.log_tail()
                self.stop()
                raise RuntimeError(f"{proc.name} did not start; its log ({proc.log_path}):\n{tail}")
        return self

    async def _prepare(self, partitions: int) -> None:
        from tracehouse.sinks.migrate import migrate

        specs = replace(self.settings, spans_partitions=partitions).topic_specs()
        await ensure_topics(self.settings.kafka_bootstrap, specs, security=kafka_client_options())
        await migrate(self.settings.clickhouse)

    def child_env(self) -> dict[str, str]:
        s = self.settings
        return {
            setting_vars.KAFKA_BOOTSTRAP.name: s.kafka_bootstrap,
            setting_vars.CLICKHOUSE_URL.name: s.clickhouse_url,
            setting_vars.CLICKHOUSE_DATABASE.name: s.clickhouse.database,
            setting_vars.DATA_DIR.name: str(s.data_dir),
            setting_vars.WORKER_GROUP.name: s.worker_group,
            setting_vars.SINK_GROUP.name: s.sink_group,
            setting_vars.SPANS_PARTITIONS.name: str(self.partitions or s.spans_partitions),
            **({_USER_ENV: WRITER, _PASSWORD_FILE_ENV: str(self.password_file)} if self.password_file else {}),
        }

    @property
    def children(self) -> list[ManagedProcess]:
        return [p for p in (self.worker, self.sink, self.receiver, self.web) if p is not None]

    def check(self) -> None:
        """Raise when a child process died: a stack with a dead part must not pretend to run."""
        for proc in self.children:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited; its log ({proc.log_path}):\n{proc.log_tail()}")

    def stop(self) -> None:
        for proc in self.children:
            proc.stop()
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None
        if self.clickhouse is not None:
            self.clickhouse.stop()
            self.clickhouse = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_up(settings: Settings, *, partitions: int | None = None) -> int:
    """`tracehouse up`: run the stack in the foreground until Ctrl-C or SIGTERM."""
    from rich.console import Console

    console = Console(stderr=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with console.status("starting the local stack..."):
        stack = LocalStack(settings, partitions=partitions, with_receiver=True, with_web=True).start()
    try:
        for line in stack.started:
            console.print(f"[green]started[/] {line}")
        s = stack.settings
        console.print(f"Kafka:      {s.kafka_bootstrap}")
        console.print(f"ClickHouse: {s.clickhouse_url}  (database {s.clickhouse.database})")
        receiver_port = setting_vars.get(setting_vars.RECEIVER_PORT)
        web_port = setting_vars.get(setting_vars.WEB_PORT)
        console.print(f"OTLP/HTTP:  http://127.0.0.1:{receiver_port}/v1/traces (receiver)")
        console.print(f"explorer:   http://127.0.0.1:{web_port}/ (web)")
        console.print(f"logs:       {stack.log_dir}")
        console.print("send spans with the SDK or OTLP/HTTP; query with any ClickHouse client. Ctrl-C stops.")
        while not stopping:
            stack.check()
            time.sleep(0.5)
    finally:
        with console.status("stopping..."):
            stack.stop()
    console.print("stopped.")
    return 0
