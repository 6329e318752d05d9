"""Every `TRACEHOUSE_*` setting, declared once: its variable, type, default and a line saying what it does.

This is the only module that reads `TRACEHOUSE_*` from the environment. The rest of the code asks it
(`settings.get(RECEIVER_ACK_TIMEOUT)`, or `get(setting, env)` with a mapping of its own, which tests use),
so the variable names, their defaults and their parsing live in one place, `tracehouse config` can show
each value with where it came from, the README's tables are rendered from the declarations
(`render_markdown()`), and the deployment tests check deploy/ against the registry instead of scanning code.

A value that does not parse is an error that names the variable and the value
(`TRACEHOUSE_RECEIVER_ACK_TIMEOUT='abc': expected a number of seconds`): starting with a default the
operator did not mean is worse than not starting. An empty variable counts as unset (compose files write
`VAR: ""` for "not given"). A setting declared with `file=True` may instead come from the file named by
`NAME_FILE` (the Docker / Kubernetes way to pass a secret), through `secret()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "REGISTRY",
    "SECTIONS",
    "Kind",
    "SecretError",
    "Setting",
    "SettingError",
    "SettingValue",
    "declared_names",
    "describe",
    "environ",
    "get",
    "is_set",
    "raw",
    "render_markdown",
    "secret",
]

T = TypeVar("T")
Env = Mapping[str, str]
Origin = Literal["default", "environment", "file", "command line"]
MASK = "***"


class SettingError(ValueError):
    """A setting's value does not parse; the message names the variable and the value."""


class SecretError(SettingError):
    """A secret is configured wrongly (both forms set, file unreadable). The message names the variables
    and the file path, never the value."""


def environ(env: Env | None = None) -> Env:
    """The mapping settings are read from: `env` when given (tests, a child's environment), else the process's."""
    return os.environ if env is None else env


def secret(name: str, env: Env | None = None, *, default: str | None = None) -> str | None:
    """The value of `name`, else the contents of the file named by `name + "_FILE"`, else `default`.

    An empty variable counts as unset. Raises SecretError when both are set or the file cannot be read:
    starting without a credential the operator meant to give would only fail later, less clearly. One
    trailing newline is dropped from a file (editors and `echo` add one); nothing else is stripped, since
    spaces can be part of a password.
    """
    source = environ(env)
    file_var = f"{name}_FILE"
    value = source.get(name) or None
    path = source.get(file_var) or None
    if value is not None and path is not None:
        raise SecretError(f"set {name} or {file_var}, not both")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"{file_var}={path}: cannot read the file ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise SecretError(f"{file_var}={path}: the file is not UTF-8 text") from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        return text
    return value if value is not None else default


# ---- kinds of value -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How a variable's text becomes a value: `parse` raises ValueError, and `expected` completes the
    sentence "expected ..." in the error."""

    label: str  # for the README table and `tracehouse config --json`
    expected: str
    parse: Callable[[str], T]
    show: Callable[[T], str] = str  # the value as one would write it in the environment


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _count(text: str) -> int:
    number = int(text.strip()) if text.strip().isascii() and text.strip().isdigit() else 0
    if number < 1:
        raise ValueError(text)
    return number


def _port(text: str) -> int:
    number = int(text)
    if not 0 <= number <= 65535:
        raise ValueError(text)
    return number


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


TEXT: Kind[str] = Kind("text", "text", str)
PATH: Kind[Path] = Kind("path", "a file or directory path", Path)
FLAG: Kind[bool] = Kind("flag", "1/0, true/false, yes/no or on/off", _flag, lambda v: "1" if v else "0")
INTEGER: Kind[int] = Kind("integer", "a whole number", int)
COUNT: Kind[int] = Kind("count", "a positive whole number", _count)
BYTES: Kind[int] = Kind("bytes", "a whole number of bytes", int)
PORT: Kind[int] = Kind("port", "a port number (0-65535)", _port)
SECONDS: Kind[float] = Kind("seconds", "a number of seconds", float, lambda v: f"{v:g}")
LIST: Kind[tuple[str, ...]] = Kind("list", "comma-separated values", _list, ",".join)


# ---- declarations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: what it holds and what it is for."""

    name: str
    section: str
    kind: Kind[T]
    default: T | None
    doc: str
    secret: bool = False  # masked by `tracehouse config`
    file: bool = False  # may come from the file named by NAME_FILE instead (see `secret`)
    fallback: str | None = None  # a non-tracehouse variable read when this one is unset (OTEL_SERVICE_NAME)


REGISTRY: dict[str, Setting[Any]] = {}
SECTIONS: dict[str, str] = {}  # title -> one line about the section, in the order declared
_section = ""


def _begin(title: str, about: str) -> None:
    global _section
    _section = title
    SECTIONS[title] = about


def _declare(
    name: str,
    kind: Kind[T],
    default: T | None,
    doc: str,
    *,
    secret: bool = False,
    file: bool = False,
    fallback: str | None = None,
) -> Setting[T]:
    full = f"TRACEHOUSE_{name}"
    if full in REGISTRY:
        raise RuntimeError(f"{full} is declared twice")
    setting = Setting(full, _section, kind, default, doc, secret=secret, file=file, fallback=fallback)
    REGISTRY[full] = setting
    return setting


_begin("Connection", "where Kafka and ClickHouse answer, and how to log in; every process reads these")
KAFKA_BOOTSTRAP = _declare("KAFKA_BOOTSTRAP", TEXT, "127.0.0.1:9092", "Kafka bootstrap servers, `host:port[,...]`")
KAFKA_SECURITY_PROTOCOL = _declare(
    "KAFKA_SECURITY_PROTOCOL", TEXT, "PLAINTEXT", "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`"
)
KAFKA_SASL_MECHANISM = _declare(
    "KAFKA_SASL_MECHANISM", TEXT, None, "`PLAIN` (the default with SASL), `SCRAM-SHA-256` or `SCRAM-SHA-512`"
)
KAFKA_SASL_USERNAME = _declare("KAFKA_SASL_USERNAME", TEXT, None, "the SASL user (required with SASL)", file=True)
KAFKA_SASL_PASSWORD = _declare(
    "KAFKA_SASL_PASSWORD", TEXT, None, "its password (required with SASL)", secret=True, file=True
)
KAFKA_SSL_CAFILE = _declare(
    "KAFKA_SSL_CAFILE", PATH, None, "PEM CA bundle that signed the brokers' certificates (default: the system CAs)"
)
KAFKA_SSL_CERTFILE = _declare("KAFKA_SSL_CERTFILE", PATH, None, "PEM client certificate, for mutual TLS")
KAFKA_SSL_KEYFILE = _declare(
    "KAFKA_SSL_KEYFILE", PATH, None, "PEM private key of that certificate (if not inside the certificate file)"
)
KAFKA_SSL_KEY_PASSWORD = _declare(
    "KAFKA_SSL_KEY_PASSWORD", TEXT, None, "password of an encrypted private key", secret=True, file=True
)
SPANS_PARTITIONS = _declare(
    "SPANS_PARTITIONS",
    COUNT,
    4,
    "partitions of `tracehouse.spans` and `tracehouse.traces`; every process must agree with the topic",
)
TOPIC_REPLICATION_FACTOR = _declare(
    "TOPIC_REPLICATION_FACTOR", COUNT, 1, "replication of every topic `migrate` creates (3 in production)"
)
CLICKHOUSE_URL = _declare(
    "CLICKHOUSE_URL",
    TEXT,
    "http://127.0.0.1:8123",
    "ClickHouse's HTTP interface, `http(s)://[user:password@]host:port[/database]`",
    secret=True,  # may hold a password; `tracehouse config` shows it redacted
)
CLICKHOUSE_USER = _declare("CLICKHOUSE_USER", TEXT, None, "the ClickHouse user (default: the URL's, else `default`)")
CLICKHOUSE_PASSWORD = _declare(
    "CLICKHOUSE_PASSWORD", TEXT, None, "its password (default: the URL's, else none)", secret=True, file=True
)
CLICKHOUSE_DATABASE = _declare(
    "CLICKHOUSE_DATABASE", TEXT, None, "the database (default: the URL's path, else `tracehouse`)"
)
CLICKHOUSE_CA = _declare(
    "CLICKHOUSE_CA", PATH, None, "PEM CA that signed ClickHouse's certificate (needs an `https://` URL)"
)
CLICKHOUSE_COMPRESS = _declare(
    "CLICKHOUSE_COMPRESS", FLAG, None, "lz4 between tracehouse and ClickHouse (unset: on unless the host is loopback)"
)
DATA_DIR = _declare("DATA_DIR", PATH, Path("./.tracehouse"), "local data of the embedded servers and the demo")

_begin("SDK", "the `tracehouse` Python SDK in an instrumented application")
SERVICE = _declare("SERVICE", TEXT, "unknown_service", "the service name on every span", fallback="OTEL_SERVICE_NAME")
DISABLED = _declare("DISABLED", FLAG, False, "1: the SDK records nothing and sends nothing (no-op mode)")
CAPTURE_IO = _declare("CAPTURE_IO", FLAG, True, "0: `@trace` does not record arguments and return values")
MAX_PAYLOAD_BYTES = _declare(
    "MAX_PAYLOAD_BYTES", BYTES, 32 * 1024, "longest input, output or message text kept; a marker replaces the rest"
)

_begin("Span limits", "how much of one span is kept, in the SDK and in the receiver (OpenTelemetry's names)")
SPAN_ATTRIBUTE_COUNT_LIMIT = _declare(
    "SPAN_ATTRIBUTE_COUNT_LIMIT",
    COUNT,
    1024,
    "attributes dropped; the first ones kept, plus `error.type`, `otel.*`, `tracehouse.*`",
)
SPAN_EVENT_COUNT_LIMIT = _declare(
    "SPAN_EVENT_COUNT_LIMIT", COUNT, 1024, "events dropped from the middle: the first and last halves kept"
)
EVENT_ATTRIBUTE_COUNT_LIMIT = _declare("EVENT_ATTRIBUTE_COUNT_LIMIT", COUNT, 128, "an event's attributes dropped")
SPAN_LINK_COUNT_LIMIT = _declare("SPAN_LINK_COUNT_LIMIT", COUNT, 128, "links dropped")

_begin("Receiver", "`tracehouse receiver`, the OTLP/HTTP endpoint")
RECEIVER_HOST = _declare("RECEIVER_HOST", TEXT, "127.0.0.1", "address to bind (`--host`)")
RECEIVER_PORT = _declare("RECEIVER_PORT", PORT, 4318, "port (`--port`)")
RECEIVER_TOKENS = _declare(
    "RECEIVER_TOKENS", LIST, (), "bearer tokens a request must carry one of (unset: no authentication)", secret=True
)
RECEIVER_TOKENS_FILE = _declare(
    "RECEIVER_TOKENS_FILE", PATH, None, "a file of more tokens, one per line (`#` comments ignored)"
)
RECEIVER_ACK_TIMEOUT = _declare(
    "RECEIVER_ACK_TIMEOUT", SECONDS, 5.0, "seconds a request waits for Kafka's acknowledgement before a 503"
)
RECEIVER_MAX_PENDING_SPANS = _declare(
    "RECEIVER_MAX_PENDING_SPANS",
    COUNT,
    100_000,
    "spans accepted and not yet acknowledged; beyond this, 503 before the body is read",
)
RECEIVER_RETRY_AFTER = _declare("RECEIVER_RETRY_AFTER", INTEGER, 2, "the `Retry-After` of a 503, in seconds")
RECEIVER_HEADER_TIMEOUT = _declare(
    "RECEIVER_HEADER_TIMEOUT", SECONDS, 15.0, "seconds from connecting (or the last answer) to a complete request head"
)
RECEIVER_BODY_TIMEOUT = _declare("RECEIVER_BODY_TIMEOUT", SECONDS, 10.0, "the least time a body gets, in seconds ...")
RECEIVER_MIN_UPLOAD_RATE = _declare(
    "RECEIVER_MIN_UPLOAD_RATE", BYTES, 64 * 1024, "... plus its size at this many bytes/s; slower: 408"
)
RECEIVER_READ_BUDGET_BYTES = _declare(
    "RECEIVER_READ_BUDGET_BYTES", BYTES, 64 * 1024 * 1024, "bytes of request bodies held at once, all requests together"
)
RECEIVER_MAX_CONCURRENCY = _declare(
    "RECEIVER_MAX_CONCURRENCY", COUNT, 4, "bodies decoded at once; a slot is held only while decoding"
)
RECEIVER_OFFLOAD_BYTES = _declare(
    "RECEIVER_OFFLOAD_BYTES", BYTES, 128 * 1024, "bodies at least this big are decoded on a worker thread"
)
RECEIVER_MAX_BODY_BYTES = _declare(
    "RECEIVER_MAX_BODY_BYTES", BYTES, 20 * 1024 * 1024, "largest body as received (compressed); 413 above"
)
RECEIVER_MAX_DECOMPRESSED_BYTES = _declare(
    "RECEIVER_MAX_DECOMPRESSED_BYTES", BYTES, 64 * 1024 * 1024, "largest body once decompressed; 413 above"
)
RECEIVER_MAX_PAYLOAD_BYTES = _declare(
    "RECEIVER_MAX_PAYLOAD_BYTES", BYTES, 32 * 1024, "longest input, output or attribute text kept, as in the SDK"
)

_begin("Worker", "`tracehouse worker`, the stream processor (Faust)")
WORKER_GROUP = _declare(
    "WORKER_GROUP", TEXT, "tracehouse-worker", "Faust app id = the Kafka consumer group of the workers"
)
WORKER_HEALTH_HOST = _declare("WORKER_HEALTH_HOST", TEXT, "127.0.0.1", "address of `/health/live` and `/health/ready`")
WORKER_HEALTH_PORT = _declare("WORKER_HEALTH_PORT", PORT, 9465, "their port; 0 turns them off")
TRACE_QUIET_S = _declare(
    "TRACE_QUIET_S", SECONDS, 3.0, "a trace whose root has ended is emitted after this long without new spans"
)
TRACE_MAX_AGE_S = _declare("TRACE_MAX_AGE_S", SECONDS, 60.0, "... and any trace once it has been open this long")
TRACE_REVISION_S = _declare("TRACE_REVISION_S", SECONDS, 30.0, "late spans revise an emitted trace for this long")
MAX_OPEN_TRACES = _declare("MAX_OPEN_TRACES", COUNT, 100_000, "traces held open at once per worker")
CHECKPOINT_S = _declare("CHECKPOINT_S", SECONDS, 5.0, "seconds between checkpoints of the open traces")
PRICES = _declare(
    "PRICES",
    PATH,
    None,
    "a TOML file of model prices over the built-in table (worker, sink, `reprice`, `replay`; unset: built-in)",
)

_begin("Alerts", "the worker's alert rules and where alerts go")
ALERT_RULES = _declare("ALERT_RULES", PATH, None, "a TOML file of rules (see `deploy/alerts.toml`; unset: built-in)")
ALERT_WEBHOOK = _declare(
    "ALERT_WEBHOOK", TEXT, None, "URL each alert is POSTed to, as JSON (Slack-compatible)", secret=True
)
SAMPLING = _declare(
    "SAMPLING",
    FLAG,
    False,
    "1: tail sampling (worker and sink): spans of traces the `[sampling]` rules drop are not stored",
)

_begin("Sink", "`tracehouse sink`, Kafka to ClickHouse")
SINK_GROUP = _declare("SINK_GROUP", TEXT, "tracehouse-sink", "the Kafka consumer group of the sinks")
SINK_HEALTH_HOST = _declare("SINK_HEALTH_HOST", TEXT, "127.0.0.1", "address of `/health/live` and `/health/ready`")
SINK_HEALTH_PORT = _declare("SINK_HEALTH_PORT", PORT, 9466, "their port; 0 turns them off")
SINK_METRICS_HOST = _declare(
    "SINK_METRICS_HOST", TEXT, "127.0.0.1", "address of Prometheus `/metrics` (`0.0.0.0` so Prometheus can reach it)"
)
SINK_METRICS_PORT = _declare("SINK_METRICS_PORT", PORT, 0, "its port (`--metrics-port`); 0: no endpoint")
SINK_INSERT_LANES = _declare(
    "SINK_INSERT_LANES", COUNT, 2, "concurrent inserts under a backlog, each for its share of the partitions"
)
FAULT_EXIT_BEFORE_COMMIT = _declare(
    "FAULT_EXIT_BEFORE_COMMIT",
    INTEGER,
    None,
    "tests only: exit as if killed after inserting this many batches of spans, before committing the last",
)

_begin("Web", "`tracehouse web`, the trace explorer")
WEB_HOST = _declare("WEB_HOST", TEXT, "127.0.0.1", "address to bind (`--host`)")
WEB_PORT = _declare("WEB_PORT", PORT, 8787, "port (`--port`; 0 for any free one)")
WEB_WRITES = _declare("WEB_WRITES", FLAG, False, "1: anyone who can reach the explorer may post scores")
WEB_WRITE_TOKEN = _declare(
    "WEB_WRITE_TOKEN", LIST, (), "writes need `Authorization: Bearer <one of these>` (turns writes on)", secret=True
)

_begin("Embedded servers", "`tracehouse up`, `clickhouse` and `kafka`: the local development stack")
CLICKHOUSE_USERS_FILE = _declare(
    "CLICKHOUSE_USERS_FILE", PATH, None, "TOML file of the embedded ClickHouse's users (unset: any user)"
)
KAFKA_VERSION = _declare("KAFKA_VERSION", TEXT, None, "the Kafka version to run (default: pinned in `kafka/pom.xml`)")
KAFKA_JARS = _declare(
    "KAFKA_JARS", PATH, None, "a directory of Kafka jars (default: `~/.cache/tracehouse/kafka-<version>/`)"
)
KAFKA_JVM_OPTS = _declare("KAFKA_JVM_OPTS", TEXT, "", "extra JVM flags for the broker, e.g. `-Xmx2g`")


# ---- reading ------------------------------------------------------------------------------------


def raw(setting: Setting[Any], env: Env | None = None) -> str | None:
    """The variable's text, or None when unset or empty."""
    return environ(env).get(setting.name) or None


def is_set(setting: Setting[Any], env: Env | None = None) -> bool:
    """Whether the variable (or its `_FILE`, or its fallback) gives a value."""
    return _origin(setting, environ(env))[0] != "default"


def _origin(setting: Setting[Any], source: Env) -> tuple[Origin, str | None]:
    if source.get(setting.name):
        return "environment", setting.name
    if setting.file and source.get(f"{setting.name}_FILE"):
        return "file", f"{setting.name}_FILE"
    if setting.fallback and source.get(setting.fallback):
        return "environment", setting.fallback
    return "default", None


def get(setting: Setting[T], env: Env | None = None) -> T | None:
    """The setting's value from `env` (default: the process environment), else its default.

    Raises SettingError (SecretError for a `_FILE` problem) naming the variable and the value."""
    source = environ(env)
    _, name = _origin(setting, source)
    if name is None:
        return setting.default
    text = secret(setting.name, source) if setting.file else source[name]
    assert text is not None
    try:
        return setting.kind.parse(text)
    except ValueError:
        shown = MASK if setting.secret else repr(text)
        raise SettingError(f"{name}={shown}: expected {setting.kind.expected}") from None


def declared_names() -> set[str]:
    """Every variable tracehouse reads: each setting's name, and NAME_FILE where a file may stand in."""
    names = set(REGISTRY)
    names.update(f"{s.name}_FILE" for s in REGISTRY.values() if s.file)
    return names


def by_section() -> Iterator[tuple[str, list[Setting[Any]]]]:
    for title in SECTIONS:
        yield title, [s for s in REGISTRY.values() if s.section == title]


# ---- showing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingValue:
    """One setting as `tracehouse config` shows it."""

    setting: Setting[Any]
    value: str | None  # as written in the environment; secrets masked; None: unset, no default
    origin: Origin
    error: str | None = None  # the value did not parse

    def to_dict(self) -> dict[str, Any]:
        s = self.setting
        return {
            "section": s.section,
            "name": s.name,
            "value": self.value,
            "source": self.origin,
            "default": show_default(s),
            "type": s.kind.label,
            "doc": s.doc,
            **({"error": self.error} if self.error else {}),
        }


def _show(setting: Setting[Any], value: Any) -> str | None:
    if value is None:
        return None
    return setting.kind.show(value) or None  # an empty list or text reads as unset


def show_default(setting: Setting[Any]) -> str | None:
    return _show(setting, setting.default)


def describe(env: Env | None = None, flags: Mapping[str, str | None] | None = None) -> list[SettingValue]:
    """Every setting with its current value and where it came from, secrets masked. `flags` are values
    given on the command line (variable name -> value), which win over the environment."""
    from tracehouse.core.secrets import redact  # secrets imports this module

    given = {name: value for name, value in (flags or {}).items() if value not in (None, "")}
    source = {**environ(env), **given}
    out: list[SettingValue] = []
    for _, settings in by_section():
        for setting in settings:
            origin: Origin = "command line" if setting.name in given else _origin(setting, source)[0]
            try:
                value = _show(setting, get(setting, source))
            except SettingError as exc:
                text = MASK if setting.secret else source.get(setting.name)
                out.append(SettingValue(setting, text, origin, str(exc)))
                continue
            if setting.secret and origin != "default" and value:
                value = redact(value) if setting is CLICKHOUSE_URL else MASK
            out.append(SettingValue(setting, value, origin))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The README's settings tables: one per section, in the order declared."""
    lines: list[str] = []
    for title, settings in by_section():
        if lines:
            lines.append("")
        lines.append(f"**{title}**: {SECTIONS[title]}.")
        lines.append("")
        lines.append("| Variable | Default | What it does |")
        lines.append("|---|---|---|")
        for s in settings:
            name = f"`{s.name}` / `_FILE`" if s.file else f"`{s.name}`"
            default = show_default(s)
            shown = f"`{default}`" if default else "unset"
            if s.fallback:
                shown += f" (or `${s.fallback}`)"
            lines.append(f"| {name} | {_cell(shown)} | {_cell(s.doc)} |")
    return "\n".join(lines) + "\n"
