"""The OpenAPI 3.1 description of the JSON API, built from what the server really uses.

Schemas come from the response Structs (the read model, tracehouse.read.models, which the terminal's
`--json` prints too, inside the envelopes of web/models.py) through `msgspec.json.schema_components`, whose
JSON Schema 2020-12 output is what OpenAPI 3.1 speaks; query parameters come the same way from each
endpoint's `Query` Struct (web/api.py), the one the server reads the query into: every parameter with
its type, bounds (minimum/maximum, maxLength, enum) and default. A field or parameter added to the server
therefore appears here by itself, and cannot be described with a range the server does not enforce.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tracehouse.web.api import ENDPOINTS, Query
from tracehouse.web.models import RESPONSE_TYPES
from tracehouse.web.params import MAX_TEXT_CHARS, TIME_RULES, rules
from tracehouse.web.writes import SCORES_PATH, WEB_WRITE_TOKEN_ENV, WEB_WRITES_ENV, ScoreAccepted, ScoreBody

REF = "#/components/schemas/{name}"

_ERRORS = {
    "400": "a parameter is unknown, given twice, or has a value of the wrong type or out of its range",
    "404": "no such trace, span or session",
    "500": "an unexpected server error (details are in the server's log, never in the answer)",
    "502": "ClickHouse answered with an error",
    "503": "ClickHouse cannot be reached, or the schema is missing (run `tracehouse migrate`)",
}


_WRITE_ERRORS = {
    "400": "the body is not a score: the message names the field",
    "403": "writes are not enabled (the message says how), the token is missing or wrong, or the request "
    "came from another site's page",
    "415": "the body is not application/json",
    "503": "Kafka cannot take the score now, or did not acknowledge it in time: retry with the same score_id",
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    found = []
    if "{trace_id}" in path:
        found.append({"name": "trace_id", "in": "path", "required": True, "description": "32 hex digits",
                      "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}})  # fmt: skip
    if "{session_id}" in path:
        found.append({"name": "session_id", "in": "path", "required": True,
                      "description": "the session id (URL-encoded), 1 to 1024 characters",
                      "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS,
                                 "pattern": "\\S"}})  # fmt: skip
    if "{span_id}" in path:
        found.append({"name": "span_id", "in": "path", "required": True, "description": "16 hex digits",
                      "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{16}$"}})  # fmt: skip
    return found


def query_parameters(query: type[Query]) -> list[dict[str, Any]]:
    """The Struct's fields as OpenAPI query parameters, each with the JSON Schema msgspec gives it."""
    _, components = msgspec.json.schema_components([query], ref_template=REF)
    properties = components[query.__name__]["properties"]
    found = []
    for name, rule in rules(query).items():
        schema = dict(properties[name])
        description = schema.pop("description", "")
        if rule.kind == "enum":
            schema = {"type": "string", **schema}
        if rule.kind == "time":
            description = f"{description}. {TIME_RULES}"
            if query.holds is not None:
                description += (f" A time outside {query.holds.describe()} is clamped to it (no row lies outside "
                                "it); the answer's since/until show the range used.")  # fmt: skip
        found.append({"name": name, "in": "query", "required": False, "description": description,
                      "schema": schema})  # fmt: skip
    return found


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    _, components = msgspec.json.schema_components((*RESPONSE_TYPES, ScoreBody, ScoreAccepted), ref_template=REF)
    error_ref = {"$ref": REF.format(name="ApiErrorBody")}
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        parameters = _path_parameters(endpoint.path) + query_parameters(endpoint.query)
        responses: dict[str, Any] = {
            "200": {
                "description": endpoint.summary,
                "content": {"application/json": {"schema": {"$ref": REF.format(name=endpoint.response)}}},
            }
        }
        for status, text in _ERRORS.items():
            if status == "404" and "{" not in endpoint.path:
                continue
            responses[status] = {"description": text, "content": {"application/json": {"schema": error_ref}}}
        paths[endpoint.path] = {
            "get": {
                "operationId": endpoint.operation_id,
                "summary": endpoint.summary,
                "parameters": parameters,
                "responses": responses,
            }
        }
    paths[SCORES_PATH] = {
        "post": {
            "operationId": "postScore",
            "summary": "Score this trace (user feedback, a review): source `human`. Only when writes are enabled "
            f"({WEB_WRITE_TOKEN_ENV} or {WEB_WRITES_ENV}=1); 200 once Kafka holds the score",
            "parameters": _path_parameters(SCORES_PATH),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(name="ScoreBody")}}},
            },
            "responses": {
                "200": {
                    "description": "Kafka holds the score (the same score_id sent again is stored once)",
                    "content": {"application/json": {"schema": {"$ref": REF.format(name="ScoreAccepted")}}},
                },
                **{
                    status: {"description": text, "content": {"application/json": {"schema": error_ref}}}
                    for status, text in _WRITE_ERRORS.items()
                },
            },
        }
    }
    paths["/api/openapi.json"] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "responses": {"200": {"description": "the OpenAPI 3.1 document",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tracehouse web API",
            "version": version,
            "description": "JSON API over the tracehouse ClickHouse tables (spans, traces, "
            "spans_minutely, alerts, scores): traces with their span trees and scores, sessions (conversations), "
            "rollups over time, alerts; and one write, "
            "scores on a trace, off unless enabled. "
            "Times are ISO-8601 UTC; durations are nanoseconds unless the name says otherwise.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": components},
    }
