"""Query-string parameters: declared once per endpoint as a msgspec Struct, checked strictly, described in
the OpenAPI document from the same Struct.

Each endpoint's parameters are the fields of one Struct (web/api.py): its type, range (`Meta(ge=, le=,
max_length=)`), default and description. `parse_query` converts the query's strings into that Struct
with msgspec, or raises `ApiError` (400) naming the parameter and what it accepts, so a typo
(`servce=...`), a value out of range or a number that is not finite is an answer, never a 500 and never a
silently different filter. web/openapi.py turns the same Structs into the document's `parameters`.

Times (`since`, `until`): a duration back from now (`15m`, `1h`, `7d`), an ISO-8601 time (UTC when it has
no offset) or epoch milliseconds; ASCII only, at most `MAX_TIME_CHARS` characters, and between
0001-01-01 and 9999-12-31 UTC (ISO 8601's years), else 400. A time the endpoint's table cannot hold
(`TimeType`: traces before 1900 or after 2262-04-11; rollups and services before 1970 or after
2106-02-07) is clamped to that type's range, which cannot change the answer (no stored row lies outside
it), and the answer's `since`/`until` show the range used.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, UnsetType

from tracehouse.read.times import NS, TIME_FORMS, TIME_RANGE, iso, ns_of, time_ns

INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
MAX_TEXT_CHARS = 1024
MAX_TIME_CHARS = 64

TRACE_ID = re.compile(r"[0-9a-f]{32}")
SPAN_ID = re.compile(r"[0-9a-f]{16}")

S = TypeVar("S", bound=msgspec.Struct)


class ApiError(Exception):
    """An answer the client caused or can act on: becomes `{"error": {status, code, message}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_parameter", message)


def _shown(raw: str) -> str:
    """A client's value quoted in a message, cut so that 5,000 nines do not come back as 5,000 nines."""
    return repr(raw if len(raw) <= 80 else raw[:77] + "...")


# ---- times ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeType:
    """The instants a ClickHouse time type holds, in nanoseconds since the epoch."""

    name: str
    min_ns: int
    max_ns: int

    def clamp(self, ns: int) -> int:
        return min(max(ns, self.min_ns), self.max_ns)

    def describe(self) -> str:
        return f"{iso(self.min_ns)} to {iso(self.max_ns)} (ClickHouse {self.name})"


# DateTime64(9) (traces.start_time, spans.start_time): 1900-01-01 to the largest Int64 nanosecond.
DATETIME64_9 = TimeType("DateTime64(9)", ns_of(dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)), INT64_MAX)
# DateTime (spans_minutely.minute) and the UInt32 seconds the rollup and services queries take.
DATETIME = TimeType("DateTime", 0, UINT32_MAX * NS)


def parse_time(name: str, text: str, now_ns: int) -> int:
    """A time parameter as nanoseconds since the epoch (Python's unbounded int: nothing wraps)."""
    ns = time_ns(text, now_ns, max_chars=MAX_TIME_CHARS)
    if ns is None:
        raise bad(f"{name} must be {TIME_FORMS}, {TIME_RANGE}; got {_shown(text.strip())}")
    return ns


# ---- declaring parameters ----------------------------------------------------------------------------


# Shared field metadata; each field adds its own `Meta(description=...)` beside these.
TEXT = Meta(max_length=MAX_TEXT_CHARS)
TIME = Meta(
    max_length=MAX_TIME_CHARS,
    examples=["1h", "2025-01-31T12:00:00Z", "1738324800000"],
    extra={"time": True},  # `parse_time` reads it (with the parameter's name in any error); openapi.py says so
)
TIME_RULES = f"{TIME_FORMS[0].upper()}{TIME_FORMS[1:]}; ASCII digits only, {TIME_RANGE}."


def is_time(meta: Meta) -> bool:
    return bool((meta.extra or {}).get("time"))


# ---- reading a query into its Struct --------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e18 else f"{value:g}"


@dataclass(frozen=True)
class _Rule:
    """What one field accepts, for messages: read from the Struct's own annotations."""

    kind: str  # "integer", "number", "text", "time", "enum"
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "enum":
            return "one of " + ", ".join(self.choices)
        if self.kind == "time":
            return f"{TIME_FORMS}, {TIME_RANGE}"
        if self.kind == "text":
            return f"text of at most {self.max_length} characters"
        what = "an integer" if self.kind == "integer" else "a finite number"
        bounds = [f"at least {_number(self.minimum)}" if self.minimum is not None else "",
                  f"at most {_number(self.maximum)}" if self.maximum is not None else ""]  # fmt: skip
        return ", ".join([what, " and ".join(b for b in bounds if b)]).rstrip(", ")


def _rule(hint: Any) -> _Rule:
    metas: list[Meta] = []
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint, *extra = typing.get_args(hint)
            metas += [m for m in extra if isinstance(m, Meta)]
        elif origin in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a not in (UnsetType, type(None)))
        else:
            break

    def first(attribute: str) -> Any:
        return next((getattr(m, attribute) for m in metas if getattr(m, attribute) is not None), None)

    if typing.get_origin(hint) is Literal:
        return _Rule("enum", choices=tuple(str(c) for c in typing.get_args(hint)))
    if any(map(is_time, metas)):
        return _Rule("time")
    if hint is str:
        return _Rule("text", max_length=first("max_length"))
    return _Rule("integer" if hint is int else "number", minimum=first("ge"), maximum=first("le"))


@functools.cache
def rules(cls: type[msgspec.Struct]) -> dict[str, _Rule]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: _rule(hints[name]) for name in cls.__struct_fields__}


_AT_FIELD = re.compile(r"at `\$\.(\w+)`")


def parse_query(cls: type[S], query: Mapping[str, str] | Any) -> S:
    """The query as the endpoint's Struct; an empty value counts as absent (its default).

    Unknown names, a name given twice, and any value of the wrong type or out of range are a 400 that
    names the parameter and says what it accepts.
    """
    known = rules(cls)
    values: dict[str, str] = {}
    for name in query:
        if name not in known:
            raise bad(f"unknown parameter {_shown(name)}; this endpoint takes: {', '.join(known) or 'none'}")
        raws = query.getall(name) if hasattr(query, "getall") else [query[name]]
        if len(raws) > 1:
            raise bad(f"{name} is given {len(raws)} times; give it once")
        if raws[0].strip():
            values[name] = raws[0].strip()
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        match = _AT_FIELD.search(str(exc))
        if match is None or match.group(1) not in known:  # not expected: say what msgspec said
            raise bad(str(exc)) from None
        name = match.group(1)
        raise bad(f"{name} must be {known[name].describe()}; got {_shown(values[name])}") from None


# ---- cursors and ids --------------------------------------------------------------------------------

_CURSOR = re.compile(r"(-?[0-9]{1,19}):([0-9a-f]{32})")


def encode_cursor(start_ns: int, trace_id: str) -> str:
    return base64.urlsafe_b64encode(f"{start_ns}:{trace_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The keyset (start_ns, trace_id) of the last row of the previous page."""
    try:
        match = _CURSOR.fullmatch(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    if match and DATETIME64_9.min_ns <= int(match.group(1)) <= DATETIME64_9.max_ns:
        return int(match.group(1)), match.group(2)
    raise bad("cursor is not one this server returned (use next_cursor from the previous page)")


def encode_key_cursor(ns: int, key: str) -> str:
    """A keyset cursor over (time, any text key), e.g. a session's last activity and its id."""
    return base64.urlsafe_b64encode(f"{ns}:{key}".encode()).decode().rstrip("=")


def decode_key_cursor(cursor: str) -> tuple[int, str]:
    """The (ns, key) `encode_key_cursor` made, or a 400."""
    try:
        ns, _, key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8").partition(":")
        if re.fullmatch(r"-?[0-9]{1,19}", ns) and key and len(key) <= MAX_TEXT_CHARS:
            if DATETIME64_9.min_ns <= int(ns) <= DATETIME64_9.max_ns:
                return int(ns), key
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise bad("cursor is not one this server returned (use next_cursor from the previous page)")


def session_id_of(text: str) -> str:
    session_id = text.strip()
    if not session_id or len(session_id) > MAX_TEXT_CHARS:
        raise bad(f"session id must be 1 to {MAX_TEXT_CHARS} characters; got {_shown(text)}")
    return session_id


def trace_id_of(text: str) -> str:
    trace_id = text.strip().lower()
    if not TRACE_ID.fullmatch(trace_id):
        raise bad(f"trace id must be 32 hex digits; got {_shown(text)}")
    return trace_id


def span_id_of(text: str) -> str:
    span_id = text.strip().lower()
    if not SPAN_ID.fullmatch(span_id):
        raise bad(f"span id must be 16 hex digits; got {_shown(text)}")
    return span_id
