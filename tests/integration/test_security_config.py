"""Production security settings: Kafka TLS/SASL from `TRACEHOUSE_KAFKA_*`, secrets from `*_FILE`, redaction,
ClickHouse CA verification; and one real broker with SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).

The real broker is the project's KafkaBroker (Apache Kafka in KRaft mode from jars) with an extra
SASL_PLAINTEXT listener: `server_properties()` is meant to be extended, and SCRAM credentials are created
when the storage is formatted (`kafka-storage format --add-scram`), as on a production KRaft cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracehouse.core.kafka_security import (
    KafkaSecurity,
    KafkaSecurityError,
    faust_broker_credentials,
    kafka_client_options,
    kafka_security,
)
from tracehouse.core.schema import Span
from tracehouse.core.secrets import (
    RedactingFilter,
    SecretError,
    clickhouse_password,
    clickhouse_tls_options,
    redact,
    secret,
)
from tracehouse.producers.traffic import TraceFactory, TrafficOptions

PROTOCOL = "TRACEHOUSE_KAFKA_SECURITY_PROTOCOL"
MECHANISM = "TRACEHOUSE_KAFKA_SASL_MECHANISM"
USERNAME = "TRACEHOUSE_KAFKA_SASL_USERNAME"
PASSWORD = "TRACEHOUSE_KAFKA_SASL_PASSWORD"
CAFILE = "TRACEHOUSE_KAFKA_SSL_CAFILE"
CERTFILE = "TRACEHOUSE_KAFKA_SSL_CERTFILE"
KEYFILE = "TRACEHOUSE_KAFKA_SSL_KEYFILE"
KEY_PASSWORD = "TRACEHOUSE_KAFKA_SSL_KEY_PASSWORD"
SECRET_VALUE = "s3cr3t-Pa55word"


# ---- certificates (openssl) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a client certificate signed by it (key unencrypted and encrypted)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=tracehouse-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=tracehouse-client")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.crt", "-days", "2")  # fmt: skip
    run("pkey", "-in", "client.key", "-aes256", "-passout", "pass:key-pass", "-out", "client-enc.key")
    return {
        "ca": d / "ca.crt",
        "cert": d / "client.crt",
        "key": d / "client.key",
        "key_encrypted": d / "client-enc.key",
    }


def sasl_env(**extra: str) -> dict[str, str]:
    env = {PROTOCOL: "SASL_PLAINTEXT", USERNAME: "alice", PASSWORD: SECRET_VALUE}
    env.update(extra)
    return env


# ---- Kafka security: parsing ---------------------------------------------------------------------


def test_nothing_set_is_plaintext() -> None:
    security = kafka_security({})
    assert security.protocol == "PLAINTEXT"
    assert kafka_client_options({}) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials({}) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_mechanisms(mechanism: str) -> None:
    options = kafka_client_options(sasl_env(**{MECHANISM: mechanism}))
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET_VALUE,
    }


def test_sasl_mechanism_defaults_to_plain_and_input_is_normalised() -> None:
    assert kafka_client_options(sasl_env())["sasl_mechanism"] == "PLAIN"
    options = kafka_client_options(sasl_env(**{PROTOCOL: " sasl-plaintext ", MECHANISM: "scram_sha_512"}))
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"


def test_sasl_ssl_with_ca_file_verifies_the_broker(pki: dict[str, Path]) -> None:
    env = sasl_env(**{PROTOCOL: "SASL_SSL", MECHANISM: "SCRAM-SHA-512", CAFILE: str(pki["ca"])})
    options = kafka_client_options(env)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(c.get("subject") == ((("commonName", "tracehouse-test-ca"),),) for c in context.get_ca_certs())


def test_ssl_without_ca_uses_the_system_cas() -> None:
    options = kafka_client_options({PROTOCOL: "SSL"})
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_client_certificate(pki: dict[str, Path]) -> None:
    env = {PROTOCOL: "SSL", CAFILE: str(pki["ca"]), CERTFILE: str(pki["cert"]), KEYFILE: str(pki["key"])}
    assert isinstance(kafka_client_options(env)["ssl_context"], ssl.SSLContext)
    encrypted = {**env, KEYFILE: str(pki["key_encrypted"]), KEY_PASSWORD: "key-pass"}
    assert isinstance(kafka_client_options(encrypted)["ssl_context"], ssl.SSLContext)
    with pytest.raises(KafkaSecurityError, match="cannot load") as wrong:
        kafka_client_options({**encrypted, KEY_PASSWORD: "not-the-key-pass"})
    assert "not-the-key-pass" not in str(wrong.value)


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "password").write_text(SECRET_VALUE + "\n")
    (tmp_path / "user").write_text("alice\r\n")
    env = {
        PROTOCOL: "SASL_PLAINTEXT",
        f"{USERNAME}_FILE": str(tmp_path / "user"),
        f"{PASSWORD}_FILE": str(tmp_path / "password"),
    }
    options = kafka_client_options(env)
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == SECRET_VALUE


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({PROTOCOL: "SASL_SSL", PASSWORD: SECRET_VALUE}, f"needs {USERNAME}"),
        ({PROTOCOL: "SASL_PLAINTEXT", USERNAME: "alice"}, f"needs {PASSWORD}"),
        ({PROTOCOL: "TLS"}, "is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        (sasl_env(**{MECHANISM: "GSSAPI"}), "'GSSAPI' is not supported"),
        (sasl_env(**{MECHANISM: "OAUTHBEARER"}), "'OAUTHBEARER' is not supported"),
        ({USERNAME: "alice", PASSWORD: SECRET_VALUE}, "does not use SASL (set it to SASL_SSL or SASL_PLAINTEXT)"),
        ({PROTOCOL: "SSL", MECHANISM: "PLAIN"}, "does not use SASL (set it to SASL_SSL)"),
        ({CAFILE: "/etc/hosts"}, "does not use TLS (set it to SSL)"),
        (sasl_env(**{CAFILE: "/etc/hosts"}), "does not use TLS (set it to SASL_SSL)"),
        ({PROTOCOL: "SSL", KEYFILE: "/etc/hosts"}, f"{KEYFILE} needs {CERTFILE}"),
        ({PROTOCOL: "SSL", KEY_PASSWORD: "x"}, f"{KEY_PASSWORD} set without"),
        ({PROTOCOL: "SSL", CAFILE: "/nonexistent/ca.pem"}, f"{CAFILE}=/nonexistent/ca.pem: no such file"),
        (sasl_env(**{PASSWORD: "", f"{PASSWORD}_FILE": "/nonexistent/pw"}), f"{PASSWORD}_FILE=/nonexistent/pw"),
        (sasl_env(**{f"{PASSWORD}_FILE": "/etc/hosts"}), f"set {PASSWORD} or {PASSWORD}_FILE, not both"),
    ],
)
def test_configuration_errors_are_clear_and_never_show_the_password(env: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSecurityError) as error:
        kafka_security(env)
    assert message in str(error.value)
    assert SECRET_VALUE not in str(error.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(KafkaSecurityError) as error:
        kafka_security({PROTOCOL: "SASL_SSL", CAFILE: "/nonexistent/ca.pem"})
    text = str(error.value)
    assert f"needs {USERNAME}" in text and f"needs {PASSWORD}" in text and "no such file" in text


def test_repr_and_describe_hide_the_password(pki: dict[str, Path]) -> None:
    security = kafka_security(sasl_env(**{PROTOCOL: "SASL_SSL", MECHANISM: "SCRAM-SHA-256", CAFILE: str(pki["ca"])}))
    assert SECRET_VALUE not in repr(security)
    assert security.describe() == f"SASL_SSL (SCRAM-SHA-256 as alice, CA {pki['ca']})"
    assert KafkaSecurity().describe() == "PLAINTEXT"


def test_faust_credentials_match_the_aiokafka_options(pki: dict[str, Path]) -> None:
    """Faust turns broker_credentials into aiokafka arguments itself; they must equal ours."""
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    cases = [
        sasl_env(),
        sasl_env(**{MECHANISM: "SCRAM-SHA-256"}),
        sasl_env(**{PROTOCOL: "SASL_SSL", MECHANISM: "SCRAM-SHA-512", CAFILE: str(pki["ca"])}),
        {PROTOCOL: "SSL", CAFILE: str(pki["ca"])},
    ]
    for env in cases:
        credentials = faust_broker_credentials(env)
        expected_type = faust.SSLCredentials if env[PROTOCOL] == "SSL" else faust.SASLCredentials
        assert isinstance(credentials, expected_type)
        from_faust = credentials_to_aiokafka_auth(credentials)
        ours = kafka_client_options(env)
        assert set(from_faust) >= set(ours), env
        for key, value in ours.items():
            if key == "ssl_context":
                assert isinstance(from_faust[key], ssl.SSLContext)
            else:
                assert from_faust[key] == value, (env, key)
        if "ssl_context" not in ours:
            assert from_faust.get("ssl_context") is None


# ---- secrets and redaction -----------------------------------------------------------------------


def test_secret_reads_the_variable_or_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("with trailing space \n\n")
    assert secret("X", {}) is None
    assert secret("X", {}, default="d") == "d"
    assert secret("X", {"X": ""}, default="d") == "d"  # empty counts as unset
    assert secret("X", {"X": "value"}) == "value"
    assert secret("X", {"X_FILE": str(path)}) == "with trailing space \n"  # one newline dropped, nothing else
    with pytest.raises(SecretError, match="set X or X_FILE, not both"):
        secret("X", {"X": "a", "X_FILE": str(path)})
    with pytest.raises(SecretError, match="X_FILE=/nonexistent/secret: cannot read the file"):
        secret("X", {"X_FILE": "/nonexistent/secret"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pass@host:8443/db", "https://user:***@host:8443/db"),
        ("connecting to http://default:p%40ss@ch:8123 failed", "connecting to http://default:***@ch:8123 failed"),
        ("https://u:p@ss@host/", "https://u:***@host/"),
        ("https://user@host:8443", "https://user@host:8443"),  # no password: nothing to hide
        ("http://host:8123/?user=x&password=hunter2&db=t", "http://host:8123/?user=x&password=***&db=t"),
        ("kafka a:9092,b:9092 and clickhouse https://a:b@c", "kafka a:9092,b:9092 and clickhouse https://a:***@c"),
        ("token=abc123 secret=xyz", "token=*** secret=***"),
        ("plain text", "plain text"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_known_values_and_filter_on_a_logger() -> None:
    assert redact(f"login failed for {SECRET_VALUE}", [SECRET_VALUE]) == "login failed for ***"
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger(f"tracehouse.test.redact.{uuid.uuid4().hex}")
    logger.propagate = False
    handler = Capture()
    logger.addHandler(handler)
    logger.addFilter(RedactingFilter([SECRET_VALUE]))
    logger.warning("clickhouse %s unavailable", "https://tracehouse:hunter22@ch:8443")
    try:
        raise RuntimeError(f"auth failed with {SECRET_VALUE}")
    except RuntimeError:
        logger.exception("insert failed")
    text = "\n".join(records)
    assert "https://tracehouse:***@ch:8443" in text
    assert "hunter22" not in text and SECRET_VALUE not in text
    assert "RuntimeError: auth failed with ***" in text


def test_clickhouse_password_and_ca(tmp_path: Path, pki: dict[str, Path]) -> None:
    (tmp_path / "pw").write_text("ch-password\n")
    assert clickhouse_password({}) is None
    assert clickhouse_password({"TRACEHOUSE_CLICKHOUSE_PASSWORD": "a"}) == "a"
    assert clickhouse_password({"TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "pw")}) == "ch-password"
    assert clickhouse_tls_options(True, {}) == {}
    ca = str(pki["ca"])
    assert clickhouse_tls_options(True, {"TRACEHOUSE_CLICKHOUSE_CA": ca}) == {"ca_cert": ca, "verify": True}
    with pytest.raises(SecretError, match="URL is http://"):
        clickhouse_tls_options(False, {"TRACEHOUSE_CLICKHOUSE_CA": ca})
    with pytest.raises(SecretError, match="no such file"):
        clickhouse_tls_options(True, {"TRACEHOUSE_CLICKHOUSE_CA": "/nonexistent/ca.pem"})
    # The keyword arguments are clickhouse-connect's own.
    from clickhouse_connect.driver.httpclient import HttpClient

    parameters = inspect.signature(HttpClient.__init__).parameters
    assert "ca_cert" in parameters and "verify" in parameters


# ---- wiring into the processes (fails until the call sites use the functions above) ---------------


def test_settings_read_the_clickhouse_password_file_and_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    from tracehouse.core.config import Settings

    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.delenv("TRACEHOUSE_CLICKHOUSE_PASSWORD", raising=False)
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_URL", "https://tracehouse@ch.example:8443")
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_CA", str(pki["ca"]))
    target = Settings.from_env().clickhouse
    assert target.password == "from-a-file"
    kwargs = target.client_kwargs()
    assert kwargs["ca_cert"] == str(pki["ca"]) and kwargs["verify"] is True
    assert "from-a-file" not in repr(Settings.from_env())


def test_span_transport_and_worker_use_the_kafka_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracehouse.core.config import Settings
    from tracehouse.pipeline.app import create_app
    from tracehouse.producers.transport import SpanTransport

    for key, value in sasl_env(**{MECHANISM: "SCRAM-SHA-256"}).items():
        monkeypatch.setenv(key, value)
    transport = SpanTransport("127.0.0.1:1")
    try:
        assert transport.producer_options["security_protocol"] == "SASL_PLAINTEXT"
        assert transport.producer_options["sasl_mechanism"] == "SCRAM-SHA-256"
    finally:
        transport.shutdown(timeout=0.1)
    import faust

    app = create_app(Settings.from_env(kafka_bootstrap="127.0.0.1:1"))
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "alice" and credentials.mechanism.value == "SCRAM-SHA-256"


# ---- a real broker with SASL ----------------------------------------------------------------------

USERS = {"alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Apache Kafka (KRaft) with a SASL_PLAINTEXT listener accepting PLAIN and SCRAM-SHA-256/512."""
    from tracehouse.infra.kafka_broker import KafkaBroker, KafkaBrokerError, _random_cluster_id
    from tracehouse.infra.ports import free_port

    class SaslBroker(KafkaBroker):
        sasl_port: int | None = None

        def server_properties(self) -> dict[str, str]:
            props = super().server_properties()
            if self.sasl_port is None:
                self.sasl_port = free_port()
            sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            # The PLAINTEXT listener stays: KafkaBroker.start() probes it, and brokers talk over it.
            props["listeners"] += f",{sasl}"
            props["advertised.listeners"] += f",{sasl}"
            props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            props["sasl.enabled.mechanisms"] = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
            users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
            props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            )
            for mechanism in ("scram-sha-256", "scram-sha-512"):
                props[f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
            return props

        def _format_storage(self, jars: Path, props: Path) -> None:
            """Format with SCRAM credentials, as `kafka-storage format --add-scram` does on a KRaft cluster."""
            if (self.log_dir / "meta.properties").is_file():
                return
            scram = []
            for name, password in USERS.items():
                for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                    scram += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
            cmd = self._java_cmd(
                jars, "kafka.tools.StorageTool", "format", "-t", _random_cluster_id(), "-c", str(props),
                "--ignore-formatted", *scram,
            )  # fmt: skip
            result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
            if result.returncode != 0:
                raise KafkaBrokerError(f"formatting with SCRAM users failed:\n{result.stdout}{result.stderr}")

    broker = SaslBroker(tmp_path_factory.mktemp("kafka-sasl"), partitions=1)
    broker.start()
    try:
        yield f"127.0.0.1:{broker.sasl_port}"
    finally:
        broker.stop()


async def _roundtrip(bootstrap: str, options: dict[str, object]) -> bytes:
    """Create a topic (admin client), produce and consume one message, all with `options`."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over sasl")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **options)
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), 30)
        return message.value
    finally:
        await consumer.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_real_broker_accepts_sasl_clients(sasl_bootstrap: str, mechanism: str, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("bob-secret\n")
    env = {PROTOCOL: "SASL_PLAINTEXT", MECHANISM: mechanism, USERNAME: "bob", f"{PASSWORD}_FILE": str(tmp_path / "pw")}
    assert await _roundtrip(sasl_bootstrap, kafka_client_options(env)) == b"over sasl"


async def test_real_broker_with_faust_credentials(sasl_bootstrap: str) -> None:
    """The arguments Faust derives from broker_credentials authenticate too."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    options = credentials_to_aiokafka_auth(faust_broker_credentials(sasl_env(**{PASSWORD: "alice-secret"})))
    assert await _roundtrip(sasl_bootstrap, options) == b"over sasl"


async def test_real_broker_rejects_a_wrong_password(sasl_bootstrap: str) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    env = sasl_env(**{MECHANISM: "SCRAM-SHA-512", PASSWORD: "not-alice-secret"})
    producer = AIOKafkaProducer(bootstrap_servers=sasl_bootstrap, request_timeout_ms=5000, **kafka_client_options(env))
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


def test_real_broker_span_transport_over_sasl(sasl_bootstrap: str) -> None:
    """The SDK's transport, given the security options, delivers spans through the SASL listener."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from tracehouse.core.schema import decode_batch
    from tracehouse.producers.transport import SpanTransport

    options = kafka_client_options(sasl_env(**{MECHANISM: "SCRAM-SHA-256", PASSWORD: "alice-secret"}))
    topic = f"sasl-spans-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(sasl_bootstrap, topic, options))
    spans = _spans(10)
    transport = SpanTransport(sasl_bootstrap, topic=topic, producer_options=options)
    try:
        assert transport.submit_many(spans) == len(spans)
        assert transport.flush(timeout=60)
        assert transport.stats.sent == len(spans) and transport.stats.failed == 0
    finally:
        transport.shutdown(timeout=5)

    async def read() -> set[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=sasl_bootstrap, enable_auto_commit=False, **options)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            seen: set[str] = set()
            while len(seen) < len(spans):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for messages in batch.values():
                    for message in messages:
                        decoded, rejected = decode_batch(message.value)
                        assert not rejected
                        seen.update(s.span_id for s in decoded)
            return seen
        finally:
            await consumer.stop()

    assert asyncio.run(read()) == {s.span_id for s in spans}


async def _create_topic(bootstrap: str, topic: str, options: dict[str, object]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


def _spans(traces: int) -> list[Span]:
    factory = TraceFactory(TrafficOptions(seed=7, prompt_bytes=128))
    return [span for _ in range(traces) for span in factory.any()]
