"""Durations ("90s", "15m", "1h", "7d", "2w") and times as the read side takes and prints them, defined once:
the CLI's `--since` and `--window`, the named queries' `since` and the web API's time parameters (a
duration back from now, an ISO-8601 time or epoch milliseconds) are parsed here, and every absolute time in
a read-model answer is printed by `iso`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

DURATION = re.compile(r"([0-9]+) ?([smhdw]?)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NS = 1_000_000_000
DURATION_FORMS = "e.g. 30s, 15m, 1h, 7d"
TIME_FORMS = (
    "a duration back from now (15m, 1h, 7d), an ISO-8601 time (UTC unless it has an offset) or epoch milliseconds"
)
TIME_RANGE = "between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH_MS = re.compile(r"[0-9]+")


def duration_seconds(text: str, *, bare_seconds: bool = True) -> int | None:
    """'90s', '15m', '1h', '7d', '2w' (or, with `bare_seconds`, plain seconds) -> seconds; None if not one.

    The web API turns `bare_seconds` off: there, a plain number is epoch milliseconds.
    """
    match = DURATION.fullmatch(text.strip().lower())
    if match is None or (not bare_seconds and not match.group(2)):
        return None
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d', '2w' or plain seconds -> seconds; ValueError for anything else."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError(f"not a duration: {text!r} (use {DURATION_FORMS})")
    return seconds


def duration_text(seconds: int) -> str:
    """Seconds as the shortest duration that says them exactly: 3600 -> '1h', 90 -> '90s'."""
    for unit in ("w", "d", "h", "m"):
        size = UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ns_of(moment: dt.datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch, exactly (no float on the way)."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


MIN_TIME_NS = ns_of(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc))
MAX_TIME_NS = ns_of(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)) + 999


def time_ns(text: str, now_ns: int, *, max_chars: int = 64) -> int | None:
    """A time (TIME_FORMS) as nanoseconds since the epoch (Python's unbounded int: nothing wraps); None when
    it is not one, or lies outside TIME_RANGE."""
    text = text.strip()
    if len(text) > max_chars or not text.isascii():
        return None  # `isdigit()` and `int()` take '²' and Arabic-Indic digits: only ASCII goes further
    if (seconds := duration_seconds(text, bare_seconds=False)) is not None:
        ns = now_ns - seconds * NS
    elif _EPOCH_MS.fullmatch(text):
        ns = int(text) * 1_000_000
    else:
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        ns = ns_of(moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc))
    return ns if MIN_TIME_NS <= ns <= MAX_TIME_NS else None


def iso(ns: int) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC with milliseconds and a Z."""
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=ns // NS)  # naive UTC: isoformat adds no offset
    return moment.isoformat(timespec="seconds") + f".{ns % NS // 1_000_000:03d}Z"


def iso_of(value: Any) -> str:
    """A datetime from clickhouse-connect as ISO-8601 UTC (naive ones are UTC, as the driver returns them)."""
    if isinstance(value, dt.datetime):
        moment = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return str(value)
