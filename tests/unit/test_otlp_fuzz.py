"""Fuzzing the receiver's two decoders (OTLP protobuf and OTLP/JSON) into the mapping and the span limits.

`ingest` is everything the receiver does with a body before answering, so an exception other than a
`RequestError` escaping it is a 500. The property, for arbitrary bytes and for structurally valid but
hostile requests (attribute values of every type and nesting, ids of any length, invalid UTF-8, times
of any size, NaN and infinite doubles, enums out of range, too many parts), in both encodings and
compressed or not:

- either `ingest` raises a `RequestError` (400 or 413) with a reason,
- or it returns spans plus per-span rejections, each rejection with a reason, and every span it accepts
  passes the pipeline's validation and fits one Kafka message under the span limits in force.

Example counts are sized for about 20-40 s on a CI runner (`FUZZ_SCALE` multiplies them for a longer
run: `FUZZ_SCALE=10 pytest tests/unit/test_otlp_fuzz.py`).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from otlp_values import any_value

from tracehouse.core.schema import decode_span, encode_batch, encode_span
from tracehouse.producers.otlp.errors import RequestError
from tracehouse.producers.otlp.ingest import IngestResult, ingest
from tracehouse.producers.span_limits import ENVELOPE_BYTES, MAX_MESSAGE_BYTES, SpanLimits

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
MARKER = "\x01BADUTF8\x01"  # replaced by invalid UTF-8 bytes after encoding (same length)
INVALID_UTF8 = b"\xff\xc0\x80\xed\xa0\x80\xfe\xf8\xc1"  # 9 bytes, like MARKER: lone surrogate, overlong...
START = 1_750_000_000_000_000_000
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


# ---- what must hold -----------------------------------------------------------------------------


def check(body: bytes, media: str, encoding: str = "", limits: SpanLimits | None = None, limit: int = 32_768) -> None:
    """The property, for one body: a RequestError with a reason, or spans that fit and reasons that say."""
    limits = limits or SpanLimits()
    try:
        result = ingest(body, media, encoding, 4 * 1024 * 1024, limit, limits)
    except RequestError as exc:
        assert exc.status in (400, 413), exc.status
        assert exc.reason.strip(), "a refusal without a reason"
        return
    assert isinstance(result, IngestResult)
    assert result.rejected >= len(result.reasons) and all(r.strip() for r in result.reasons)
    assert bool(result.rejected or result.trimmed) == bool(result.error_message)
    for span in result.spans:
        assert len(encode_batch([span])) <= limits.max_span_bytes + ENVELOPE_BYTES
        assert decode_span(encode_span(span)) == span  # the worker would take it as it is


LIMITS = st.builds(
    SpanLimits,
    attributes=st.integers(1, 40),
    events=st.integers(1, 8),
    event_attributes=st.integers(1, 6),
    links=st.integers(1, 4),
    max_span_bytes=st.sampled_from([1_500, 6_000, 60_000, MAX_MESSAGE_BYTES - ENVELOPE_BYTES]),
)


def poison(data: bytes) -> bytes:
    """Every MARKER in an encoded body becomes invalid UTF-8 of the same length (lengths stay valid)."""
    return data.replace(MARKER.encode(), INVALID_UTF8)


# ---- arbitrary bytes ----------------------------------------------------------------------------


@settings(max_examples=examples(1500), **SETTINGS)
@given(body=st.binary(max_size=3000), media=st.sampled_from([PROTOBUF, JSON]))
def test_arbitrary_bytes(body: bytes, media: str) -> None:
    for encoding in ("", "gzip", "deflate"):
        check(body, media, encoding)
    check(gzip.compress(body), media, "gzip")  # valid compression around garbage


# ---- hostile but well-formed protobuf -----------------------------------------------------------

LONG = "x" * 5000
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(["", MARKER, "gen_ai.request.model", "llm.input_messages.0.message.content", LONG]),
)
KEYS = st.one_of(
    TEXT,
    st.sampled_from([
        "openinference.span.kind", "input.value", "llm.model_name", "llm.token_count.prompt", "metadata",
        "gen_ai.input.messages", "gen_ai.retrieval.documents", "llm.invocation_parameters", "tag.tags",
        "gen_ai.usage.input_tokens", "retrieval.documents.3.document.score", "error.type", "session.id",
        "llm.output_messages.2.message.tool_calls.0.tool_call.function.arguments",
        "embedding.embeddings.0.embedding.vector",
    ]),
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.binary(max_size=40),
    st.sampled_from(['{"a": [1, {"b": null}]}', "[1, 2, 3]", '[{"role": "user", "parts": 5}]', "NaN", "1e999"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=12,
)


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, written by hand (the library refuses to build too-deep ones)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_bytes(depth: int) -> bytes:
    """An AnyValue holding an array `depth` levels deep, as wire bytes."""
    value = AnyValue(string_value="bottom").SerializeToString()
    for _ in range(depth):
        value = field(5, field(1, value))  # AnyValue.array_value -> ArrayValue.values
    return value


def ids(size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(min_size=size, max_size=size), st.binary(max_size=2 * size + 2), st.just(bytes(size)))


TIMES = st.one_of(
    st.integers(START, START + 10**12),
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 946_684_800_000_000_000 - 1, 2**63 - 1, 2**63, 2**64 - 1]),
)
ATTRIBUTES = st.dictionaries(KEYS, VALUES, max_size=8)
EVENTS = st.lists(st.tuples(TEXT, TIMES, ATTRIBUTES, st.integers(0, 2**32 - 1)), max_size=4)
LINKS = st.lists(st.tuples(ids(16), ids(8), ATTRIBUTES, TEXT), max_size=3)
SPANS = st.fixed_dictionaries({
    "trace_id": ids(16), "span_id": ids(8), "parent_span_id": st.one_of(st.just(b""), ids(8)),
    "name": TEXT, "kind": st.integers(-(2**31), 2**31 - 1), "start": TIMES, "duration": st.integers(-(10**12), 10**15),
    "status": st.integers(-(2**31), 2**31 - 1), "message": TEXT, "attributes": ATTRIBUTES, "events": EVENTS,
    "links": LINKS, "trace_state": TEXT, "dropped": st.integers(0, 2**32 - 1),
    "many_attributes": st.sampled_from([0, 0, 0, 60, 300]), "many_events": st.sampled_from([0, 0, 0, 20, 200]),
    "deep": st.sampled_from([0, 0, 0, 5, 20, 46]),  # two messages per level
})  # fmt: skip


def fill_span(sp: Any, spec: dict[str, Any]) -> None:
    sp.trace_id, sp.span_id, sp.parent_span_id = spec["trace_id"], spec["span_id"], spec["parent_span_id"]
    sp.name, sp.kind, sp.trace_state = spec["name"], spec["kind"], spec["trace_state"]
    sp.start_time_unix_nano = spec["start"]
    sp.end_time_unix_nano = min(max(spec["start"] + spec["duration"], 0), 2**64 - 1)
    sp.status.code, sp.status.message = spec["status"], spec["message"]
    sp.dropped_attributes_count = sp.dropped_events_count = sp.dropped_links_count = spec["dropped"]
    sp.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in spec["attributes"].items())
    sp.attributes.extend(KeyValue(key=f"bulk.{i}", value=AnyValue(int_value=i)) for i in range(spec["many_attributes"]))
    if spec["deep"]:  # below protobuf's own limit of 100 levels, which makes building deeper ones fail
        sp.attributes.add(key="deep").value.MergeFromString(nested_bytes(spec["deep"]))
    for name, time_ns, attributes, dropped in spec["events"]:
        event = sp.events.add(name=name, time_unix_nano=time_ns, dropped_attributes_count=dropped)
        event.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in attributes.items())
    for i in range(spec["many_events"]):
        sp.events.add(name=f"chunk-{i}", time_unix_nano=spec["start"])
    for trace_id, span_id, attributes, state in spec["links"]:
        link = sp.links.add(trace_id=trace_id, span_id=span_id, trace_state=state)
        link.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in attributes.items())


REQUESTS = st.lists(  # resources -> scopes -> spans
    st.tuples(
        ATTRIBUTES,
        st.lists(st.tuples(TEXT, TEXT, ATTRIBUTES, st.lists(SPANS, max_size=3)), max_size=2),
    ),
    max_size=2,
)


def protobuf_request(resources: list[Any]) -> bytes:
    request = ExportTraceServiceRequest()
    for resource, scopes in resources:
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in resource.items())
        for name, version, scope_attributes, spans in scopes:
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name, scope_spans.scope.version = name, version
            scope_spans.scope.attributes.extend(
                KeyValue(key=k, value=any_value(v)) for k, v in scope_attributes.items()
            )
            for spec in spans:
                fill_span(scope_spans.spans.add(), spec)
    return request.SerializeToString()


@settings(max_examples=examples(400), **SETTINGS)
@given(
    resources=REQUESTS,
    limits=LIMITS,
    limit=st.sampled_from([16, 200, 32_768]),
    mutations=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_hostile_protobuf_requests(
    resources: list[Any], limits: SpanLimits, limit: int, mutations: list[tuple[int, int]], cut: int | None
) -> None:
    body = poison(protobuf_request(resources))
    check(body, PROTOBUF, "", limits, limit)
    if mutations or cut is not None:  # flipped bytes and a cut body: wire damage past the envelope
        damaged = bytearray(body)
        for position, byte in mutations:
            if damaged:
                damaged[position % len(damaged)] = byte
        check(bytes(damaged[: cut if cut is not None else len(damaged)]), PROTOBUF, "", limits, limit)
    check(zlib.compress(body), PROTOBUF, "deflate", limits, limit)


# ---- hostile but well-formed OTLP/JSON ----------------------------------------------------------

JSON_ANY = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


def maybe(proper: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape for the field, sometimes any JSON value at all."""
    return st.one_of(proper, proper, proper, JSON_ANY)


def json_value(value: Any) -> Any:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value if value == value and abs(value) != float("inf") else str(value)}
    if isinstance(value, bytes):
        return {"bytesValue": value.hex()}  # not base64: the decoder must keep it, not crash
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [json_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": json_value(v)} for k, v in value.items()]}}
    return {}


JSON_ATTRIBUTES = maybe(
    st.lists(
        st.fixed_dictionaries({"key": maybe(KEYS), "value": st.one_of(VALUES.map(json_value), JSON_ANY)}),
        max_size=10,
    )
)
JSON_IDS = st.one_of(
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.binary(min_size=8, max_size=8).map(bytes.hex),
    st.text(max_size=40),
    JSON_ANY,
)
JSON_TIMES = st.one_of(
    TIMES.map(str), TIMES, st.sampled_from(["-5", "1e30", "99999999999999999999999999", "soon", ""]), JSON_ANY
)
JSON_EVENTS = maybe(
    st.lists(
        maybe(st.fixed_dictionaries({"name": maybe(TEXT), "timeUnixNano": JSON_TIMES, "attributes": JSON_ATTRIBUTES})),
        max_size=6,
    )
)
JSON_SPANS = st.fixed_dictionaries(
    {
        "traceId": JSON_IDS, "spanId": JSON_IDS, "parentSpanId": JSON_IDS, "name": maybe(TEXT),
        "kind": maybe(st.one_of(st.integers(-3, 9), st.sampled_from(["SPAN_KIND_SERVER", "SPAN_KIND_NOPE"]))),
        "startTimeUnixNano": JSON_TIMES, "endTimeUnixNano": JSON_TIMES,
        "attributes": JSON_ATTRIBUTES, "events": JSON_EVENTS,
        "links": maybe(st.lists(maybe(st.fixed_dictionaries(
            {"traceId": JSON_IDS, "spanId": JSON_IDS, "attributes": JSON_ATTRIBUTES})), max_size=4)),
        "status": maybe(st.fixed_dictionaries({"code": maybe(st.integers(-3, 5)), "message": maybe(TEXT)})),
        "droppedAttributesCount": maybe(st.integers(0, 2**32)),
    },
)  # fmt: skip
JSON_REQUESTS = maybe(
    st.fixed_dictionaries(
        {
            "resourceSpans": maybe(
                st.lists(
                    maybe(
                        st.fixed_dictionaries(
                            {
                                "resource": maybe(st.fixed_dictionaries({"attributes": JSON_ATTRIBUTES})),
                                "scopeSpans": maybe(
                                    st.lists(
                                        maybe(
                                            st.fixed_dictionaries(
                                                {
                                                    "scope": maybe(st.fixed_dictionaries({"name": maybe(TEXT)})),
                                                    "spans": maybe(st.lists(maybe(JSON_SPANS), max_size=4)),
                                                }
                                            )
                                        ),
                                        max_size=3,
                                    )
                                ),
                            }
                        )
                    ),
                    max_size=3,
                )
            )
        }
    )
)


@settings(max_examples=examples(3000), **SETTINGS)
@given(document=JSON_REQUESTS, limits=LIMITS, limit=st.sampled_from([16, 200, 32_768]), snake=st.booleans())
def test_hostile_json_requests(document: Any, limits: SpanLimits, limit: int, snake: bool) -> None:
    text = json.dumps(document)
    if snake:  # the original field names, which the decoder also reads
        text = text.replace('"resourceSpans"', '"resource_spans"').replace('"scopeSpans"', '"scope_spans"')
    body = poison(text.encode())
    check(body, JSON, "", limits, limit)
    check(gzip.compress(body), JSON, "gzip", limits, limit)


def test_deep_nesting_and_huge_parts_are_answered_not_crashed() -> None:
    """The cases a generator reaches rarely, once each: 10,000-deep JSON, a 150-deep protobuf value,
    and spans far past every limit."""
    check(b"[" * 10_000 + b"]" * 10_000, JSON)
    deep = '{"arrayValue": {"values": [' * 10_000 + '{"stringValue": "bottom"}' + "]}}" * 10_000
    span = (
        f'{{"traceId": "{"ab" * 16}", "spanId": "{"cd" * 8}", "startTimeUnixNano": {START},'
        f' "endTimeUnixNano": {START}, "attributes": [{{"key": "deep", "value": {deep}}}]}}'
    )
    check(f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}'.encode(), JSON)
    request = ExportTraceServiceRequest()
    sp = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes.fromhex("ab" * 16), span_id=bytes.fromhex("cd" * 8),
        start_time_unix_nano=START, end_time_unix_nano=START,
    )  # fmt: skip
    for depth in (99, 100, 101, 150, 5_000):  # protobuf's parser stops at 100 levels
        attribute = field(9, field(1, b"deep") + field(2, nested_bytes(depth)))  # Span.attributes
        body = field(1, field(2, field(2, sp.SerializeToString() + attribute)))  # request/resource/scope
        check(body, PROTOBUF)
    sp.attributes.extend(KeyValue(key=f"k{i}", value=AnyValue(string_value="v" * 40)) for i in range(30_000))
    for i in range(5_000):
        sp.events.add(name="e", time_unix_nano=START + i).attributes.add(key="a", value=AnyValue(double_value=i))
    check(request.SerializeToString(), PROTOBUF)
