"""Kafka security (TLS, SASL) from `TRACEHOUSE_KAFKA_*` variables, for aiokafka clients and for Faust.

Variables (all optional; nothing set means PLAINTEXT, as before):

| variable | values |
|---|---|
| `TRACEHOUSE_KAFKA_SECURITY_PROTOCOL` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` |
| `TRACEHOUSE_KAFKA_SASL_MECHANISM` | `PLAIN` (default with SASL), `SCRAM-SHA-256`, `SCRAM-SHA-512` |
| `TRACEHOUSE_KAFKA_SASL_USERNAME` / `_FILE` | the SASL user (required with SASL) |
| `TRACEHOUSE_KAFKA_SASL_PASSWORD` / `_FILE` | its password (required with SASL) |
| `TRACEHOUSE_KAFKA_SSL_CAFILE` | PEM CA bundle that signed the brokers' certificates (default: the system CAs) |
| `TRACEHOUSE_KAFKA_SSL_CERTFILE` | PEM client certificate, for mutual TLS |
| `TRACEHOUSE_KAFKA_SSL_KEYFILE` | PEM private key of that certificate (if not inside the certificate file) |
| `TRACEHOUSE_KAFKA_SSL_KEY_PASSWORD` / `_FILE` | password of an encrypted private key |

`kafka_client_options()` gives the keyword arguments for `AIOKafkaProducer`, `AIOKafkaConsumer` and
`AIOKafkaAdminClient` (`security_protocol`, `sasl_mechanism`, `sasl_plain_username`,
`sasl_plain_password`, `ssl_context`); `faust_broker_credentials()` gives the same as Faust's
`broker_credentials` (`faust.SASLCredentials` / `faust.SSLCredentials`, or None for PLAINTEXT). Both come
from one parsed `KafkaSecurity`, so the SDK, the receiver, the worker and the sink cannot disagree.

Configuration mistakes fail at start with a message naming the variable (never a secret's value):
SASL without a username, TLS files with a protocol that does not use TLS, an unknown mechanism, a CA
file that does not exist. TLS always verifies the broker's certificate and host name.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracehouse.core import settings
from tracehouse.core.settings import SecretError

__all__ = [
    "MECHANISMS",
    "PROTOCOLS",
    "KafkaSecurity",
    "KafkaSecurityError",
    "faust_broker_credentials",
    "kafka_client_options",
    "kafka_security",
]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# The variables are declared in core/settings.py; these names are what the messages below use.
PROTOCOL_ENV = settings.KAFKA_SECURITY_PROTOCOL.name
MECHANISM_ENV = settings.KAFKA_SASL_MECHANISM.name
USERNAME_ENV = settings.KAFKA_SASL_USERNAME.name
PASSWORD_ENV = settings.KAFKA_SASL_PASSWORD.name
CAFILE_ENV = settings.KAFKA_SSL_CAFILE.name
CERTFILE_ENV = settings.KAFKA_SSL_CERTFILE.name
KEYFILE_ENV = settings.KAFKA_SSL_KEYFILE.name
KEY_PASSWORD_ENV = settings.KAFKA_SSL_KEY_PASSWORD.name


class KafkaSecurityError(ValueError):
    """The Kafka security variables do not describe a usable configuration."""


@dataclass(frozen=True)
class KafkaSecurity:
    """A validated Kafka security configuration; build it with `KafkaSecurity.from_env()`."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = field(default=None, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Read and validate the `TRACEHOUSE_KAFKA_*` security variables; raises KafkaSecurityError."""
        try:
            username = settings.get(settings.KAFKA_SASL_USERNAME, env)
            password = settings.get(settings.KAFKA_SASL_PASSWORD, env)
            key_password = settings.get(settings.KAFKA_SSL_KEY_PASSWORD, env)
        except SecretError as exc:
            raise KafkaSecurityError(str(exc)) from None
        protocol = _normalise(settings.raw(settings.KAFKA_SECURITY_PROTOCOL, env)) or "PLAINTEXT"
        mechanism = (settings.raw(settings.KAFKA_SASL_MECHANISM, env) or "").strip().upper().replace("_", "-") or None
        security = cls(
            protocol=protocol,
            sasl_mechanism=mechanism,
            username=username,
            password=password,
            cafile=settings.raw(settings.KAFKA_SSL_CAFILE, env),
            certfile=settings.raw(settings.KAFKA_SSL_CERTFILE, env),
            keyfile=settings.raw(settings.KAFKA_SSL_KEYFILE, env),
            key_password=key_password,
        )
        security.validate()
        if security.uses_sasl and security.sasl_mechanism is None:
            security = replace(security, sasl_mechanism="PLAIN")
        return security

    def validate(self) -> None:
        """Raise KafkaSecurityError with every problem found, each naming its variable."""
        problems: list[str] = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"{PROTOCOL_ENV}={self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.uses_sasl:
            if self.sasl_mechanism is not None and self.sasl_mechanism not in MECHANISMS:
                problems.append(
                    f"{MECHANISM_ENV}={self.sasl_mechanism!r} is not supported; use one of {', '.join(MECHANISMS)}"
                )
            if not self.username:
                problems.append(f"{self.protocol} needs {USERNAME_ENV} (or {USERNAME_ENV}_FILE)")
            if not self.password:
                problems.append(f"{self.protocol} needs {PASSWORD_ENV} (or {PASSWORD_ENV}_FILE)")
        elif self.protocol in PROTOCOLS:
            given = [
                name
                for name, value in (
                    (MECHANISM_ENV, self.sasl_mechanism),
                    (USERNAME_ENV, self.username),
                    (PASSWORD_ENV, self.password),
                )
                if value
            ]
            if given:
                wanted = "SASL_SSL" if self.protocol == "SSL" else "SASL_SSL or SASL_PLAINTEXT"
                problems.append(
                    f"{', '.join(given)} set but {PROTOCOL_ENV}={self.protocol} does not use SASL (set it to {wanted})"
                )
        tls_files = self._tls_files()
        if self.key_password and not (self.keyfile or self.certfile):
            problems.append(f"{KEY_PASSWORD_ENV} set without {KEYFILE_ENV} or {CERTFILE_ENV}")
        if tls_files and not self.uses_tls and self.protocol in PROTOCOLS:
            names = ", ".join(name for name, _ in tls_files)
            wanted = "SSL" if self.protocol == "PLAINTEXT" else "SASL_SSL"
            problems.append(f"{names} set but {PROTOCOL_ENV}={self.protocol} does not use TLS (set it to {wanted})")
        if self.keyfile and not self.certfile:
            problems.append(f"{KEYFILE_ENV} needs {CERTFILE_ENV} (the client certificate it belongs to)")
        for name, value in tls_files:
            if not Path(value).is_file():
                problems.append(f"{name}={value}: no such file")
        if problems:
            raise KafkaSecurityError("Kafka security configuration: " + "; ".join(problems))

    def _tls_files(self) -> list[tuple[str, str]]:
        given = ((CAFILE_ENV, self.cafile), (CERTFILE_ENV, self.certfile), (KEYFILE_ENV, self.keyfile))
        return [(name, value) for name, value in given if value]

    # ---- outputs ---------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (broker certificate and host name verified), or None without TLS."""
        if not self.uses_tls:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            return create_ssl_context(
                cafile=self.cafile,
                certfile=self.certfile,
                keyfile=self.keyfile,
                password=self.key_password,
            )
        except (ssl.SSLError, OSError) as exc:
            files = ", ".join(f"{name}={value}" for name, value in self._tls_files())
            raise KafkaSecurityError(f"Kafka TLS: cannot load {files or 'the system CA certificates'}: {exc}") from None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials`: SASLCredentials, SSLCredentials, or None for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return None
        import faust

        context = self.ssl_context()
        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=context,  # with a context Faust uses SASL_SSL, without one SASL_PLAINTEXT
                mechanism=self.sasl_mechanism or "PLAIN",
            )
        return faust.SSLCredentials(context)

    def describe(self) -> str:
        """One line for logs, without secrets: 'SASL_SSL (SCRAM-SHA-512 as tracehouse, CA /etc/...)'."""
        details = []
        if self.uses_sasl:
            details.append(f"{self.sasl_mechanism or 'PLAIN'} as {self.username}")
        if self.uses_tls:
            details.append(f"CA {self.cafile}" if self.cafile else "system CAs")
            if self.certfile:
                details.append(f"client certificate {self.certfile}")
        return f"{self.protocol} ({', '.join(details)})" if details else self.protocol


def _normalise(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip().upper().replace("-", "_")


def kafka_security(env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The validated configuration from the environment (or `env`)."""
    return KafkaSecurity.from_env(env)


def kafka_client_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`**kafka_client_options()` in every AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
    return KafkaSecurity.from_env(env).client_options()


def faust_broker_credentials(env: Mapping[str, str] | None = None) -> Any:
    """`broker_credentials=faust_broker_credentials()` in the Faust app's settings (None: PLAINTEXT)."""
    return KafkaSecurity.from_env(env).faust_credentials()
