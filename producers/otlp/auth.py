"""Optional bearer-token authentication for the receiver.

Tokens come from `TRACEHOUSE_RECEIVER_TOKENS` (comma-separated) and/or a file named by
`TRACEHOUSE_RECEIVER_TOKENS_FILE` (one token per line; blank lines and `#` comments ignored), so a
secret can be mounted as a file instead of sitting in the environment. With no token configured the
receiver is open, as an OTLP endpoint on a private network usually is.

A presented token is compared with every configured one in constant time: both sides are hashed to
SHA-256 first (so lengths never differ) and all comparisons run, hit or miss, so response timing says
nothing about how close a guess was. Tokens are never logged or echoed back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from tracehouse.core import settings

__all__ = ["TokenCheck", "load_tokens"]

TOKENS_ENV = settings.RECEIVER_TOKENS.name
TOKENS_FILE_ENV = settings.RECEIVER_TOKENS_FILE.name


def _parse(lines: Iterable[str]) -> list[str]:
    tokens = []
    for line in lines:
        token = line.strip()
        if token and not token.startswith("#") and token not in tokens:
            tokens.append(token)
    return tokens


def load_tokens(env: Mapping[str, str] | None = None) -> list[str]:
    """The configured tokens (environment list plus token file); [] means authentication is off.

    Raises OSError when the token file is named but cannot be read: starting open by mistake would be
    worse than not starting."""
    tokens = _parse(settings.get(settings.RECEIVER_TOKENS, env) or ())
    path = settings.get(settings.RECEIVER_TOKENS_FILE, env)
    if path is not None:
        for token in _parse(Path(path).read_text(encoding="utf-8").splitlines()):
            if token not in tokens:
                tokens.append(token)
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenCheck:
    """Checks `Authorization: Bearer <token>` headers against the configured tokens."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in _parse(tokens)]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """True when authentication is off, or the header carries one of the configured tokens."""
        if not self._digests:
            return True
        if not authorization:
            return False
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = _digest(presented.strip())
        matched = False
        for known in self._digests:  # no early exit: the time is the same for every token
            matched |= hmac.compare_digest(digest, known)
        return matched

    def __repr__(self) -> str:  # never the tokens themselves
        return f"<TokenCheck {len(self._digests)} token(s)>"
