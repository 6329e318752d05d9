"""The OpenAPI 3.1 description of the JSON API, built from what the server really uses.

Schemas come from the response Structs (web/models.py) through `msgspec.json.schema_components`, whose
JSON Schema 2020-12 output is what OpenAPI 3.1 speaks; parameters come from each endpoint's `Param`
declarations (web/api.py). A field or parameter added to the server therefore appears here by itself.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tracehouse.web.api import ENDPOINTS
from tracehouse.web.models import RESPONSE_TYPES

REF = "#/components/schemas/{name}"

_ERRORS = {
    "400": "a parameter is unknown or has a bad value",
    "404": "no such trace or span",
    "500": "an unexpected server error (details are in the server's log, never in the answer)",
    "502": "ClickHouse answered with an error",
    "503": "ClickHouse cannot be reached, or the schema is missing (run `tracehouse migrate`)",
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    found = []
    if "{trace_id}" in path:
        found.append({"name": "trace_id", "in": "path", "required": True, "description": "32 hex digits",
                      "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}})  # fmt: skip
    if "{span_id}" in path:
        found.append({"name": "span_id", "in": "path", "required": True, "description": "16 hex digits",
                      "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{16}$"}})  # fmt: skip
    return found


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    _, components = msgspec.json.schema_components(RESPONSE_TYPES, ref_template=REF)
    error_ref = {"$ref": REF.format(name="ApiErrorBody")}
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        parameters = _path_parameters(endpoint.path) + [
            {"name": p.name, "in": "query", "required": False, "description": p.description, "schema": p.schema()}
            for p in endpoint.params
        ]
        responses: dict[str, Any] = {
            "200": {
                "description": endpoint.summary,
                "content": {"application/json": {"schema": {"$ref": REF.format(name=endpoint.response)}}},
            }
        }
        for status, text in _ERRORS.items():
            if status == "404" and "{trace_id}" not in endpoint.path:
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
            "description": "Read-only JSON API over the tracehouse ClickHouse tables (spans, traces, "
            "spans_minutely, alerts): traces with their span trees, rollups over time, alerts. "
            "Times are ISO-8601 UTC; durations are nanoseconds unless the name says otherwise.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": components},
    }
