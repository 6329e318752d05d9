"""Settings shared by every tracehouse process, from the `TRACEHOUSE_*` variables core/settings.py declares.

core/settings.py holds the names, defaults and parsing so the SDK, the worker, the sink and the CLI agree;
this is the connection-level view most processes need. CLI flags override by building a `Settings` with
explicit values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from tracehouse.core import settings as env
from tracehouse.core.secrets import clickhouse_tls_options
from tracehouse.core.topics import TopicSpec, topic_specs

# The defaults are declared with their variables in core/settings.py; these names are kept for importers.
DEFAULT_KAFKA_BOOTSTRAP: str = env.KAFKA_BOOTSTRAP.default  # type: ignore[assignment]
DEFAULT_CLICKHOUSE_URL: str = env.CLICKHOUSE_URL.default  # type: ignore[assignment]
DEFAULT_DATA_DIR = str(env.DATA_DIR.default)
CLICKHOUSE_USERS_FILE_ENV = env.CLICKHOUSE_USERS_FILE.name
CLICKHOUSE_USER_ENV = env.CLICKHOUSE_USER.name
# Health endpoints (`GET /health/live`, `/health/ready`) of the worker and the sink; 0 turns them off.
# Clear of the receiver (4318), the web UI (8787), ClickHouse (8123) and the sink's metrics (9464).
DEFAULT_WORKER_HEALTH_PORT: int = env.WORKER_HEALTH_PORT.default  # type: ignore[assignment]
DEFAULT_SINK_HEALTH_PORT: int = env.SINK_HEALTH_PORT.default  # type: ignore[assignment]
DEFAULT_HEALTH_HOST: str = env.WORKER_HEALTH_HOST.default  # type: ignore[assignment]


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
            kafka_bootstrap=env.get(env.KAFKA_BOOTSTRAP),
            clickhouse_url=env.get(env.CLICKHOUSE_URL),
            clickhouse_user=env.get(env.CLICKHOUSE_USER),
            clickhouse_password=env.get(env.CLICKHOUSE_PASSWORD),
            clickhouse_database=env.get(env.CLICKHOUSE_DATABASE),
            data_dir=env.get(env.DATA_DIR),
            service=env.get(env.SERVICE),
            spans_partitions=env.get(env.SPANS_PARTITIONS),
            worker_group=env.get(env.WORKER_GROUP),
            sink_group=env.get(env.SINK_GROUP),
            topic_replication_factor=env.get(env.TOPIC_REPLICATION_FACTOR),
            worker_health_host=env.get(env.WORKER_HEALTH_HOST),
            worker_health_port=env.get(env.WORKER_HEALTH_PORT),
            sink_health_host=env.get(env.SINK_HEALTH_HOST),
            sink_health_port=env.get(env.SINK_HEALTH_PORT),
        )  # type: ignore[arg-type]
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
