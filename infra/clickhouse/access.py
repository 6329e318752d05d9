"""Who may drive the embedded ClickHouse server, and how far: browsers kept out, users, `readonly`.

The server listens on 127.0.0.1 by default, but "only local processes" includes every web page the user
opens: a browser will deliver a cross-site `text/plain` POST (or a GET from an `<img>` tag) to
127.0.0.1:8123 without asking anyone. No ClickHouse client sends an `Origin` header, so:

* A request carrying an `Origin` that is not this server's own origin is refused, and so is a POST with
  an `Origin` and a content type a browser may send cross-site without a preflight (text/plain, form
  encodings). A server bound to a loopback address also refuses a `Host` that is not a loopback name,
  which stops DNS rebinding (a page whose name now points at 127.0.0.1 is "same-origin" to the browser).
* GET runs with `readonly = 2`, as on a ClickHouse server: a link or an image cannot write.
* `readonly` (1 or 2) from the URL or the user's profile is enforced by the engine itself.
* With a users file (`TRACEHOUSE_CLICKHOUSE_USERS_FILE`), every request must name a user and its password
  (HTTP basic auth, `X-ClickHouse-User`/`X-ClickHouse-Key`, or `user`/`password` URL parameters, as a
  ClickHouse server takes them), and a read-only user's requests run with `readonly = 1`. Without one,
  any user and password are accepted, as before.

The users file is TOML, one table per user, passwords as SHA-256 hex like ClickHouse's
`password_sha256_hex` (`printf '%s' 'secret' | sha256sum`):

    [users.tracehouse]
    password_sha256_hex = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

    [users.grafana]
    password_sha256_hex = "..."
    readonly = 1        # 1: reads only; 2: reads and settings changes; 0 or absent: may write
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tracehouse.core.browsers import browser_refusal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class Refused(Exception):
    """A request this server will not run: a ClickHouse error code and its text."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text


# --- users ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    password_sha256_hex: str
    readonly: int = 0

    def password_matches(self, password: str) -> bool:
        digest = hashlib.sha256(password.encode()).hexdigest()
        return hmac.compare_digest(digest, self.password_sha256_hex)


class Users:
    """The users a users file declares."""

    def __init__(self, users: Mapping[str, User]):
        self._users = dict(users)

    @classmethod
    def load(cls, path: Path) -> Users:
        """Read a users file; ValueError with the reason if it cannot be used."""
        try:
            document = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read users file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"users file {path} is not valid TOML: {exc}") from None
        table = document.get("users")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"users file {path} declares no users (expected [users.NAME] tables)")
        users: dict[str, User] = {}
        for name, entry in table.items():
            if not isinstance(entry, dict):
                raise ValueError(f"users file {path}: users.{name} must be a table")
            digest = entry.get("password_sha256_hex")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ValueError(f"users file {path}: users.{name}.password_sha256_hex must be 64 hex digits")
            try:
                bytes.fromhex(digest)
            except ValueError:
                raise ValueError(f"users file {path}: users.{name}.password_sha256_hex is not hex") from None
            readonly = entry.get("readonly", 0)
            if readonly is True or readonly is False:
                readonly = int(readonly)
            if readonly not in (0, 1, 2):
                raise ValueError(f"users file {path}: users.{name}.readonly must be 0, 1, 2, true or false")
            unknown = set(entry) - {"password_sha256_hex", "readonly"}
            if unknown:
                raise ValueError(f"users file {path}: users.{name} has unknown keys {sorted(unknown)}")
            users[name] = User(name, digest.lower(), readonly)
        return cls(users)

    def authenticate(self, name: str, password: str) -> User:
        user = self._users.get(name)
        # Hash even for an unknown name, so the answer takes as long either way
        matches = (user or User(name, "0" * 64)).password_matches(password)
        if user is None or not matches:
            raise Refused(
                516,
                f"{name}: Authentication failed: password is incorrect, or there is no user with such name",
            )  # AUTHENTICATION_FAILED
        return user


def credentials(headers: Mapping[str, str], params: Mapping[str, str]) -> tuple[str, str]:
    """(user, password) the way a ClickHouse server reads them; ("default", "") when none are given."""
    if "X-ClickHouse-User" in headers:
        return headers["X-ClickHouse-User"], headers.get("X-ClickHouse-Key", "")
    auth = headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Refused(516, "Authentication failed: the Authorization header is not basic credentials") from None
        return user or "default", password
    return params.get("user") or "default", params.get("password", "")


@dataclass(frozen=True)
class Access:
    """This server's rules for one listening address; `users` is None when any user is accepted."""

    host: str
    port: int
    users: Users | None = None

    def check_browser(self, method: str, headers: Mapping[str, str], content_type: str) -> None:
        """Refuse what only a web page would send (`core/browsers.py`, the web explorer's rule too);
        raises Refused."""
        reason = browser_refusal(method, headers, content_type, self.host)
        if reason is not None:
            raise Refused(497, reason)  # ACCESS_DENIED

    def authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> tuple[str, int]:
        """The request's user name and the readonly level its profile imposes; raises Refused."""
        if self.users is None:  # any user and password: the name only keeps sessions apart
            try:
                return credentials(headers, params)[0], 0
            except Refused:
                return "default", 0
        name, password = credentials(headers, params)
        user = self.users.authenticate(name, password)
        return user.name, user.readonly


def readonly_level(profile: int, requested: str | None, method: str) -> int:
    """The `readonly` a request runs with: its user's profile, the `readonly` URL parameter (which may
    raise the level but never lower a profile's), and 2 for GET, as a ClickHouse server decides."""
    level = profile
    if requested is not None:
        value = requested.strip().lower()
        wanted = {"true": 1, "false": 0}.get(value)
        if wanted is None:
            if not value.isascii() or not value.isdigit() or int(value) > 2:
                raise Refused(36, f"Invalid value {requested!r} for setting readonly: expected 0, 1 or 2")
            wanted = int(value)
        if profile and wanted != profile:
            raise Refused(164, "Cannot modify 'readonly' setting in readonly mode")  # READONLY
        level = wanted
    if method == "GET" and level == 0:
        level = 2  # a GET may not write (ClickHouse's HTTP handler does the same)
    return level
