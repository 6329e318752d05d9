"""Settings shared by every tracehouse process, read from `TRACEHOUSE_*` environment variables.

One place defines the names and defaults so the SDK, the worker, the sink and the CLI agree; CLI flags
override by building a `Settings` with explicit values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from tracehouse.core.secrets import clickhouse_password, clickhouse_tls_options
from tracehouse.core.topics import TopicSpec, topic_specs

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLICKHOUSE_URL = "http://127.0.0.1:8123"
DEFAULT_DATA_DIR = "./.tracehouse"
# Users (passwords as SHA-256, readonly levels) of the embedded ClickHouse server, a TOML file; unset: any
# user. Read by `tracehouse clickhouse` (infra/clickhouse/access.py describes the file).
CLICKHOUSE_USERS_FILE_ENV = "TRACEHOUSE_CLICKHOUSE_USERS_FILE"
# The user the pipeline's processes connect as; its password: TRACEHOUSE_CLICKHOUSE_PASSWORD(_FILE), core/secrets.py
CLICKHOUSE_USER_ENV = "TRACEHOUSE_CLICKHOUSE_USER"
# Health endpoints (`GET /health/live`, `/health/ready`) of the worker and the sink; 0 turns them off.
# Clear of the receiver (4318), the web UI (8787), ClickHouse (8123) and the sink's metrics (9464).
DEFAULT_WORKER_HEALTH_PORT = 9465
DEFAULT_SINK_HEALTH_PORT = 9466
DEFAULT_HEALTH_HOST = "127.0.0.1"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where ClickHouse answers over HTTP, split into what clickhouse-connect wants."""

    host: str
    port: int
    secure: bool
    username: str
    password: str = field(repr=False)
    database: str

    @property
    def url(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def client_kwargs(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "secure": self.secure,
            "username": self.username,
            "password": self.password,
            **clickhouse_tls_options(self.secure),
        }


def parse_clickhouse_url(
    url: str, *, username: str | None = None, password: str | None = None, database: str | None = None
) -> ClickHouseTarget:
    """Parse `http(s)://user:pass@host:port/database`; explicit arguments win over the URL's parts."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"ClickHouse URL must be http:// or https://, got {url!r}")
    secure = parts.scheme == "https"
    db_from_path = parts.path.strip("/") or None
    return ClickHouseTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8443 if secure else 8123),
        secure=secure,
        username=username or parts.username or "default",
        password=password if password is not None else (parts.password or ""),
        database=database or db_from_path or "tracehouse",
    )


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; `Settings.from_env()` is the usual constructor."""

    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    clickhouse_url: str = DEFAULT_CLICKHOUSE_URL
    clickhouse_user: str | None = None
    clickhouse_password: str | None = field(default=None, repr=False)
    clickhouse_database: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR))
    service: str = "unknown_service"
    spans_partitions: int = 4
    worker_group: str = "tracehouse-worker"  # Faust app id = Kafka consumer group of the workers
    sink_group: str = "tracehouse-sink"
    # Replication of the topics `migrate` creates and of the worker's own (changelogs, partials): 3 in production.
    topic_replication_factor: int = 1
    worker_health_host: str = DEFAULT_HEALTH_HOST
    worker_health_port: int = DEFAULT_WORKER_HEALTH_PORT
    sink_health_host: str = DEFAULT_HEALTH_HOST
    sink_health_port: int = DEFAULT_SINK_HEALTH_PORT

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        base = cls(
            kafka_bootstrap=_env("TRACEHOUSE_KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP),
            clickhouse_url=_env("TRACEHOUSE_CLICKHOUSE_URL", DEFAULT_CLICKHOUSE_URL),
            clickhouse_user=os.environ.get(CLICKHOUSE_USER_ENV) or None,
            clickhouse_password=clickhouse_password(),
            clickhouse_database=os.environ.get("TRACEHOUSE_CLICKHOUSE_DATABASE") or None,
            data_dir=Path(_env("TRACEHOUSE_DATA_DIR", DEFAULT_DATA_DIR)),
            service=_env("TRACEHOUSE_SERVICE", _env("OTEL_SERVICE_NAME", "unknown_service")),
            spans_partitions=int(_env("TRACEHOUSE_SPANS_PARTITIONS", "4")),
            worker_group=_env("TRACEHOUSE_WORKER_GROUP", "tracehouse-worker"),
            sink_group=_env("TRACEHOUSE_SINK_GROUP", "tracehouse-sink"),
            topic_replication_factor=int(_env("TRACEHOUSE_TOPIC_REPLICATION_FACTOR", "1")),
            worker_health_host=_env("TRACEHOUSE_WORKER_HEALTH_HOST", DEFAULT_HEALTH_HOST),
            worker_health_port=int(_env("TRACEHOUSE_WORKER_HEALTH_PORT", str(DEFAULT_WORKER_HEALTH_PORT))),
            sink_health_host=_env("TRACEHOUSE_SINK_HEALTH_HOST", DEFAULT_HEALTH_HOST),
            sink_health_port=int(_env("TRACEHOUSE_SINK_HEALTH_PORT", str(DEFAULT_SINK_HEALTH_PORT))),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(given["data_dir"])  # type: ignore[arg-type]
        return replace(base, **given)  # type: ignore[arg-type]

    @property
    def clickhouse(self) -> ClickHouseTarget:
        return parse_clickhouse_url(
            self.clickhouse_url,
            username=self.clickhouse_user,
            password=self.clickhouse_password,
            database=self.clickhouse_database,
        )

    def topic_specs(self) -> tuple[TopicSpec, ...]:
        """The pipeline's topics as `migrate` creates them, from these settings."""
        return topic_specs(self.spans_partitions, self.topic_replication_factor)

    @property
    def clickhouse_data_dir(self) -> Path:
        return self.data_dir / "clickhouse"
