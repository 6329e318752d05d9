"""Query-string parameters: declared once per endpoint, checked strictly, described in the OpenAPI document.

Each endpoint lists its `Param`s; `parse` turns a query string into typed values or raises `ApiError`
(400) naming the parameter and what it accepts, so a typo (`servce=...`) is an answer, not a silently
ignored filter. The same declarations produce the OpenAPI `parameters`, so the document cannot describe
a parameter the server does not take.

Times (`since`, `until`): a duration back from now (`15m`, `1h`, `7d`), an ISO-8601 time (UTC when it has
no offset), or epoch milliseconds.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
NS = 1_000_000_000


class ApiError(Exception):
    """An answer the client caused or can act on: becomes `{"error": {status, code, message}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_parameter", message)


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "string", "integer", "number", "time", "enum"
    description: str
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def schema(self) -> dict[str, Any]:
        """The parameter's JSON Schema for the OpenAPI document."""
        if self.type == "enum":
            schema: dict[str, Any] = {"type": "string", "enum": list(self.choices)}
        elif self.type == "time":
            schema = {"type": "string", "examples": ["1h", "2025-01-31T12:00:00Z", "1738324800000"]}
        else:
            schema = {"type": self.type}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def convert(self, raw: str, now_ns: int) -> Any:
        text = raw.strip()
        if self.type == "string":
            if len(text) > 1024:
                raise bad(f"{self.name} is longer than 1024 characters")
            return text
        if self.type == "enum":
            if text not in self.choices:
                raise bad(f"{self.name} must be one of {', '.join(self.choices)}; got {raw!r}")
            return text
        if self.type == "time":
            return parse_time(self.name, text, now_ns)
        try:
            value: float = int(text) if self.type == "integer" else float(text)
        except ValueError:
            raise bad(f"{self.name} must be {'an integer' if self.type == 'integer' else 'a number'}; "
                      f"got {raw!r}") from None  # fmt: skip
        if value != value or value in (float("inf"), float("-inf")):
            raise bad(f"{self.name} must be a finite number")
        if self.minimum is not None and value < self.minimum:
            raise bad(f"{self.name} must be at least {self.minimum:g}; got {raw!r}")
        if self.maximum is not None and value > self.maximum:
            raise bad(f"{self.name} must be at most {self.maximum:g}; got {raw!r}")
        return value


def parse_time(name: str, text: str, now_ns: int) -> int:
    """A time parameter as nanoseconds since the epoch."""
    match = _DURATION.match(text.lower())
    if match:
        return now_ns - int(match.group(1)) * _UNITS[match.group(2)] * NS
    if text.isdigit():
        return int(text) * 1_000_000
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad(
            f"{name} must be a duration back from now (15m, 1h, 7d), an ISO-8601 time or epoch milliseconds; "
            f"got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp()) * NS + moment.microsecond * 1000


def parse(query: Mapping[str, str], params: Sequence[Param], now_ns: int | None = None) -> dict[str, Any]:
    """Typed values for every declared parameter (its default when absent); unknown names are a 400."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    known = {p.name: p for p in params}
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise bad(f"unknown parameter {unknown[0]!r}; this endpoint takes: {', '.join(known) or 'none'}")
    values: dict[str, Any] = {}
    for param in params:
        raw = query.get(param.name)
        if raw is None or raw.strip() == "":
            default = param.default
            values[param.name] = param.convert(default, now_ns) if param.type == "time" and default else default
        else:
            values[param.name] = param.convert(raw, now_ns)
    return values


def iso(ns: int) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC with milliseconds and a Z."""
    moment = dt.datetime.fromtimestamp(ns // NS, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % NS // 1_000_000:03d}Z"


def encode_cursor(start_ns: int, trace_id: str) -> str:
    return base64.urlsafe_b64encode(f"{start_ns}:{trace_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The keyset (start_ns, trace_id) of the last row of the previous page."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        start, _, trace_id = text.partition(":")
        if TRACE_ID.match(trace_id) and start.isdigit():
            return int(start), trace_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise bad("cursor is not one this server returned (use next_cursor from the previous page)")


def trace_id_of(text: str) -> str:
    trace_id = text.strip().lower()
    if not TRACE_ID.match(trace_id):
        raise bad(f"trace id must be 32 hex digits; got {text[:80]!r}")
    return trace_id


def span_id_of(text: str) -> str:
    span_id = text.strip().lower()
    if not SPAN_ID.match(span_id):
        raise bad(f"span id must be 16 hex digits; got {text[:80]!r}")
    return span_id
