"""The bodies the OTLP/HTTP spec prescribes, in the encoding of the request.

Success is an `ExportTraceServiceResponse`, with `partial_success` {rejected_spans, error_message} when
some spans were refused (the client must then not retry them); failure is a `google.rpc.Status`
{code, message}. `Status` has three fields and is encoded by hand here so the receiver needs
opentelemetry-proto and nothing from googleapis.
"""

from __future__ import annotations

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

__all__ = [
    "JSON",
    "PROTOBUF",
    "RPC_CODES",
    "export_response",
    "status_body",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# google.rpc.Code for each HTTP status the receiver answers with.
RPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    408: 4,  # DEADLINE_EXCEEDED: the body came too slowly
    413: 8,  # RESOURCE_EXHAUSTED
    415: 3,  # INVALID_ARGUMENT
    500: 13,  # INTERNAL
    503: 14,  # UNAVAILABLE
}

_json = msgspec.json.Encoder()
_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


def export_response(media_type: str, rejected: int = 0, error_message: str = "") -> bytes:
    """An `ExportTraceServiceResponse` body; `partial_success` only when something was rejected or
    there is a warning to pass on (the spec: leave it unset on full success)."""
    if not rejected and not error_message:
        return b"{}" if media_type == JSON else _EMPTY_RESPONSE
    if media_type == JSON:  # int64 as a decimal string, per the protobuf JSON mapping
        partial = {"rejectedSpans": str(rejected), "errorMessage": error_message}
        return _json.encode({"partialSuccess": partial})
    response = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=rejected, error_message=error_message)
    )
    return response.SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def status_body(media_type: str, http_status: int, message: str) -> bytes:
    """A `google.rpc.Status` {code, message} body for an error answer."""
    code = RPC_CODES.get(http_status, 2)  # 2 = UNKNOWN
    if media_type == JSON:
        return _json.encode({"code": code, "message": message})
    text = message.encode("utf-8", "replace")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
