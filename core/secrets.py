"""Secrets from the environment or from files, and redaction so they never reach a log line.

`secret("NAME")` reads `NAME`, or the file named by `NAME_FILE` (the Docker / Kubernetes convention: mount
a Secret as a file and point the variable at it, so the value is not in the process environment, in
`docker inspect` or in a crash dump of the environment); it lives in core/settings.py, the one module that
reads the environment, and is re-exported here. Setting both is an error rather than a silent
choice. One trailing newline is dropped from a file (editors and `echo` add one); nothing else is
stripped, since spaces can be part of a password.

`redact(text)` masks the password in URLs (`https://user:pass@host` -> `https://user:***@host`) and the
values of credential-looking query parameters (`?password=...`, `access_token=...`). Anything that logs a
URL, a DSN or an exception message that may contain one goes through it; `RedactingFilter` does it for
every record of a logger.

ClickHouse: `clickhouse_password()` reads `TRACEHOUSE_CLICKHOUSE_PASSWORD` or
`TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE`; `clickhouse_tls_options(secure)` turns `TRACEHOUSE_CLICKHOUSE_CA`
(a PEM file of the CA that signed the server's certificate) into clickhouse-connect's `ca_cert`/`verify`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from tracehouse.core import settings
from tracehouse.core.settings import SecretError, secret

__all__ = [
    "CLICKHOUSE_CA_ENV",
    "CLICKHOUSE_PASSWORD_ENV",
    "RedactingFilter",
    "SecretError",
    "clickhouse_password",
    "clickhouse_tls_options",
    "redact",
    "secret",
]

CLICKHOUSE_PASSWORD_ENV = settings.CLICKHOUSE_PASSWORD.name
CLICKHOUSE_CA_ENV = settings.CLICKHOUSE_CA.name
MASK = "***"


# ---- redaction ----------------------------------------------------------------------------------

# scheme://user:password@  (the password part is anything up to the last '@' before the host)
_URL_USERINFO = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^/?#\s]*)@")
# ?password=...&  token=...  (query strings, DSN-style key=value lists)
_SECRET_PARAM = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|access_token|api_key|apikey|sasl_plain_password)=)"
    r"(?P<value>[^&\s;,'\"]+)",
    re.IGNORECASE,
)


def redact(text: object, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords, credential query parameters and any of `secrets` replaced by ***."""
    out = str(text)
    for value in secrets:
        if value and len(value) >= 3:  # masking "a" would mangle the message and reveal nothing
            out = out.replace(value, MASK)
    out = _URL_USERINFO.sub(lambda m: m.group("prefix") + MASK + "@", out)
    return _SECRET_PARAM.sub(lambda m: m.group("key") + MASK, out)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (after %-formatting) and its exception text.

    `logging.getLogger("tracehouse").addFilter(RedactingFilter())` covers every tracehouse logger that
    propagates to it; add it to handlers to cover third-party loggers too.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


# ---- ClickHouse ---------------------------------------------------------------------------------


def clickhouse_password(env: Mapping[str, str] | None = None) -> str | None:
    """`TRACEHOUSE_CLICKHOUSE_PASSWORD` or the contents of `TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE`; None when
    neither is set (then the URL's password, or none, applies)."""
    return settings.get(settings.CLICKHOUSE_PASSWORD, env)


def clickhouse_tls_options(secure: bool, env: Mapping[str, str] | None = None) -> dict[str, object]:
    """clickhouse-connect keyword arguments for TLS: with `TRACEHOUSE_CLICKHOUSE_CA` set, verify the server
    against that CA file (`ca_cert`, `verify=True`); without it, the system's CAs (clickhouse-connect's
    default). Verification is never switched off here.

    Raises SecretError when the CA is set for a plain-HTTP URL (it would silently do nothing) or the file
    is missing.
    """
    ca = settings.raw(settings.CLICKHOUSE_CA, env)
    if ca is None:
        return {}
    if not secure:
        raise SecretError(
            f"{CLICKHOUSE_CA_ENV} is set but the ClickHouse URL is http://; use https:// (port 8443) so the CA is used"
        )
    if not Path(ca).is_file():
        raise SecretError(f"{CLICKHOUSE_CA_ENV}={ca}: no such file")
    return {"ca_cert": ca, "verify": True}
