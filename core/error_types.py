"""A span's error type, and whether it is a rate limit: the one rule that the SDK, the OTLP receiver's
mapping, the worker's rollups and the sink's `spans.error_type` all apply.

Public API:
    RATE_LIMIT                                   "rate_limit", the error type of every rate limit
    RATE_LIMIT_WORDS                             the words that mean "slow down", as fragments
    is_rate_limit_text(text) -> bool             an exception type, a message or an error.type says so
    span_error_type(explicit, events, status, status_message) -> str
    is_rate_limited(explicit, events, status, status_message) -> bool

Question 3 ("which runtime errors, e.g. rate limits") groups on `spans.error_type`, and the rollups'
`rate_limit_count` counts the same thing per window; both must use one rule, or a dashboard's rate-limit
figure disagrees with the spans behind it. Rate limits are recognised whatever client raised them:
openai/anthropic/mistral/groq `RateLimitError`, google api_core `ResourceExhausted`/`TooManyRequests`,
botocore `ThrottlingException`, an HTTP 429 in a message ("Error code: 429"), and the sender's own
`error.type` when it names a rate limit.

The rule, in order: a non-empty `error.type` attribute decides (RATE_LIMIT when it names a rate limit,
else itself); then `exception` events (RATE_LIMIT when the type or the message names one, else the first
exception's type); then an ERROR status whose message names a rate limit; then "error" for any other
ERROR span, "" for the rest. The SDK classifies the exception object itself (producers/errors.py: it also
sees status codes and wrapped causes) with `is_rate_limit_text` on class names, and sets `error.type`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

RATE_LIMIT = "rate_limit"

# Each entry is a phrase's words; in text they may be joined by nothing, a space, "_", "." or "-"
# ("RateLimitError", "rate_limit_exceeded", "Too Many Requests", "RESOURCE_EXHAUSTED"). "throttl" is a
# stem (Throttled, ThrottlingException).
RATE_LIMIT_WORDS: tuple[tuple[str, ...], ...] = (
    ("rate", "limit"),
    ("too", "many", "requests"),
    ("throttl",),
    ("resource", "exhausted"),
)
_JOIN = r"[\s_.-]?"
# ... or the HTTP status 429 as a number of its own ("Error code: 429", "HTTP 429").
_RATE_LIMIT_RE = re.compile(
    "|".join(_JOIN.join(map(re.escape, words)) for words in RATE_LIMIT_WORDS) + r"|\b429\b", re.IGNORECASE
)
_search = _RATE_LIMIT_RE.search


class ErrorEvent(Protocol):
    """What the rule reads of a span event (core.schema.Event, the worker's WorkEvent)."""

    @property
    def name(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, str]: ...


def is_rate_limit_text(text: str) -> bool:
    """True when `text` (an exception type, an error message, an `error.type`) names a rate limit."""
    return bool(text) and _search(text) is not None


def span_error_type(explicit: str | None, events: Sequence[ErrorEvent], status: str, status_message: str) -> str:
    """The span's error type by the rule in the module docstring ("" when the span has no error)."""
    if explicit:
        return RATE_LIMIT if explicit == RATE_LIMIT or _search(explicit) else explicit
    first_type: str | None = None
    for event in events:
        if event.name == "exception":
            attributes = event.attributes
            exc_type = attributes.get("exception.type", "exception")
            if _search(exc_type) or _search(attributes.get("exception.message", "")):
                return RATE_LIMIT
            if first_type is None:
                first_type = exc_type
    if status == "ERROR" and status_message and _search(status_message):
        return RATE_LIMIT
    if first_type is not None:
        return first_type
    return "error" if status == "ERROR" else ""


def is_rate_limited(explicit: str | None, events: Sequence[ErrorEvent], status: str, status_message: str) -> bool:
    """`span_error_type(...) == RATE_LIMIT`, without the work when the answer is plain."""
    if explicit:
        return explicit == RATE_LIMIT or _search(explicit) is not None
    if not events and status != "ERROR":
        return False
    return span_error_type(None, events, status, status_message) == RATE_LIMIT
