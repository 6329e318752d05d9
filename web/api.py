"""The JSON API's handlers: parse and check the parameters, run the named SQL, shape, encode.

Each endpoint's query parameters are declared here once, as the fields of a `Query` Struct (type, range,
default, description); web/params.py reads the query into it and web/openapi.py describes it, so the
document and the server cannot disagree. Times are clamped to what the table's time type holds before
they become SQL parameters, and every number is in its SQL parameter's range (Int64, UInt32).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from tracehouse.read import shape
from tracehouse.read.models import SpanView
from tracehouse.read.queries import QUERIES
from tracehouse.read.sessions import SESSION_CHARS, session_request, session_view
from tracehouse.read.times import iso
from tracehouse.read.traces import TRACE_CHARS, span_request, trace_requests, trace_view
from tracehouse.web.models import Alerts, Rollups, Services, SessionList, TraceList, encode
from tracehouse.web.params import (
    DATETIME,
    DATETIME64_9,
    INT64_MAX,
    NS,
    TEXT,
    TIME,
    UINT32_MAX,
    ApiError,
    TimeType,
    bad,
    decode_cursor,
    decode_key_cursor,
    encode_cursor,
    encode_key_cursor,
    parse_query,
    parse_time,
    session_id_of,
    span_id_of,
    trace_id_of,
)
from tracehouse.web.reader import Reader

READER = web.AppKey("reader", Reader)

MAX_SPAN_CHARS = 4 * 1024 * 1024  # the largest span a producer sends (core.schema.MAX_SPAN_BYTES)
STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
TARGET_POINTS = 240
MAX_POINTS = 5000


FLOAT_MAX = sys.float_info.max  # any finite Float64; inf and nan are refused
SCORE_BOUND = 1e15  # a score filter's bounds: far beyond any rating, probability or count people give
MAX_DURATION_MS = INT64_MAX // 1_000_000  # min_duration_ms becomes an Int64 of nanoseconds


class Query(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One endpoint's query parameters: each field's type, range, default and description, declared once
    (params.parse_query reads the query into it; openapi.py describes it)."""

    holds: ClassVar[TimeType | None] = None  # what the table's time column holds: times are clamped to it


class TracesQuery(Query):
    holds: ClassVar[TimeType | None] = DATETIME64_9
    service: Annotated[str, TEXT, Meta(description="traces whose root service is this, or that have a span "
                                       "of this service")] = ""  # fmt: skip
    status: Annotated[Literal["OK", "ERROR", "UNSET"], Meta(description="the trace's status")] | UnsetType = UNSET
    since: Annotated[str, TIME, Meta(description="start of the time range (inclusive)")] = "24h"
    until: Annotated[str, TIME, Meta(description="end of the time range (exclusive); default: now")] | UnsetType = UNSET
    min_duration_ms: Annotated[float, Meta(ge=0, le=MAX_DURATION_MS, description="only traces at least this "
                                           "long, in milliseconds")] = 0.0  # fmt: skip
    min_cost: Annotated[float, Meta(ge=0, le=FLOAT_MAX, description="only traces that cost at least this many "
                                    "US dollars")] = 0.0  # fmt: skip
    session_id: Annotated[str, TEXT, Meta(description="only this session's traces")] = ""
    user_id: Annotated[str, TEXT, Meta(description="only this user's traces")] = ""
    q: Annotated[str, TEXT, Meta(description="a trace-id prefix, or text in the root span's name")] = ""
    score_name: Annotated[str, TEXT, Meta(description="only traces with a score of this name (with score_min, "
                                          "score_max, score_label: whose latest such score matches)")] = ""  # fmt: skip
    score_min: Annotated[float, Meta(ge=-SCORE_BOUND, le=SCORE_BOUND, description="only traces whose latest "
                                     "score (of score_name, else of any name) is at least this")] | UnsetType = (
        UNSET
    )  # fmt: skip
    score_max: Annotated[float, Meta(ge=-SCORE_BOUND, le=SCORE_BOUND, description="only traces whose latest "
                                     "score (of score_name, else of any name) is at most this")] | UnsetType = (
        UNSET
    )  # fmt: skip
    score_label: Annotated[str, TEXT, Meta(description="only traces whose latest score (of score_name, else of any "
                                           "name) has this label, e.g. thumbs_down")] = ""  # fmt: skip
    limit: Annotated[int, Meta(ge=1, le=500, description="traces per page")] = 50
    cursor: Annotated[str, TEXT, Meta(description="next_cursor from the previous page")] = ""


class SessionsQuery(Query):
    holds: ClassVar[TimeType | None] = DATETIME64_9
    service: Annotated[str, TEXT, Meta(description="sessions with a trace of this service")] = ""
    user_id: Annotated[str, TEXT, Meta(description="only this user's sessions")] = ""
    since: Annotated[str, TIME, Meta(description="start of the time range (inclusive): sessions with a turn "
                                     "that started in the range, counted over those turns")] = "24h"  # fmt: skip
    until: Annotated[str, TIME, Meta(description="end of the time range (exclusive); default: now")] | UnsetType = UNSET
    limit: Annotated[int, Meta(ge=1, le=500, description="sessions per page")] = 50
    cursor: Annotated[str, TEXT, Meta(description="next_cursor from the previous page")] = ""


class SessionQuery(Query):
    max_chars: Annotated[int, Meta(ge=0, le=1_000_000, description="each turn's input and output are cut to this "
                                   "many characters (the trace has them whole)")] = SESSION_CHARS  # fmt: skip


class TraceQuery(Query):
    max_chars: Annotated[int, Meta(ge=0, le=1_000_000, description="long texts (input, output, messages, "
                                   "prompts) are cut to this many characters")] = TRACE_CHARS  # fmt: skip


class SpanQuery(Query):
    max_chars: Annotated[int, Meta(ge=0, le=MAX_SPAN_CHARS, description="long texts are cut to this many "
                                   "characters")] = MAX_SPAN_CHARS  # fmt: skip


class RollupsQuery(Query):
    holds: ClassVar[TimeType | None] = DATETIME
    since: Annotated[str, TIME, Meta(description="start of the time range (inclusive)")] = "1h"
    until: Annotated[str, TIME, Meta(description="end of the time range (exclusive); default: now")] | UnsetType = UNSET
    step_seconds: Annotated[int, Meta(ge=60, le=7 * 86400, description="width of one time step (rounded down to "
                            f"whole minutes); default: about {TARGET_POINTS} steps over the range")] | UnsetType = (
        UNSET
    )  # fmt: skip
    by: Annotated[Literal["model", "service", "kind", "name"], Meta(description="one series per model, service, "
                  "kind or span name")] = "model"  # fmt: skip
    kind: Annotated[str, TEXT, Meta(description="only this span kind; empty: LLM, RETRIEVER, EMBEDDING and "
                                    "RERANKER; '*': every kind")] = ""  # fmt: skip
    service: Annotated[str, TEXT, Meta(description="only this service")] = ""
    model: Annotated[str, TEXT, Meta(description="only this model")] = ""
    max_groups: Annotated[int, Meta(ge=1, le=50, description="at most this many series (the busiest)")] = 8


class AlertsQuery(Query):
    since: Annotated[str, TIME, Meta(description="recent alert state changes from this time on (at most "
                                     "136 years back: the query takes UInt32 seconds)")] = "24h"  # fmt: skip
    limit: Annotated[int, Meta(ge=1, le=1000, description="at most this many recent changes")] = 100


class ServicesQuery(Query):
    holds: ClassVar[TimeType | None] = DATETIME
    since: Annotated[str, TIME, Meta(description="services, models and kinds seen since this time")] = "7d"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=body if isinstance(body, bytes) else encode(body), status=status,
                        content_type="application/json")  # fmt: skip


def _reader(request: web.Request) -> Reader:
    return request.app[READER]


def _range(query: TracesQuery | SessionsQuery | RollupsQuery, now_ns: int) -> tuple[int, int]:
    """[since, until) in nanoseconds, clamped to what the table's time type holds (exact: nothing is
    stored outside it)."""
    held = query.holds
    assert held is not None
    since = held.clamp(parse_time("since", query.since, now_ns))
    until = held.clamp(now_ns if query.until is UNSET else parse_time("until", query.until, now_ns))
    if since >= until:
        raise bad(f"since ({iso(since)}) must be before until ({iso(until)}) within what {held.name} holds")
    return since, until


async def list_traces(request: web.Request) -> web.Response:
    """GET /api/traces: one page of traces, newest first, with the filters of the traces list."""
    now = time.time_ns()
    v = parse_query(TracesQuery, request.query)
    since, until = _range(v, now)
    cursor_ns, cursor_id = decode_cursor(v.cursor) if v.cursor else (0, "")
    limit = v.limit
    rows = await _reader(request).rows(
        QUERIES["web-traces"],
        {
            "from_ns": since,
            "until_ns": until,
            "service": v.service,
            "status": v.status or "",
            "min_duration_ns": min(round(v.min_duration_ms * 1_000_000), INT64_MAX),
            "min_cost": v.min_cost,
            "session_id": v.session_id,
            "user_id": v.user_id,
            "q": v.q,
            **_score_filter(v),
            "cursor_ns": cursor_ns,
            "cursor_id": cursor_id,
            "limit": limit + 1,  # one more than asked: is there a next page?
        },
    )
    traces = [shape.trace_summary(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit and traces:
        last = rows[limit - 1]
        next_cursor = encode_cursor(int(last["start_ns"]), last["trace_id"])
    return json_response(TraceList(traces, next_cursor, limit, iso(since), iso(until)))


def _score_filter(v: TracesQuery) -> dict[str, Any]:
    """The score filter's SQL parameters: on when any of its four parameters is given."""
    given = bool(v.score_name or v.score_label) or v.score_min is not UNSET or v.score_max is not UNSET
    return {
        "score_filter": int(given),
        "score_name": v.score_name,
        "score_min": 0.0 if v.score_min is UNSET else v.score_min,
        "has_min": int(v.score_min is not UNSET),
        "score_max": 0.0 if v.score_max is UNSET else v.score_max,
        "has_max": int(v.score_max is not UNSET),
        "score_label": v.score_label,
    }


async def list_sessions(request: web.Request) -> web.Response:
    """GET /api/sessions: one page of conversations, the most recently active first."""
    now = time.time_ns()
    v = parse_query(SessionsQuery, request.query)
    since, until = _range(v, now)
    cursor_ns, cursor_id = decode_key_cursor(v.cursor) if v.cursor else (0, "")
    rows = await _reader(request).rows(
        QUERIES["sessions"],
        {"from_ns": since, "until_ns": until, "service": v.service, "user_id": v.user_id, "cursor_ns": cursor_ns,
         "cursor_id": cursor_id, "limit": v.limit + 1},
    )  # fmt: skip
    sessions = [shape.session_summary(r) for r in rows[: v.limit]]
    next_cursor = None
    if len(rows) > v.limit and sessions:
        last = rows[v.limit - 1]
        next_cursor = encode_key_cursor(int(last["last_ns"]), last["session_id"])
    return json_response(SessionList(sessions, next_cursor, v.limit, iso(since), iso(until)))


async def get_session(request: web.Request) -> web.Response:
    """GET /api/sessions/{session_id}: every trace of the conversation in order, with input and output."""
    session_id = session_id_of(request.match_info["session_id"])
    max_chars = parse_query(SessionQuery, request.query).max_chars
    rows = await _reader(request).rows(*session_request(session_id, max_chars))
    detail = session_view(session_id, rows, max_chars=max_chars)
    if detail is None:
        raise ApiError(404, "not_found", f"session {session_id!r} not found (no trace has this session id)")
    return json_response(detail)


async def get_trace(request: web.Request) -> web.Response:
    """GET /api/traces/{trace_id}: every span, in tree order, with all its details, in one answer."""
    trace_id = trace_id_of(request.match_info["trace_id"])
    max_chars = parse_query(TraceQuery, request.query).max_chars
    reader = _reader(request)
    spans, scores = trace_requests(trace_id, max_chars)
    rows, score_rows = await asyncio.gather(reader.rows(*spans), reader.rows(*scores))

    def build() -> bytes | None:
        view = trace_view(trace_id, rows, score_rows, max_chars=max_chars)
        return None if view is None else encode(view)

    # Building and encoding a trace of thousands of spans takes milliseconds to tens of them: off the loop.
    body = await asyncio.to_thread(build)
    if body is None:
        raise ApiError(404, "not_found", f"trace {trace_id} not found")
    return json_response(body)


async def get_span(request: web.Request) -> web.Response:
    """GET /api/traces/{trace_id}/spans/{span_id}: one span with its long texts whole (up to max_chars)."""
    trace_id = trace_id_of(request.match_info["trace_id"])
    span_id = span_id_of(request.match_info["span_id"])
    max_chars = parse_query(SpanQuery, request.query).max_chars
    reader = _reader(request)
    rows = await reader.rows(*span_request(trace_id, max_chars, span_id=span_id, max_spans=1, doc_chars=max_chars))
    if not rows:
        raise ApiError(404, "not_found", f"span {span_id} of trace {trace_id} not found")
    start = await reader.rows(QUERIES["web-trace-start"], {"trace_id": trace_id})
    trace_start = int(start[0]["start_ns"]) if start and start[0]["start_ns"] else int(rows[0]["start_ns"])
    span: SpanView = shape.span_out(rows[0], trace_start)
    return json_response(span)


def pick_step(span_s: int, asked: int | None) -> int:
    """The step: as asked (whole minutes), else the smallest 'round' step giving at most ~240 points."""
    if asked is not None:
        step = max(60, int(asked) // 60 * 60)
        if span_s / step > MAX_POINTS:
            raise bad(f"step_seconds {asked} gives more than {MAX_POINTS} steps over the range; use a larger one")
        return step
    for step in STEPS:
        if span_s / step <= TARGET_POINTS:
            return step
    return max(STEPS[-1], -(-span_s // TARGET_POINTS) // 86400 * 86400)


async def rollups(request: web.Request) -> web.Response:
    """GET /api/rollups: latency percentiles, calls, errors, tokens and cost over time, per group."""
    now = time.time_ns()
    v = parse_query(RollupsQuery, request.query)
    since, until = _range(v, now)  # minutes are DateTime, the query takes UInt32 seconds
    since_s, until_s = since // NS, min(-(-until // NS), UINT32_MAX)
    step = pick_step(until_s - since_s, v.step_seconds or None)
    since_s = since_s // step * step
    until_s = min(-(-until_s // step) * step, UINT32_MAX)
    kind = v.kind.upper() if v.kind != "*" else "*"
    rows = await _reader(request).rows(
        QUERIES["web-rollups"],
        {"from_s": since_s, "until_s": until_s, "step_seconds": step, "by": v.by, "kind": kind,
         "service": v.service, "model": v.model},
    )  # fmt: skip
    series, omitted = shape.rollup_series(rows, v.max_groups)
    return json_response(
        Rollups(iso(since_s * NS), iso(until_s * NS), since_s, until_s, step, v.by, kind, omitted, series)
    )


async def alerts(request: web.Request) -> web.Response:
    """GET /api/alerts: what fires now (however long ago it fired), and recent state changes."""
    now = time.time_ns()
    v = parse_query(AlertsQuery, request.query)
    # alerts.sql takes the range as UInt32 seconds back from now: a time in the future is 0 seconds, one
    # more than 136 years back is the most UInt32 holds (before any fired_at a DateTime64(3) can hold).
    since_seconds = min(max((now - parse_time("since", v.since, now)) // NS, 0), UINT32_MAX)
    reader = _reader(request)
    firing, recent = await asyncio.gather(
        reader.rows(QUERIES["alerts-firing"], {"limit": 1000}),
        reader.rows(QUERIES["alerts"], {"since_seconds": since_seconds, "limit": v.limit}),
    )
    return json_response(
        Alerts(
            [shape.firing_alert(r) for r in firing],
            [shape.alert_change(r) for r in recent],
            iso(now - since_seconds * NS),
        )
    )


async def services(request: web.Request) -> web.Response:
    """GET /api/services: what the filter dropdowns offer."""
    since = ServicesQuery.holds.clamp(
        parse_time("since", parse_query(ServicesQuery, request.query).since, time.time_ns())
    )
    rows = await _reader(request).rows(QUERIES["web-services"], {"from_s": since // NS})
    return json_response(
        Services(
            shape.named_counts(rows, "service"),
            shape.named_counts(rows, "model"),
            shape.named_counts(rows, "kind"),
            iso(since),
        )
    )


@dataclass(frozen=True)
class Endpoint:
    path: str
    handler: Any
    query: type[Query]
    summary: str
    response: str  # the Struct the 200 answer is (web/models.py or tracehouse.read.models)
    operation_id: str


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/api/traces", list_traces, TracesQuery, "List traces, newest first, with filters", "TraceList",
             "listTraces"),
    Endpoint("/api/traces/{trace_id}", get_trace, TraceQuery,
             "One trace: every span in tree order with input/output, LLM parameters and messages, prompt "
             "template and variables, documents, exceptions, scores and attributes", "TraceView", "getTrace"),
    Endpoint("/api/traces/{trace_id}/spans/{span_id}", get_span, SpanQuery,
             "One span with its long texts whole", "SpanView", "getSpan"),
    Endpoint("/api/sessions", list_sessions, SessionsQuery,
             "List sessions (conversations: traces sharing a session id), the most recently active first, with "
             "turns, times, tokens, cost, errors, user and the latest scores", "SessionList", "listSessions"),
    Endpoint("/api/sessions/{session_id}", get_session, SessionQuery,
             "One session: every trace in order, each with its input and output and its latest scores",
             "SessionView", "getSession"),
    Endpoint("/api/rollups", rollups, RollupsQuery,
             "Latency p50/p95/p99, calls, errors, tokens and cost over time, by model, service, kind or name",
             "Rollups", "getRollups"),
    Endpoint("/api/alerts", alerts, AlertsQuery, "Alerts firing now and recent alert state changes", "Alerts",
             "getAlerts"),
    Endpoint("/api/services", services, ServicesQuery, "Services, models and kinds, for filters", "Services",
             "getServices"),
)  # fmt: skip
