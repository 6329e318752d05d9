"""Span limits: a span with too many parts is trimmed with a marker, or refused with the reason, before
anyone is told it was accepted; a normal span is left exactly as it was.

The first part checks the rules where they live (`span_limits`, the SDK's tracer, `ingest`); the second
posts such spans to a real `tracehouse receiver` process in front of the session's Apache Kafka, with a
real sink writing to the ClickHouse engine, and reads the answer and the stored rows.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from otlp_values import any_value
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.schema import Document, Event, Span, encode_batch, encode_span
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers import InMemoryTransport, Tracer
from tracehouse.producers.otlp.ingest import ingest
from tracehouse.producers.payload import DEFAULT_MAX_PAYLOAD_BYTES
from tracehouse.producers.span_limits import (
    DROPPED_ATTRIBUTES,
    DROPPED_EVENTS,
    DROPPED_LINKS,
    EVENT_COUNT_ENV,
    MAX_MESSAGE_BYTES,
    SpanLimits,
    SpanTooLarge,
    bounded_by_source,
    fit_span,
    limit_counts,
)
from tracehouse.producers.span_messages import SpanMessageEncoder, encode_encoded_batch
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NOW = time.time_ns()
LIMITS = SpanLimits(attributes=100, events=10, event_attributes=5, links=3)


def span(**fields: Any) -> Span:
    base: dict[str, Any] = dict(trace_id="ab" * 16, span_id="cd" * 8, name="op", start_time_ns=NOW, end_time_ns=NOW + 1)
    return Span(**{**base, **fields})


# ---- the rules ----------------------------------------------------------------------------------


def test_a_span_within_the_limits_is_returned_untouched() -> None:
    normal = span(
        attributes={f"k{i}": "v" for i in range(100)},
        events=[Event(name="e", time_ns=NOW, attributes={"a": "1"}) for _ in range(10)],
    )
    before = encode_span(normal)
    fitted, note = fit_span(normal, LIMITS)
    assert fitted is normal and note == "" and encode_span(fitted) == before


def test_attributes_past_the_limit_are_dropped_and_counted_keeping_tracehouse_own() -> None:
    attributes = {f"k{i}": "v" for i in range(1000)}
    attributes["error.type"] = "rate_limit"  # set last (as `record_exception` does): still kept
    attributes["otel.span_kind"] = "CLIENT"
    fitted, note = fit_span(span(attributes=attributes), LIMITS)
    kept = fitted.attributes
    assert list(kept)[:100] == [f"k{i}" for i in range(100)]
    assert kept["error.type"] == "rate_limit" and kept["otel.span_kind"] == "CLIENT"
    assert kept[DROPPED_ATTRIBUTES] == "900" and len(kept) == 103
    assert note == "900 attributes dropped (limit 100)"
    assert len(attributes) == 1002  # the caller's dict is replaced, never changed


def test_events_past_the_limit_keep_the_first_and_last_halves() -> None:
    events = [Event(name=f"chunk-{i}", time_ns=NOW + i) for i in range(1000)]
    events.append(Event(name="exception", time_ns=NOW + 1000, attributes={f"a{i}": "x" for i in range(50)}))
    fitted, note = fit_span(span(events=events), LIMITS)
    names = [e.name for e in fitted.events]
    assert names == [f"chunk-{i}" for i in range(5)] + [f"chunk-{i}" for i in range(996, 1000)] + ["exception"]
    assert fitted.attributes[DROPPED_EVENTS] == "991"
    last = fitted.events[-1].attributes
    assert len(last) == 6 and last[DROPPED_ATTRIBUTES] == "45"
    assert note == "991 events dropped (limit 10), event attributes dropped (limit 5 per event)"


def test_counts_add_up_across_two_trims() -> None:
    """An SDK span trimmed in the app and trimmed again by a relay reports the sum of both."""
    once, _ = limit_counts(span(attributes={f"k{i}": "v" for i in range(300)}), LIMITS)
    once.attributes = {f"more{i}": "v" for i in range(200)} | once.attributes
    twice, _ = limit_counts(once, LIMITS)
    assert twice.attributes[DROPPED_ATTRIBUTES] == "400"  # 500 set, 100 kept


def test_a_span_with_long_texts_is_cut_to_fit_one_message() -> None:
    documents = [Document(id=f"d{i}", content="x" * 30_000, position=i) for i in range(60)]
    fitted, note = fit_span(span(documents=documents, resource={"r": "y" * 30_000}), LIMITS)
    assert len(encode_batch([fitted])) <= MAX_MESSAGE_BYTES
    assert note.startswith("texts cut to fit one message (was ")
    assert fitted.documents[0].content.startswith("x") and "[truncated" in fitted.documents[0].content


def test_a_span_that_cannot_fit_is_refused_with_the_reason() -> None:
    documents = [Document(id=f"doc-{i}", content="c", position=i) for i in range(80_000)]
    with pytest.raises(SpanTooLarge) as info:
        fit_span(span(documents=documents), LIMITS)
    assert "cannot fit one 900000-byte message even with its texts cut" in info.value.reason
    assert "80000 documents" in info.value.reason


def test_limits_from_the_environment() -> None:
    assert SpanLimits.from_env({}) == SpanLimits()
    assert SpanLimits.from_env({EVENT_COUNT_ENV: "64"}).events == 64
    for bad in ("0", "-3", "many", "1e3"):
        with pytest.raises(ValueError, match=EVENT_COUNT_ENV):
            SpanLimits.from_env({EVENT_COUNT_ENV: bad})


def test_the_sdk_applies_the_same_limits_when_a_span_ends() -> None:
    transport = InMemoryTransport()
    tracer = Tracer("svc", transport, span_limits=LIMITS)
    with tracer.span("many") as live:
        for i in range(250):
            live.set_attribute(f"k{i}", i)
        for i in range(30):
            live.add_event(f"tick-{i}")
    with tracer.span("few") as live:
        live.set_attribute("k", "v")
        live.add_event("tick")
    many, few = transport.spans
    assert len(many.attributes) == 102 and many.attributes[DROPPED_ATTRIBUTES] == "150"  # + the 2 markers
    assert len(many.events) == 10 and many.attributes[DROPPED_EVENTS] == "20"
    assert few.attributes == {"k": "v"} and [e.name for e in few.events] == ["tick"]


# ---- through ingest (decode + map + limits) -----------------------------------------------------


def protobuf_body(spans: list[dict[str, Any]]) -> bytes:
    """`spans`: {"span_id", "attributes": {k: str}, "events": n, "links": n, "trace_id"}."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value="limits-svc"))
    scope_spans = resource_spans.scope_spans.add()
    for item in spans:
        sp = scope_spans.spans.add(
            trace_id=bytes.fromhex(item["trace_id"]), span_id=bytes.fromhex(item["span_id"]), name="op",
            start_time_unix_nano=NOW, end_time_unix_nano=NOW + 1_000_000, kind=1,
        )  # fmt: skip
        sp.attributes.extend(KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in item["attributes"].items())
        for i in range(item.get("events", 0)):
            sp.events.add(name=f"chunk-{i}", time_unix_nano=NOW + i)
        for _ in range(item.get("links", 0)):
            sp.links.add(trace_id=os.urandom(16), span_id=os.urandom(8))
    return request.SerializeToString()


def json_body(spans: list[dict[str, Any]]) -> bytes:
    documents = [
        {
            "traceId": item["trace_id"],
            "spanId": item["span_id"],
            "name": "op",
            "kind": 1,
            "startTimeUnixNano": str(NOW),
            "endTimeUnixNano": str(NOW + 1_000_000),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in item["attributes"].items()],
            "events": [{"name": f"chunk-{i}", "timeUnixNano": str(NOW + i)} for i in range(item.get("events", 0))],
        }
        for item in spans
    ]
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "limits-svc"}}]}
    return json.dumps({"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": documents}]}]}).encode()


def many_attributes(n: int) -> dict[str, str]:
    return {f"attr.{i:06d}": "val" for i in range(n)}


def test_the_bytes_measured_for_the_limits_are_the_bytes_the_sender_sends() -> None:
    """A large body's spans are encoded once, to measure them; the sender's messages made from those
    bytes are byte for byte the messages it makes by encoding the spans itself."""
    items = [{"trace_id": os.urandom(16).hex(), "span_id": os.urandom(8).hex(),
              "attributes": {"input.value": "x" * 2000, f"k{i}": "v" * (i % 50)}, "events": i % 3}
             for i in range(120)]  # fmt: skip
    body = protobuf_body(items)
    assert not bounded_by_source(len(body), SpanLimits(), DEFAULT_MAX_PAYLOAD_BYTES)  # so it is measured
    result = ingest(body, PROTOBUF)
    assert len(result.encoded) == len(result.spans) == 120
    assert result.encoded == [encode_span(s) for s in result.spans]
    assert encode_encoded_batch(result.encoded) == encode_batch(result.spans)

    encoder = SpanMessageEncoder(batch_spans=50, max_message_bytes=40_000)  # forces splits by size too
    by_id = {id(s): data for s, data in zip(result.spans, result.encoded, strict=True)}
    again: list[Span] = []
    made = encoder.messages(result.spans, 4, again, by_id)
    assert made == encoder.messages(result.spans, 4, []) and not again
    assert len(made) > 4
    small = ingest(protobuf_body(items[:2]), PROTOBUF)  # a small body is not measured: no bytes to reuse
    assert small.encoded == [] and len(small.spans) == 2


@pytest.mark.parametrize("media", [PROTOBUF, JSON])
def test_ingest_trims_and_says_so_in_the_partial_success_message(media: str) -> None:
    trace = os.urandom(16).hex()
    spans = [
        {"trace_id": trace, "span_id": "a1" * 8, "attributes": many_attributes(5000), "events": 40},
        {"trace_id": trace, "span_id": "b2" * 8, "attributes": {"k": "v"}},
    ]
    body = protobuf_body(spans) if media == PROTOBUF else json_body(spans)
    result = ingest(body, media, limits=LIMITS)
    big, normal = result.spans
    assert result.rejected == 0 and result.trimmed == 1
    assert result.error_message == (
        f"1 span(s) accepted trimmed: span {'a1' * 8} of trace {trace}: 30 events dropped (limit 10), "
        "4,900 attributes dropped (limit 100)"
    )
    assert big.attributes[DROPPED_ATTRIBUTES] == "4900" and big.attributes[DROPPED_EVENTS] == "30"
    assert len(big.events) == 10
    assert normal.attributes == {"k": "v"} and normal.events == []


def test_ingest_keeps_links_up_to_the_limit_and_the_senders_own_dropped_counts() -> None:
    trace = os.urandom(16).hex()
    request = ExportTraceServiceRequest.FromString(
        protobuf_body([{"trace_id": trace, "span_id": "c3" * 8, "attributes": {}, "links": 7, "events": 1}])
    )
    sp = request.resource_spans[0].scope_spans[0].spans[0]
    sp.dropped_attributes_count = 12
    sp.events[0].dropped_attributes_count = 4
    sp.links[0].dropped_attributes_count = 2
    result = ingest(request.SerializeToString(), PROTOBUF, limits=LIMITS)
    (mapped,) = result.spans
    links = json.loads(mapped.attributes["otel.links"])
    assert len(links) == 3 and mapped.attributes[DROPPED_LINKS] == "4"
    assert links[0]["dropped_attributes_count"] == 2 and "dropped_attributes_count" not in links[1]
    assert mapped.attributes["otel.dropped_attributes_count"] == "12"
    assert mapped.events[0].attributes["otel.dropped_attributes_count"] == "4"
    assert "4 links dropped (limit 3)" in result.error_message


# ---- the size bound that lets small bodies skip measuring ---------------------------------------

HOSTILE_STRINGS = st.one_of(
    st.text(alphabet='\x00\x01\x1f"\\', max_size=40),  # 6 bytes each once JSON-escaped inside an array
    st.text(max_size=20),
    st.just(""),
)
HOSTILE_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=True),
        HOSTILE_STRINGS,
        st.binary(max_size=8),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=30), st.dictionaries(HOSTILE_STRINGS, inner, max_size=6)),
    max_leaves=60,
)


def json_value(value: Any, bare: bool) -> Any:
    """OTLP/JSON's AnyValue, or (`bare`) the plain JSON value the lenient decoder also takes."""
    if bare and not isinstance(value, dict):
        if isinstance(value, list):
            return [json_value(v, bare) for v in value]
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return value if not isinstance(value, float) or math.isfinite(value) else None
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value if math.isfinite(value) else str(value).replace("inf", "Infinity")}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [json_value(v, bare) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": json_value(v, bare)} for k, v in value.items()]}}
    return {}


def assert_within_bound(body: bytes, media: str) -> None:
    (mapped,) = ingest(body, media, limits=SpanLimits()).spans
    size = len(encode_span(mapped))
    # Had the limit been one byte less than this span, the bound must not have called the body safe.
    assert not bounded_by_source(len(body), SpanLimits(max_span_bytes=size - 1), 32 * 1024), (size, len(body))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    attributes=st.dictionaries(st.text(max_size=12), HOSTILE_VALUES, max_size=12),
    events=st.integers(0, 40),
    links=st.integers(0, 5),
    scope_keys=st.lists(st.text(max_size=3), max_size=10),
    bare=st.booleans(),
)
def test_a_mapped_span_is_never_bigger_than_the_bound_of_its_body(
    attributes: dict[str, Any], events: int, links: int, scope_keys: list[str], bare: bool
) -> None:
    """`bounded_by_source` relies on a mapped span being at most EXPANSION times its body plus a
    constant: hostile values (control characters in arrays, doubles, empty events) must not beat it,
    in protobuf or in OTLP/JSON (with AnyValue objects or bare JSON values)."""
    document = {
        "resourceSpans": [{"scopeSpans": [{
            "scope": {"attributes": [{"key": k} for k in scope_keys]},
            "spans": [{
                "traceId": "ab" * 16, "spanId": "cd" * 8, "startTimeUnixNano": NOW, "endTimeUnixNano": NOW,
                "attributes": [{"key": k, "value": json_value(v, bare)} for k, v in attributes.items()],
                "events": [{"droppedAttributesCount": 1}] * events, "links": [{}] * links,
            }],
        }]}]
    }  # fmt: skip
    assert_within_bound(json.dumps(document, separators=(",", ":")).encode(), JSON)
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.attributes.extend(KeyValue(key=k) for k in scope_keys)
    sp = scope_spans.spans.add(
        trace_id=bytes.fromhex("ab" * 16), span_id=bytes.fromhex("cd" * 8),
        start_time_unix_nano=NOW, end_time_unix_nano=NOW,
    )  # fmt: skip
    sp.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in attributes.items())
    for _ in range(events):
        sp.events.add().dropped_attributes_count = 1
    for _ in range(links):
        sp.links.add()
    assert_within_bound(request.SerializeToString(), PROTOBUF)


# ---- against a real receiver, Kafka and ClickHouse ----------------------------------------------


@dataclass
class Stack:
    settings: Settings
    url: str
    receiver: ManagedProcess


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tag = os.urandom(5).hex()
    data_dir: Path = tmp_path_factory.mktemp("limits") / "data"
    config = Settings.from_env(
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=clickhouse_url,
        clickhouse_database=f"test_{tag}",
        data_dir=data_dir,
        worker_group=f"worker-{tag}",
        sink_group=f"sink-{tag}",
        spans_partitions=4,
    )
    asyncio.run(migrate(config.clickhouse))
    env = {**LocalStack(config).child_env(), EVENT_COUNT_ENV: "200"}  # the setting reaches the receiver
    logs = data_dir / "logs"
    port = free_port()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.3"], logs, env).start()
    receiver = ManagedProcess("receiver", ["receiver", "--port", str(port)], logs, env).start()
    try:
        assert sink.wait_for_log("started", timeout=60), sink.log_tail()
        assert receiver.wait_for_log("started on", timeout=60), receiver.log_tail()
        yield Stack(config, f"http://127.0.0.1:{port}", receiver)
    finally:
        receiver.stop()
        sink.stop()


def post(stack: Stack, body: bytes, media: str) -> tuple[int, int, str]:
    """POST to /v1/traces; returns (status, rejected spans, error message) from the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", int(stack.url.rsplit(":", 1)[1]), timeout=60)
    try:
        connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": media})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status == 200, (response.status, answer[:500], stack.receiver.log_tail())
    if media == JSON:
        partial = json.loads(answer).get("partialSuccess", {})
        return response.status, int(partial.get("rejectedSpans", 0)), partial.get("errorMessage", "")
    message = ExportTraceServiceResponse.FromString(answer).partial_success
    return response.status, message.rejected_spans, message.error_message


def stored(stack: Stack, span_ids: list[str], columns: str) -> dict[str, tuple[Any, ...]]:
    client = sync_client(stack.settings.clickhouse)
    try:

        def rows() -> dict[str, tuple[Any, ...]]:
            result = client.query(
                f"SELECT span_id, {columns} FROM spans WHERE span_id IN {{ids:Array(String)}}",
                parameters={"ids": span_ids},
            ).result_rows
            return {row[0]: tuple(row[1:]) for row in result}

        found = wait_until(lambda: len(rows()) == len(span_ids) and rows(), 90)
        assert found, f"spans {span_ids} did not all land"
        return found
    finally:
        client.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("media", [PROTOBUF, JSON])
def test_a_span_with_100000_attributes_is_trimmed_visibly_in_its_answer(stack: Stack, media: str) -> None:
    trace = os.urandom(16).hex()
    big, normal = os.urandom(8).hex(), os.urandom(8).hex()
    spans = [
        {"trace_id": trace, "span_id": big, "attributes": many_attributes(100_000)},
        {"trace_id": trace, "span_id": normal, "attributes": {"user.note": "kept as sent"}},
    ]
    body = protobuf_body(spans) if media == PROTOBUF else json_body(spans)
    assert len(body) > 1_000_000  # ~1.5-3 MB: it would not fit one Kafka message as it is
    _, rejected, message = post(stack, body, media)
    assert rejected == 0  # a warning, in OTLP's words: accepted, with an error_message
    assert message == f"1 span(s) accepted trimmed: span {big} of trace {trace}: 98,976 attributes dropped (limit 1024)"
    rows = stored(
        stack, [big, normal], f"attributes['{DROPPED_ATTRIBUTES}'], length(attributes), attributes['attr.000000']"
    )
    assert rows[big] == ("98976", 1025, "val")
    assert rows[normal] == ("", 1, "")  # untouched: no marker


@pytest.mark.timeout(300)
def test_a_span_with_100000_events_is_trimmed_to_the_configured_limit(stack: Stack) -> None:
    trace, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    body = protobuf_body([{"trace_id": trace, "span_id": span_id, "attributes": {"k": "v"}, "events": 100_000}])
    _, rejected, message = post(stack, body, PROTOBUF)
    assert (rejected, message) == (
        0,
        f"1 span(s) accepted trimmed: span {span_id} of trace {trace}: 99,800 events dropped (limit 200)",
    )
    rows = stored(stack, [span_id], f"attributes['{DROPPED_EVENTS}'], length(events), events[1].name, events[200].name")
    assert rows[span_id] == ("99800", 200, "chunk-0", "chunk-99999")


@pytest.mark.timeout(300)
def test_a_span_that_cannot_fit_a_message_is_refused_with_its_reason_and_its_neighbour_stored(stack: Stack) -> None:
    trace, huge, good = os.urandom(16).hex(), os.urandom(8).hex(), os.urandom(8).hex()
    documents = {f"retrieval.documents.{i}.document.id": f"doc-{i}" for i in range(60_000)}
    documents["openinference.span.kind"] = "RETRIEVER"
    spans = [
        {"trace_id": trace, "span_id": huge, "attributes": documents},
        {"trace_id": trace, "span_id": good, "attributes": {"k": "v"}},
    ]
    _, rejected, message = post(stack, protobuf_body(spans), PROTOBUF)
    assert rejected == 1
    assert message.startswith(f"1 span(s) rejected: span {huge} of trace {trace} cannot fit one 900000-byte message")
    assert "60000 documents" in message
    assert stored(stack, [good], "attributes['k']") == {good: ("v",)}
