"""The OTLP mapping pinned to exact output: three rich spans, one per vocabulary, mapped to exactly the
`Span` the mapping produced before its per-key dispatch rewrite (issue 12), attribute order included.

Why pinned and not asserted field by field: the mapping was rewritten for speed, and "behaviour must not
change" is only checkable against the whole record, every attribute that stays and the order it stays in
(the span limits keep the *first* attributes). The expected records were produced by the old code and
written to `otlp_mapping_pinned.json` before the rewrite; regenerate them only for an intended change
(`python tests/unit/test_otlp_mapping_pinned.py --write`) and review the diff.

Each span goes through `map_span` directly and through both wire decoders (`ingest` of a protobuf and of
an OTLP/JSON body), so the decoders' value handling is pinned too.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_values import key_values

from tracehouse.core.schema import Span
from tracehouse.producers.otlp import mapping
from tracehouse.producers.otlp.ingest import ingest
from tracehouse.producers.otlp.mapping import map_span, origin_for
from tracehouse.producers.otlp.records import OtlpEvent, OtlpLink, OtlpSpan

EXPECTED = Path(__file__).with_name("otlp_mapping_pinned.json")
TRACE = "5b8efff798038103d269b633813fc60c"
PARENT = "eee19b7ec3c1b173"
START = 1_750_000_000_000_000_000
END = START + 1_250_000_000
RESOURCE = {"service.name": "support-bot", "deployment.environment": "prod", "host.cpus": 8}
SCOPE = ("openinference.instrumentation.openai", "1.2")
SCOPE_ATTRIBUTES = {"scope.flag": True}

OPENINFERENCE: dict[str, Any] = {
    "openinference.span.kind": "LLM",
    "input.value": '{"messages": [{"role": "user", "content": "Weather in Paris?"}]}',
    "input.mime_type": "application/json",
    "output.value": "Let me check.",
    "llm.model_name": "gpt-4o-2024-08-06",
    "llm.provider": "azure",
    "llm.system": "openai",
    "llm.invocation_parameters": json.dumps(
        {"temperature": 0.3, "max_completion_tokens": 256, "top_p": 0.9, "stop": ["\n\n"], "seed": 7}
    ),
    "llm.input_messages.0.message.role": "system",
    "llm.input_messages.0.message.content": "You are a weather bot.",
    "llm.input_messages.1.message.role": "user",
    "llm.input_messages.1.message.contents.0.message_content.type": "text",
    "llm.input_messages.1.message.contents.0.message_content.text": "Weather in ",
    "llm.input_messages.1.message.contents.1.message_content.type": "image",
    "llm.input_messages.1.message.contents.1.message_content.image.image.url": "https://x/y.png",
    "llm.input_messages.1.message.contents.2.message_content.text": "Paris? ünïcode",
    "llm.input_messages.2.message.role": "tool",
    "llm.input_messages.2.message.tool_call_id": "call_0",
    "llm.input_messages.2.message.content": "18C",
    "llm.input_messages.2.message.name": "get_weather",
    "llm.output_messages.0.message.role": "assistant",
    "llm.output_messages.0.message.content": "Let me check.",
    "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_1",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"city": "Paris"}',
    "llm.output_messages.0.message.tool_calls.0.tool_call.signature": "sig",
    "llm.output_messages.0.message.function_call_name": "legacy",
    "llm.output_messages.0.message.function_call_arguments_json": "{}",
    "llm.tools.0.tool.json_schema": '{"name": "get_weather"}',
    "llm.token_count.prompt": 1200,
    "llm.token_count.completion": 300,
    "llm.token_count.total": 1500,
    "llm.token_count.prompt_details.cache_read": 1024,
    "llm.token_count.prompt_details.cache_write": 0,
    "llm.token_count.completion_details.reasoning": 128,
    "llm.cost.total": 0.0042,
    "llm.prompt_template.template": "Weather in {city}?",
    "llm.prompt_template.version": "v3",
    "llm.prompt_template.variables": '{"city": "Paris", "units": 1}',
    "prompt.id": "weather-question",
    "retrieval.documents.1.document.id": "doc_456",
    "retrieval.documents.1.document.content": "Paris is rainy.",
    "retrieval.documents.0.document.id": 123,
    "retrieval.documents.0.document.content": "Paris weather report",
    "retrieval.documents.0.document.score": 0.95,
    "retrieval.documents.0.document.metadata": '{"source": "kb", "page": 3}',
    "retrieval.documents.0.document.extra": "kept",
    "reranker.output_documents.0.document.id": "r1",
    "reranker.output_documents.0.document.score": "not a number",
    "evaluations.0.evaluation.name": "relevance",
    "evaluations.0.evaluation.score": 0.8,
    "evaluations.0.evaluation.label": "relevant",
    "evaluations.0.evaluation.explanation": "on topic",
    "annotations.0.annotation.name": "thumbs",
    "annotations.0.annotation.label": "up",
    "annotations.0.annotation.annotator_kind": "HUMAN",
    "embedding.embeddings.0.embedding.vector": [0.1, 0.2, 0.3],
    "embedding.embeddings.0.embedding.text": "Paris",
    "session.id": "sess-1",
    "user.id": "user-9",
    "tag.tags": ["weather", "beta", "weather", ""],
    "metadata": '{"customer": "acme", "tier": 2, "nested": {"a": [1, 2]}}',
    "app.route": "/chat",
    "app.flags": [True, False],
    "app.blob": b"\x00\x01binary",
    "app.map": {"k": "v", "n": None, "deep": {"x": 1.5}},
    "app.ratio": 0.25,
    "app.empty": "",
    "llm.input_messages.x.message.role": "not an index",
    "llm.input_messages.01234567890.message.role": "index too long",
}

OPENLLMETRY: dict[str, Any] = {
    "llm.request.type": "chat",
    "traceloop.span.kind": "task",
    "gen_ai.system": "Anthropic",
    "gen_ai.request.model": "claude-sonnet-4",
    "gen_ai.response.model": "claude-sonnet-4-20250514",
    "gen_ai.request.temperature": "warm",
    "gen_ai.request.max_tokens": 1024.0,
    "gen_ai.request.top_p": "0.5",
    "gen_ai.prompt.0.role": "system",
    "gen_ai.prompt.0.content": "Be terse.",
    "gen_ai.prompt.1.role": "user",
    "gen_ai.prompt.1.content": "Hi",
    "gen_ai.completion.0.role": "assistant",
    "gen_ai.completion.0.content": "",
    "gen_ai.completion.0.finish_reason": "tool_use",
    "gen_ai.completion.0.tool_calls.0.id": "toolu_1",
    "gen_ai.completion.0.tool_calls.0.name": "search",
    "gen_ai.completion.0.tool_calls.0.arguments": '{"q": "x"}',
    "gen_ai.completion.0.tool_calls.0.type": "function",
    "gen_ai.completion.0.function_call.name": "old_style",
    "gen_ai.usage.prompt_tokens": 11,
    "gen_ai.usage.completion_tokens": "4",
    "llm.usage.total_tokens": 15,
    "gen_ai.usage.cache_creation_input_tokens": 3,
    "gen_ai.usage.cache_read_input_tokens": -1,
    "traceloop.entity.input": '{"inputs": {"q": "Hi"}}',
    "traceloop.entity.output": {"answer": "ok"},
    "traceloop.association.properties.session_id": "s-9",
    "traceloop.association.properties.user_id": 42,
    "traceloop.prompt.key": "greeting",
    "traceloop.prompt.version": 2,
    "traceloop.prompt.template": "Say {x}",
    "traceloop.prompt.template_variables": "not json",
    "traceloop.workflow.name": "support",
    "error.type": "anthropic.RateLimitError",
}

GENAI: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.request.temperature": 0.7,
    "gen_ai.request.max_tokens": 200,
    "gen_ai.request.top_p": 1.0,
    "gen_ai.request.stop_sequences": ["END", "STOP"],
    "gen_ai.request.seed": 7,
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.response.finish_reasons": ["stop", "length"],
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
    "gen_ai.usage.cache_read.input_tokens": 64,
    "gen_ai.usage.reasoning.output_tokens": 5,
    "gen_ai.usage.cost": "0.0031",
    "gen_ai.conversation.id": "conv-7",
    "enduser.id": "u-1",
    "gen_ai.input.messages": json.dumps(
        [
            {"role": "user", "parts": [{"type": "text", "content": "Weather?"}, {"type": "image", "uri": "x"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "wx", "arguments": {"c": 1}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "rainy"}]},
            {"role": "user", "content": "thanks"},
        ]
    ),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "It is rainy."}], "finish_reason": "stop"}]
    ),
    "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
    "gen_ai.retrieval.documents": json.dumps([{"id": "d1", "score": 0.5, "content": "c", "src": "kb"}]),
    "gen_ai.evaluation.name": "groundedness",
    "gen_ai.evaluation.score.value": 0.9,
    "gen_ai.evaluation.score.label": "grounded",
    "gen_ai.tool.call.arguments": '{"unused": true}',
    "server.address": "api.openai.com",
}

EVENTS = [
    OtlpEvent(
        "exception",
        START + 1000,
        {"exception.type": "openai.RateLimitError", "exception.message": "Error code: 429",
         "exception.escaped": True},
    ),
    OtlpEvent("gen_ai.evaluation.result", 0, {"gen_ai.evaluation.name": "tone", "gen_ai.evaluation.score.value": 1}, 2),
]  # fmt: skip
LINKS = [OtlpLink("ab" * 16, "cd" * 8, {"link.kind": "follows", "n": 3}, "k=v", 1)]
CASES = {
    "openinference": (OPENINFERENCE, {"status_code": 2, "status_message": "RateLimitError: 429", "kind": 3}),
    "openllmetry": (OPENLLMETRY, {"status_code": 1, "kind": 1, "events": EVENTS[:1], "trace_state": "a=b"}),
    "genai": (
        GENAI,
        {"kind": 3, "events": EVENTS, "links": LINKS, "dropped_attributes_count": 2, "dropped_events_count": 1},
    ),
}


def otlp(name: str) -> OtlpSpan:
    attributes, fields = CASES[name]
    values: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": f"{list(CASES).index(name) + 1:016x}",
        "name": name,
        "start_time_ns": START,
        "end_time_ns": END,
        "attributes": attributes,
        "parent_span_id": PARENT,
    }
    return OtlpSpan(**(values | fields))


def mapped(name: str) -> Span:
    return map_span(otlp(name), origin_for(RESOURCE, *SCOPE, scope_attributes=SCOPE_ATTRIBUTES))


def same(actual: Span, expected: Span) -> None:
    assert actual == expected
    assert list(actual.attributes) == list(expected.attributes)  # order decides what the limits keep


@pytest.fixture(scope="module")
def expected() -> dict[str, Span]:
    return msgspec.json.decode(EXPECTED.read_bytes(), type=dict[str, Span])


@pytest.mark.parametrize("name", list(CASES))
def test_mapping_is_pinned(name: str, expected: dict[str, Span]) -> None:
    same(mapped(name), expected[name])


def test_the_key_routes_stay_bounded_and_change_nothing(expected: dict[str, Span]) -> None:
    """The mapping remembers where each attribute key goes; ever-new or huge keys must neither grow that
    table without bound nor change a span (they are kept as text, like any key no field reads)."""
    huge = "k" * 100_000
    for n in range(3):
        keys = {f"app.key.{n}.{i}": i for i in range(mapping._ROUTES_MAX // 2)} | {f"{huge}{n}": "v"}
        span = map_span(OtlpSpan(TRACE, "0000000000000009", "x", START, END, keys), origin_for({}))
        assert span.attributes == {key: str(value) for key, value in keys.items()}
        assert len(mapping._ROUTES) <= mapping._ROUTES_MAX
        assert all(len(key) <= mapping._ROUTED_KEY_CHARS for key in mapping._ROUTES)
    test_mapping_is_pinned("openinference", expected)  # and a span after the churn maps as before


# ---- the same spans through the wire decoders -----------------------------------------------------


def protobuf_body(span: OtlpSpan) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(key_values(RESOURCE))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = SCOPE
    scope_spans.scope.attributes.extend(key_values(SCOPE_ATTRIBUTES))
    pb = scope_spans.spans.add(
        trace_id=bytes.fromhex(span.trace_id), span_id=bytes.fromhex(span.span_id),
        parent_span_id=bytes.fromhex(span.parent_span_id), name=span.name, kind=span.kind,
        start_time_unix_nano=span.start_time_ns, end_time_unix_nano=span.end_time_ns, trace_state=span.trace_state,
        dropped_attributes_count=span.dropped_attributes_count, dropped_events_count=span.dropped_events_count,
    )  # fmt: skip
    pb.attributes.extend(key_values(span.attributes))
    pb.status.code, pb.status.message = span.status_code, span.status_message
    for event in span.events:
        pb.events.add(name=event.name, time_unix_nano=event.time_ns, attributes=key_values(event.attributes),
                      dropped_attributes_count=event.dropped_attributes_count)  # fmt: skip
    for link in span.links:
        pb.links.add(trace_id=bytes.fromhex(link.trace_id), span_id=bytes.fromhex(link.span_id),
                     trace_state=link.trace_state, attributes=key_values(link.attributes),
                     dropped_attributes_count=link.dropped_attributes_count)  # fmt: skip
    return request.SerializeToString()


def json_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [json_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": json_value(v)} for k, v in value.items()]}}
    return {}


def json_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": json_value(v)} for k, v in attributes.items()]


def json_body(span: OtlpSpan) -> bytes:
    document = {
        "resourceSpans": [{
            "resource": {"attributes": json_attributes(RESOURCE)},
            "scopeSpans": [{
                "scope": {"name": SCOPE[0], "version": SCOPE[1], "attributes": json_attributes(SCOPE_ATTRIBUTES)},
                "spans": [{
                    "traceId": span.trace_id, "spanId": span.span_id, "parentSpanId": span.parent_span_id,
                    "name": span.name, "kind": span.kind, "traceState": span.trace_state,
                    "startTimeUnixNano": str(span.start_time_ns), "endTimeUnixNano": str(span.end_time_ns),
                    "attributes": json_attributes(span.attributes),
                    "droppedAttributesCount": span.dropped_attributes_count,
                    "droppedEventsCount": span.dropped_events_count,
                    "status": {"code": span.status_code, "message": span.status_message},
                    "events": [{"name": e.name, "timeUnixNano": str(e.time_ns),
                                "attributes": json_attributes(e.attributes),
                                "droppedAttributesCount": e.dropped_attributes_count} for e in span.events],
                    "links": [{"traceId": link.trace_id, "spanId": link.span_id, "traceState": link.trace_state,
                               "attributes": json_attributes(link.attributes),
                               "droppedAttributesCount": link.dropped_attributes_count} for link in span.links],
                }],
            }],
        }]
    }  # fmt: skip
    return json.dumps(document).encode()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("media_type", ["application/x-protobuf", "application/json"])
def test_decoded_and_mapped_spans_are_pinned(name: str, media_type: str, expected: dict[str, Span]) -> None:
    span = otlp(name)
    body = protobuf_body(span) if media_type == "application/x-protobuf" else json_body(span)
    result = ingest(body, media_type)
    assert (result.rejected, len(result.spans)) == (0, 1), result.error_message
    same(result.spans[0], expected[name])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    spans = {name: mapped(name) for name in CASES}
    EXPECTED.write_bytes(msgspec.json.format(msgspec.json.encode(spans), indent=1) + b"\n")
