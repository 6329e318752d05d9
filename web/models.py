"""The JSON API's answers: its envelopes (pages with a cursor, the chart and filter answers that echo their
parameters, errors) around the read model of tracehouse.read.models, which the terminal prints too.

One definition serves three purposes, so they cannot drift apart: handlers build these Structs,
`msgspec.json.schema_components` turns them into the OpenAPI document's schemas, and the tests validate
real responses against those schemas.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from tracehouse.read.models import (
    AlertChange,
    FiringAlert,
    IsoTime,
    NamedCount,
    RollupSeries,
    SessionSummary,
    SessionView,
    SpanView,
    TraceSummary,
    TraceView,
)


class ErrorBody(Struct):
    status: int
    code: Annotated[str, Meta(description="machine-readable: bad_parameter, not_found, clickhouse_unavailable, ...")]
    message: str


class ApiErrorBody(Struct):
    """Every error answer: 400 bad parameter, 404 unknown trace or path, 503/502 ClickHouse, 500 other."""

    error: ErrorBody


# ---- pages and answers ------------------------------------------------------------------------------


class TraceList(Struct):
    traces: list[TraceSummary]
    next_cursor: Annotated[str | None, Meta(description="pass as `cursor` for the next page; null on the last")]
    limit: int
    since: IsoTime
    until: IsoTime


class SessionList(Struct):
    sessions: list[SessionSummary]
    next_cursor: Annotated[str | None, Meta(description="pass as `cursor` for the next page; null on the last")]
    limit: int
    since: IsoTime
    until: IsoTime


class Rollups(Struct):
    since: IsoTime
    until: IsoTime
    since_s: int
    until_s: int
    step_seconds: int
    by: str
    kind: str
    groups_omitted: Annotated[int, Meta(description="groups beyond `max_groups` (the busiest are kept)")]
    series: list[RollupSeries]


class Alerts(Struct):
    firing: list[FiringAlert]
    recent: list[AlertChange]
    since: IsoTime


class Services(Struct):
    services: list[NamedCount]
    models: list[NamedCount]
    kinds: list[NamedCount]
    since: IsoTime


RESPONSE_TYPES: tuple[type[Struct], ...] = (
    TraceList,
    TraceView,
    SpanView,
    SessionList,
    SessionView,
    Rollups,
    Alerts,
    Services,
    ApiErrorBody,
)

_encoder = msgspec.json.Encoder()


def encode(value: Struct) -> bytes:
    return _encoder.encode(value)
