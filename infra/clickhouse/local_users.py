"""The users `tracehouse up` and `demo` give the embedded ClickHouse server they start themselves.

Without users, any local process (another OS user's too) could write to or drop the data over HTTP.
So when `up` starts the server, it starts it with a users file of two users, kept in the data directory
(both files 0600, made once and reused, so the password stays the same across runs):

- `tracehouse`, the writer: the pipeline's processes (migrate, worker, sink) get its name and the file
  holding its password (`TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE`, as any secret can come from a file);
- `default`, no password, `readonly = 2`: curl, Grafana, the web explorer and the reading commands read as
  before, and can write nothing (2, not 1, so clients may still send settings such as
  max_execution_time).

Not used when `TRACEHOUSE_CLICKHOUSE_USERS_FILE` or `TRACEHOUSE_CLICKHOUSE_USER` is set (you chose your own),
nor when a ClickHouse already answers at the URL.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

__all__ = ["WRITER", "local_users"]

WRITER = "tracehouse"
READER = "default"
USERS_FILE = "clickhouse-users.toml"
PASSWORD_FILE = "clickhouse-writer.password"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    """Create `path` readable by this OS user only, before anything is written into it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def local_users(data_dir: Path) -> tuple[Path, Path]:
    """(users file, writer's password file) in `data_dir`, made on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir / PASSWORD_FILE
    if not password_file.exists():
        _write_private(password_file, secrets.token_urlsafe(24) + "\n")
    password = password_file.read_text().strip()
    users_file = data_dir / USERS_FILE
    _write_private(
        users_file,
        "# Made by `tracehouse up`; see tracehouse/infra/clickhouse/local_users.py\n"
        f'[users.{WRITER}]\npassword_sha256_hex = "{_sha256(password)}"\n\n'
        f'[users.{READER}]\npassword_sha256_hex = "{_sha256("")}"\nreadonly = 2\n',
    )
    return users_file, password_file
