"""The JSON API's handlers: parse and check the parameters, run the named SQL, shape, encode.

Each endpoint's parameters are declared here (`ENDPOINTS`), and the OpenAPI document is built from the
same declarations (web/openapi.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tracehouse.sinks.queries import QUERIES
from tracehouse.web import shape
from tracehouse.web.models import Alerts, Rollups, Services, SpanOut, TraceList, encode
from tracehouse.web.params import (
    NS,
    ApiError,
    Param,
    bad,
    decode_cursor,
    encode_cursor,
    iso,
    parse,
    span_id_of,
    trace_id_of,
)
from tracehouse.web.reader import WEB_QUERIES, Reader

READER = web.AppKey("reader", Reader)

MAX_SPANS = 20_000  # a trace larger than this is cut (and says so): the browser draws what it gets
MAX_SPAN_CHARS = 4 * 1024 * 1024  # the largest span a producer sends (core.schema.MAX_SPAN_BYTES)
STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
TARGET_POINTS = 240
MAX_POINTS = 5000


def _time_params(default_since: str) -> tuple[Param, ...]:
    return (
        Param("since", "time", "start of the time range: a duration back from now (15m, 1h, 7d), an ISO-8601 "
              "time or epoch milliseconds", default_since),
        Param("until", "time", "end of the time range (same forms as since); default: now"),
    )  # fmt: skip


TRACES_PARAMS = (
    Param("service", "string", "traces whose root service is this, or that have a span of this service"),
    Param("status", "enum", "the trace's status", choices=("OK", "ERROR", "UNSET")),
    *_time_params("24h"),
    Param("min_duration_ms", "number", "only traces at least this long", minimum=0),
    Param("min_cost", "number", "only traces that cost at least this many US dollars", minimum=0),
    Param("session_id", "string", "only this session's traces"),
    Param("user_id", "string", "only this user's traces"),
    Param("q", "string", "a trace-id prefix, or text in the root span's name"),
    Param("limit", "integer", "traces per page", 50, minimum=1, maximum=500),
    Param("cursor", "string", "next_cursor from the previous page"),
)
TRACE_PARAMS = (
    Param("max_chars", "integer", "long texts (input, output, messages, prompts) are cut to this many characters",
          20_000, minimum=0, maximum=1_000_000),
)  # fmt: skip
SPAN_PARAMS = (
    Param("max_chars", "integer", "long texts are cut to this many characters", MAX_SPAN_CHARS, minimum=0,
          maximum=MAX_SPAN_CHARS),
)  # fmt: skip
ROLLUP_PARAMS = (
    *_time_params("1h"),
    Param("step_seconds", "integer", "width of one time step (rounded to whole minutes); default: about "
          f"{TARGET_POINTS} steps over the range", minimum=60, maximum=7 * 86400),
    Param("by", "enum", "one series per model, service, kind or span name", "model",
          choices=("model", "service", "kind", "name")),
    Param("kind", "string", "only this span kind; empty: LLM, RETRIEVER, EMBEDDING and RERANKER; '*': every kind",
          ""),
    Param("service", "string", "only this service"),
    Param("model", "string", "only this model"),
    Param("max_groups", "integer", "at most this many series (the busiest)", 8, minimum=1, maximum=50),
)  # fmt: skip
ALERT_PARAMS = (
    Param("since", "time", "recent alert state changes from this time on", "24h"),
    Param("limit", "integer", "at most this many recent changes", 100, minimum=1, maximum=1000),
)
SERVICE_PARAMS = (Param("since", "time", "services, models and kinds seen since this time", "7d"),)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=body if isinstance(body, bytes) else encode(body), status=status,
                        content_type="application/json")  # fmt: skip


def _reader(request: web.Request) -> Reader:
    return request.app[READER]


def _range(values: dict[str, Any], now_ns: int) -> tuple[int, int]:
    since, until = values["since"], values["until"] or now_ns
    if since >= until:
        raise bad(f"since ({iso(since)}) must be before until ({iso(until)})")
    return since, until


async def list_traces(request: web.Request) -> web.Response:
    """GET /api/traces: one page of traces, newest first, with the filters of the traces list."""
    now = time.time_ns()
    v = parse(request.query, TRACES_PARAMS, now)
    since, until = _range(v, now)
    cursor_ns, cursor_id = decode_cursor(v["cursor"]) if v["cursor"] else (0, "")
    limit = int(v["limit"])
    rows = await _reader(request).rows(
        WEB_QUERIES["web-traces"],
        {
            "from_ns": since,
            "until_ns": until,
            "service": v["service"],
            "status": v["status"],
            "min_duration_ns": int((v["min_duration_ms"] or 0) * 1e6),
            "min_cost": v["min_cost"] or 0.0,
            "session_id": v["session_id"],
            "user_id": v["user_id"],
            "q": v["q"],
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


async def get_trace(request: web.Request) -> web.Response:
    """GET /api/traces/{trace_id}: every span, in tree order, with all its details, in one answer."""
    trace_id = trace_id_of(request.match_info["trace_id"])
    v = parse(request.query, TRACE_PARAMS)
    max_chars = int(v["max_chars"])
    rows = await _reader(request).rows(
        WEB_QUERIES["web-trace-spans"],
        {"trace_id": trace_id, "max_chars": max_chars, "max_doc_chars": min(max_chars, 4000),
         "max_spans": MAX_SPANS + 1},
    )  # fmt: skip
    truncated = len(rows) > MAX_SPANS

    def build() -> bytes | None:
        detail = shape.trace_detail(trace_id, rows[:MAX_SPANS], max_chars=max_chars, truncated=truncated)
        return None if detail is None else encode(detail)

    # Building and encoding a trace of thousands of spans takes milliseconds to tens of them: off the loop.
    body = await asyncio.to_thread(build)
    if body is None:
        raise ApiError(404, "not_found", f"trace {trace_id} not found")
    return json_response(body)


async def get_span(request: web.Request) -> web.Response:
    """GET /api/traces/{trace_id}/spans/{span_id}: one span with its long texts whole (up to max_chars)."""
    trace_id = trace_id_of(request.match_info["trace_id"])
    span_id = span_id_of(request.match_info["span_id"])
    v = parse(request.query, SPAN_PARAMS)
    max_chars = int(v["max_chars"])
    reader = _reader(request)
    rows = await reader.rows(
        WEB_QUERIES["web-trace-spans"],
        {"trace_id": trace_id, "span_id": span_id, "max_chars": max_chars, "max_doc_chars": max_chars,
         "max_spans": 1},
    )  # fmt: skip
    if not rows:
        raise ApiError(404, "not_found", f"span {span_id} of trace {trace_id} not found")
    start = await reader.rows(WEB_QUERIES["web-trace-start"], {"trace_id": trace_id})
    trace_start = int(start[0]["start_ns"]) if start and start[0]["start_ns"] else int(rows[0]["start_ns"])
    span: SpanOut = shape.span_out(rows[0], trace_start)
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
    v = parse(request.query, ROLLUP_PARAMS, now)
    since, until = _range(v, now)
    since_s, until_s = since // NS, -(-until // NS)
    step = pick_step(until_s - since_s, v["step_seconds"])
    since_s = since_s // step * step
    until_s = -(-until_s // step) * step
    kind = v["kind"].upper() if v["kind"] != "*" else "*"
    rows = await _reader(request).rows(
        WEB_QUERIES["web-rollups"],
        {"from_s": since_s, "until_s": until_s, "step_seconds": step, "by": v["by"], "kind": kind,
         "service": v["service"], "model": v["model"]},
    )  # fmt: skip
    series, omitted = shape.rollup_series(rows, int(v["max_groups"]))
    return json_response(
        Rollups(iso(since_s * NS), iso(until_s * NS), since_s, until_s, step, v["by"], kind, omitted, series)
    )


async def alerts(request: web.Request) -> web.Response:
    """GET /api/alerts: what fires now (however long ago it fired), and recent state changes."""
    now = time.time_ns()
    v = parse(request.query, ALERT_PARAMS, now)
    since_seconds = max((now - v["since"]) // NS, 0)
    reader = _reader(request)
    firing, recent = await asyncio.gather(
        reader.rows(QUERIES["alerts-firing"], {"limit": 1000}),
        reader.rows(QUERIES["alerts"], {"since_seconds": since_seconds, "limit": int(v["limit"])}),
    )
    return json_response(
        Alerts([shape.firing_alert(r) for r in firing], [shape.alert_change(r) for r in recent], iso(v["since"]))
    )


async def services(request: web.Request) -> web.Response:
    """GET /api/services: what the filter dropdowns offer."""
    v = parse(request.query, SERVICE_PARAMS)
    rows = await _reader(request).rows(WEB_QUERIES["web-services"], {"from_s": v["since"] // NS})
    return json_response(
        Services(
            shape.named_counts(rows, "service"),
            shape.named_counts(rows, "model"),
            shape.named_counts(rows, "kind"),
            iso(v["since"]),
        )
    )


@dataclass(frozen=True)
class Endpoint:
    path: str
    handler: Any
    params: tuple[Param, ...]
    summary: str
    response: str  # the models.py Struct the 200 answer is
    operation_id: str


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/api/traces", list_traces, TRACES_PARAMS, "List traces, newest first, with filters", "TraceList",
             "listTraces"),
    Endpoint("/api/traces/{trace_id}", get_trace, TRACE_PARAMS,
             "One trace: every span in tree order with input/output, LLM parameters and messages, prompt "
             "template and variables, documents, exceptions, scores and attributes", "TraceDetail", "getTrace"),
    Endpoint("/api/traces/{trace_id}/spans/{span_id}", get_span, SPAN_PARAMS,
             "One span with its long texts whole", "SpanOut", "getSpan"),
    Endpoint("/api/rollups", rollups, ROLLUP_PARAMS,
             "Latency p50/p95/p99, calls, errors, tokens and cost over time, by model, service, kind or name",
             "Rollups", "getRollups"),
    Endpoint("/api/alerts", alerts, ALERT_PARAMS, "Alerts firing now and recent alert state changes", "Alerts",
             "getAlerts"),
    Endpoint("/api/services", services, SERVICE_PARAMS, "Services, models and kinds, for filters", "Services",
             "getServices"),
)  # fmt: skip
