"""What an exception inside a span becomes: an `exception` event and an `error.type` attribute.

Question 3 ("which runtime errors, e.g. rate limits") is answered by grouping on `error.type`, so rate
limits must be recognisable whatever client raised them: openai/anthropic/mistral/groq (`RateLimitError`
with `status_code` 429), httpx/requests (`response.status_code`), aiohttp (`status`), google api_core
(`TooManyRequests`/`ResourceExhausted`, `code`), boto3/Bedrock (`ThrottlingException` in
`response["Error"]["Code"]`), or any of these wrapped by a retry library (`__cause__`). This runs only on
the error path, so it may take a few microseconds. Which names mean "rate limit" is decided once, in
core/error_types.py, which the receiver's mapping, the worker's rollups and the sink apply too.
"""

from __future__ import annotations

import traceback
from typing import Any

from tracehouse.core.error_types import RATE_LIMIT, is_rate_limit_text

from .payload import fit, safe_repr

__all__ = ["RATE_LIMIT", "error_type", "exception_attributes", "exception_message", "is_rate_limit", "qualified_name"]

_STATUS_ATTRS = ("status_code", "http_status", "status", "code", "http_status_code")


def qualified_name(exc_type: type) -> str:
    """`module.QualName` of an exception class; builtins keep their bare name (`ValueError`)."""
    module = getattr(exc_type, "__module__", "") or ""
    name = getattr(exc_type, "__qualname__", None) or exc_type.__name__
    return name if module in ("builtins", "") else f"{module}.{name}"


def _is_429(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    try:
        return int(value) == 429
    except (TypeError, ValueError):
        return False


def _response_says_429(response: Any) -> bool:
    if response is None:
        return False
    if isinstance(response, dict):  # botocore ClientError.response
        meta = response.get("ResponseMetadata") or {}
        code = str((response.get("Error") or {}).get("Code", ""))
        return _is_429(meta.get("HTTPStatusCode")) or is_rate_limit_text(code)
    for attr in ("status_code", "status"):
        if _is_429(getattr(response, attr, None)):
            return True
    return False


def _is_rate_limit_one(exc: BaseException) -> bool:
    for klass in type(exc).__mro__:  # anywhere in the MRO: a subclass of RateLimitError is one too
        if is_rate_limit_text(klass.__name__):
            return True
    for attr in _STATUS_ATTRS:
        try:
            if _is_429(getattr(exc, attr, None)):
                return True
        except Exception:  # a property that raises
            continue
    try:
        return _response_says_429(getattr(exc, "response", None))
    except Exception:
        return False


def is_rate_limit(exc: BaseException, depth: int = 4) -> bool:
    """True when `exc`, or an exception it was raised from (up to `depth` links), is a rate limit."""
    seen: BaseException | None = exc
    for _ in range(depth):
        if seen is None:
            return False
        if _is_rate_limit_one(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def error_type(exc: BaseException) -> str:
    """The value of the span's `error.type` attribute: "rate_limit" or the class's qualified name."""
    return RATE_LIMIT if is_rate_limit(exc) else qualified_name(type(exc))


def exception_message(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = safe_repr(exc)
    return message


def exception_attributes(exc: BaseException, limit: int, escaped: bool = True) -> dict[str, str]:
    """The `exception` event's attributes, in OpenTelemetry's names; the stack is cut at `limit` bytes."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        stack = ""
    return {
        "exception.type": qualified_name(type(exc)),
        "exception.message": fit(exception_message(exc), limit)[0],
        "exception.stacktrace": fit(stack, limit)[0],
        "exception.escaped": "true" if escaped else "false",
    }
