"""The OTLP -> Span mapping: OpenInference and OpenTelemetry GenAI attribute sets onto typed fields.

Pure functions, so no infrastructure: each test builds the neutral `OtlpSpan` a decoder would produce
and checks what `map_span` makes of it. Every mapped span is also pushed through the wire codec's
validation (`decode_span(encode_span(...))`), because a span the worker would dead-letter is as lost
as one the receiver dropped. The property tests throw arbitrary attribute sets (every AnyValue type,
nested arrays and maps, keys from both vocabularies) and arbitrary bytes at the mapping and decoders.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import string
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from otlp_values import any_value

from tracehouse.core.schema import Span, decode_span, encode_span
from tracehouse.producers.otlp import mapping
from tracehouse.producers.otlp.errors import BadRequest, RequestError
from tracehouse.producers.otlp.ingest import ingest
from tracehouse.producers.otlp.mapping import SpanRejected, attribute_text, map_span, origin_for
from tracehouse.producers.otlp.records import OtlpEvent, OtlpLink, OtlpSpan
from tracehouse.producers.otlp.wire_json import decode_json
from tracehouse.producers.otlp.wire_protobuf import decode_protobuf

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
PARENT = "eee19b7ec3c1b173"
START = 1_750_000_000_000_000_000
END = START + 1_250_000_000
ORIGIN = origin_for({"service.name": "support-bot", "deployment.environment": "prod"}, "openinference.openai", "1.2")


def otlp(attributes: dict[str, Any], **fields: Any) -> OtlpSpan:
    values: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": SPAN,
        "name": "ChatCompletion",
        "start_time_ns": START,
        "end_time_ns": END,
        "attributes": attributes,
        "parent_span_id": PARENT,
    }
    values.update(fields)
    return OtlpSpan(**values)


def mapped(attributes: dict[str, Any], **fields: Any) -> Span:
    """Map, and prove the result passes the pipeline's own validation."""
    span = map_span(otlp(attributes, **fields), ORIGIN)
    assert decode_span(encode_span(span)) == span
    return span


# ---- OpenInference ------------------------------------------------------------------------------

OPENINFERENCE_LLM: dict[str, Any] = {
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
    "llm.input_messages.1.message.content": "Weather in Paris?",
    "llm.output_messages.0.message.role": "assistant",
    "llm.output_messages.0.message.content": "Let me check.",
    "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_1",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"city": "Paris"}',
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
    "session.id": "sess-1",
    "user.id": "user-9",
    "tag.tags": ["weather", "beta"],
    "metadata": '{"customer": "acme", "tier": 2}',
    "app.route": "/chat",
}


def test_openinference_llm_span_maps_every_question_field() -> None:
    span = mapped(OPENINFERENCE_LLM)
    assert span.kind == "LLM" and span.service == "support-bot" and span.parent_span_id == PARENT
    assert span.input == OPENINFERENCE_LLM["input.value"] and span.output == "Let me check."
    llm = span.llm
    assert llm is not None
    assert (llm.model, llm.provider) == ("gpt-4o-2024-08-06", "azure")
    assert (llm.temperature, llm.max_tokens, llm.top_p, llm.stop) == (0.3, 256, 0.9, ["\n\n"])
    assert llm.invocation_parameters == OPENINFERENCE_LLM["llm.invocation_parameters"]
    assert llm.system_prompt == "You are a weather bot."  # the first system message
    assert [(m.role, m.content) for m in llm.input_messages] == [
        ("system", "You are a weather bot."),
        ("user", "Weather in Paris?"),
    ]
    (answer,) = llm.output_messages
    assert answer.role == "assistant" and answer.content == "Let me check."
    assert [(c.id, c.name, c.arguments) for c in answer.tool_calls] == [("call_1", "get_weather", '{"city": "Paris"}')]
    usage = span.usage
    assert usage is not None
    assert (usage.input, usage.output, usage.total, usage.cached, usage.reasoning) == (1200, 300, 1500, 1024, 128)
    assert usage.cache_write == 0  # llm.token_count.prompt_details.cache_write
    assert span.cost_usd == 0.0042
    prompt = span.prompt
    assert prompt is not None
    assert (prompt.name, prompt.version, prompt.template) == ("weather-question", "v3", "Weather in {city}?")
    assert prompt.variables == {"city": "Paris", "units": "1"}
    assert (span.session_id, span.user_id, span.tags) == ("sess-1", "user-9", ["weather", "beta"])
    # What no typed field holds stays as text; what a typed field holds is not stored twice.
    assert span.attributes == {
        "input.mime_type": "application/json",
        "llm.system": "openai",  # lost to llm.provider for `provider`, so kept
        "app.route": "/chat",
        "metadata.customer": "acme",
        "metadata.tier": "2",
        "otel.scope.name": "openinference.openai",
        "otel.scope.version": "1.2",
    }
    assert span.resource == {"service.name": "support-bot", "deployment.environment": "prod"}


def test_openinference_retriever_keeps_document_order_scores_and_metadata() -> None:
    span = mapped(
        {
            "openinference.span.kind": "RETRIEVER",
            "input.value": "rotate api key",
            "retrieval.documents.0.document.id": "kb-12",
            "retrieval.documents.0.document.content": "Open Settings > API keys.",
            "retrieval.documents.0.document.score": 0.91,
            "retrieval.documents.0.document.metadata": '{"source": "kb.pdf", "page": 4}',
            "retrieval.documents.1.document.id": 77,  # ids may be integers in OpenInference
            "retrieval.documents.1.document.content": "Keys expire after 90 days.",
            "retrieval.documents.1.document.score": "0.5",
            "retrieval.documents.3.document.content": "A later hit.",
            "retrieval.documents.3.document.score": "n/a",
        }
    )
    assert span.kind == "RETRIEVER" and span.llm is None and span.input == "rotate api key"
    assert [(d.position, d.id, d.score) for d in span.documents] == [(0, "kb-12", 0.91), (1, "77", 0.5), (3, "", None)]
    assert span.documents[0].metadata == {"source": "kb.pdf", "page": "4"}
    assert span.documents[2].content == "A later hit."
    assert span.attributes["retrieval.documents.3.document.score"] == "n/a"  # unreadable: kept, not lost


def test_openinference_reranker_output_documents_are_the_documents() -> None:
    span = mapped(
        {
            "openinference.span.kind": "RERANKER",
            "reranker.model_name": "rerank-english-v3.0",
            "reranker.query": "api keys",
            "reranker.input_documents.0.document.id": "a",
            "reranker.output_documents.0.document.id": "b",
            "reranker.output_documents.0.document.score": 0.99,
            "reranker.output_documents.1.document.id": "a",
            "reranker.output_documents.1.document.score": 0.2,
        }
    )
    assert span.kind == "RERANKER"
    assert [(d.position, d.id, d.score) for d in span.documents] == [(0, "b", 0.99), (1, "a", 0.2)]
    assert span.llm is not None and span.llm.model == "rerank-english-v3.0"
    assert span.attributes["reranker.query"] == "api keys"
    assert span.attributes["reranker.input_documents.0.document.id"] == "a"


def test_openinference_tool_and_agent_spans() -> None:
    tool = mapped(
        {
            "openinference.span.kind": "TOOL",
            "tool.name": "get_weather",
            "tool.parameters": '{"city": "string"}',
            "input.value": '{"city": "Paris"}',
            "output.value": '{"temp_c": 18}',
        }
    )
    assert (tool.kind, tool.input, tool.output, tool.llm) == ("TOOL", '{"city": "Paris"}', '{"temp_c": 18}', None)
    assert tool.attributes["tool.name"] == "get_weather"
    agent = mapped({"openinference.span.kind": "agent", "agent.name": "planner", "input.value": "plan a trip"})
    assert agent.kind == "AGENT" and agent.attributes["agent.name"] == "planner"


@pytest.mark.parametrize(
    ("declared", "kind"),
    [
        ("CHAIN", "CHAIN"),
        ("EMBEDDING", "EMBEDDING"),
        ("RETRIEVER", "RETRIEVER"),
        ("RERANKER", "RERANKER"),
        ("LLM", "LLM"),
        ("TOOL", "TOOL"),
        ("AGENT", "AGENT"),
        ("GUARDRAIL", "GUARDRAIL"),
        ("EVALUATOR", "EVALUATOR"),
        ("llm", "LLM"),
        ("PROMPT", "PROMPT"),  # a kind since the schema added it (DESIGN.md's list)
        ("banana", "UNKNOWN"),
    ],
)
def test_openinference_span_kinds(declared: str, kind: str) -> None:
    span = mapped({"openinference.span.kind": declared})
    assert span.kind == kind
    if kind == "UNKNOWN":  # a kind we do not know is kept, so nothing is lost
        assert span.attributes["openinference.span.kind"] == declared
    else:
        assert "openinference.span.kind" not in span.attributes


def test_openinference_messages_as_an_array_of_maps_and_multimodal_parts() -> None:
    span = mapped(
        {
            "openinference.span.kind": "LLM",
            "llm.input_messages": [
                {"message.role": "user", "message.contents.0.message_content.type": "text",
                 "message.contents.0.message_content.text": "What is in ",
                 "message.contents.1.message_content.type": "image",
                 "message.contents.1.message_content.image.image.url": "https://x/cat.png",
                 "message.contents.2.message_content.text": "this picture?"},
                {"message.role": "tool", "message.tool_call_id": "call_1", "message.name": "lookup",
                 "message.content": "a cat"},
            ],
        }
    )  # fmt: skip
    assert span.llm is not None
    first, second = span.llm.input_messages
    assert (first.role, first.content) == ("user", "What is in this picture?")
    assert (second.role, second.tool_call_id, second.name, second.content) == ("tool", "call_1", "lookup", "a cat")
    assert span.attributes["llm.input_messages.0.message.contents.1.message_content.image.image.url"] == (
        "https://x/cat.png"
    )


def test_openinference_evaluations_become_scores() -> None:
    span = mapped(
        {
            "openinference.span.kind": "EVALUATOR",
            "evaluations.0.evaluation.name": "relevance",
            "evaluations.0.evaluation.score": 0.8,
            "evaluations.0.evaluation.label": "relevant",
            "evaluations.0.evaluation.annotator_kind": "LLM",
            "evaluations.0.evaluation.explanation": "mentions the key page",
            "annotations.0.annotation.label": "thumbs_up",
        }
    )
    assert [(s.name, s.value, s.label, s.source, s.comment) for s in span.scores] == [
        ("relevance", 0.8, "relevant", "llm", "mentions the key page"),
        ("annotation", None, "thumbs_up", "", ""),
    ]


def test_embedding_vectors_are_replaced_by_their_length() -> None:
    span = mapped(
        {
            "openinference.span.kind": "EMBEDDING",
            "embedding.model_name": "text-embedding-3-small",
            "embedding.embeddings.0.embedding.text": "hello",
            "embedding.embeddings.0.embedding.vector": [0.1] * 1536,
        }
    )
    assert span.kind == "EMBEDDING" and span.llm is not None and span.llm.model == "text-embedding-3-small"
    assert span.attributes["embedding.embeddings.0.embedding.text"] == "hello"
    assert span.attributes["embedding.embeddings.0.embedding.vector"] == "[1536 floats omitted]"


# ---- OpenTelemetry GenAI ------------------------------------------------------------------------

GENAI_INPUT = [
    {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
    {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather",
                                     "arguments": {"city": "Paris"}}]},
    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy, 18C"}]},
]  # fmt: skip
GENAI_OUTPUT = [{"role": "assistant", "parts": [{"type": "text", "content": "It is rainy."}], "finish_reason": "stop"}]


def genai_llm(**extra: Any) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.max_tokens": 200,
        "gen_ai.request.top_p": 1.0,
        "gen_ai.request.stop_sequences": ["END"],
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "chatcmpl-123",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.conversation.id": "conv-7",
        "gen_ai.input.messages": json.dumps(GENAI_INPUT),
        "gen_ai.output.messages": json.dumps(GENAI_OUTPUT),
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
        **extra,
    }


def test_genai_chat_span_maps_parameters_messages_and_tokens() -> None:
    span = mapped(genai_llm(**{"gen_ai.usage.cache_read.input_tokens": 64, "gen_ai.usage.reasoning.output_tokens": 5}))
    assert span.kind == "LLM" and span.session_id == "conv-7"
    llm = span.llm
    assert llm is not None
    assert (llm.model, llm.provider) == ("gpt-4o-2024-08-06", "openai")  # the model that answered
    assert (llm.temperature, llm.max_tokens, llm.top_p, llm.stop) == (0.7, 200, 1.0, ["END"])
    assert llm.finish_reason == "stop" and llm.system_prompt == "Be brief."
    assert [(m.role, m.content, m.tool_call_id) for m in llm.input_messages] == [
        ("user", "Weather in Paris?", ""),
        ("assistant", "", ""),
        ("tool", "rainy, 18C", "call_1"),
    ]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in llm.input_messages[1].tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]
    assert [(m.role, m.content) for m in llm.output_messages] == [("assistant", "It is rainy.")]
    assert json.loads(span.input) == GENAI_INPUT and json.loads(span.output) == GENAI_OUTPUT
    usage = span.usage
    assert usage is not None
    assert (usage.input, usage.output, usage.total, usage.cached, usage.reasoning) == (100, 20, 120, 64, 5)
    assert span.attributes["gen_ai.request.model"] == "gpt-4o"  # lost to the response model: kept
    assert span.attributes["gen_ai.operation.name"] == "chat"  # says more than the kind: kept
    assert span.attributes["gen_ai.response.id"] == "chatcmpl-123"


@pytest.mark.parametrize(
    "key",
    [
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.cached_tokens",
        "gen_ai.usage.input_tokens.cached",
        "gen_ai.usage.cached_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ],
)
def test_cached_token_spellings(key: str) -> None:
    span = mapped({"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 50, key: "30"})
    assert span.usage is not None and (span.usage.input, span.usage.cached) == (50, 30)
    assert key not in span.attributes


@pytest.mark.parametrize(
    "key",
    [
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "gen_ai.usage.output_tokens.reasoning",
        "llm.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ],
)
def test_reasoning_token_spellings(key: str) -> None:
    span = mapped({"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 90, key: 70})
    assert span.usage is not None and (span.usage.output, span.usage.reasoning, span.usage.total) == (90, 70, 90)


@pytest.mark.parametrize(
    ("operation", "kind"),
    [
        ("chat", "LLM"),
        ("text_completion", "LLM"),
        ("generate_content", "LLM"),
        ("embeddings", "EMBEDDING"),
        ("execute_tool", "TOOL"),
        ("invoke_agent", "AGENT"),
        ("create_agent", "AGENT"),
        ("retrieval", "RETRIEVER"),
        ("invoke_workflow", "CHAIN"),
        ("something_new", "UNKNOWN"),
    ],
)
def test_genai_operation_names(operation: str, kind: str) -> None:
    span = mapped({"gen_ai.operation.name": operation})
    assert span.kind == kind and span.attributes["gen_ai.operation.name"] == operation


def test_genai_tool_and_agent_spans() -> None:
    tool = mapped(
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.id": "call_1",
            "gen_ai.tool.call.arguments": '{"city": "Paris"}',
            "gen_ai.tool.call.result": {"temp_c": 18},  # structured values are fine too
        }
    )
    assert (tool.kind, tool.input, tool.output) == ("TOOL", '{"city": "Paris"}', '{"temp_c":18}')
    assert tool.attributes["gen_ai.tool.name"] == "get_weather" and tool.attributes["gen_ai.tool.call.id"] == "call_1"
    agent = mapped(
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "travel", "gen_ai.agent.id": "ag-1",
         "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    )  # fmt: skip
    assert agent.kind == "AGENT" and agent.attributes["gen_ai.agent.name"] == "travel"
    assert agent.attributes["gen_ai.agent.id"] == "ag-1"
    assert agent.llm is not None and agent.llm.model == "gpt-4o"


def test_genai_retrieval_documents_and_evaluation() -> None:
    span = mapped(
        {
            "gen_ai.operation.name": "retrieval",
            "gen_ai.retrieval.query.text": "api keys",
            "gen_ai.retrieval.documents": json.dumps(
                [{"id": "doc_123", "score": 0.95, "source": "kb"}, {"id": "doc_456", "score": 0.87}]
            ),
        },
        events=[
            OtlpEvent(
                "gen_ai.evaluation.result",
                START + 5,
                {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 4.0,
                 "gen_ai.evaluation.score.label": "good"},
            )
        ],
    )  # fmt: skip
    assert span.kind == "RETRIEVER"
    assert [(d.position, d.id, d.score, d.metadata) for d in span.documents] == [
        (0, "doc_123", 0.95, {"source": "kb"}),
        (1, "doc_456", 0.87, {}),
    ]
    assert [(s.name, s.value, s.label) for s in span.scores] == [("relevance", 4.0, "good")]
    assert span.events[0].name == "gen_ai.evaluation.result"  # the event itself is kept too


def test_openllmetry_prompt_and_completion_attributes() -> None:
    span = mapped(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "Anthropic",
            "gen_ai.request.model": "claude-sonnet-4",
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
            "gen_ai.usage.prompt_tokens": 11,
            "gen_ai.usage.completion_tokens": 4,
            "llm.usage.total_tokens": 15,
            "gen_ai.usage.cache_creation_input_tokens": 3,
            "traceloop.association.properties.session_id": "s-9",
        }
    )
    assert span.kind == "LLM" and span.session_id == "s-9"
    llm = span.llm
    assert llm is not None
    assert (llm.model, llm.provider, llm.system_prompt, llm.finish_reason) == (
        "claude-sonnet-4", "Anthropic", "Be terse.", "tool_use",
    )  # fmt: skip
    assert [(m.role, m.content) for m in llm.input_messages] == [("system", "Be terse."), ("user", "Hi")]
    assert [(c.id, c.name) for c in llm.output_messages[0].tool_calls] == [("toolu_1", "search")]
    assert span.usage is not None and (span.usage.input, span.usage.output, span.usage.total) == (11, 4, 15)
    # tokens written to the prompt cache are priced on their own (core/pricing.py), not left as text
    assert span.usage.cache_write == 3 and "gen_ai.usage.cache_creation_input_tokens" not in span.attributes
    assert span.attributes["llm.request.type"] == "chat"


# ---- errors, events, ids ------------------------------------------------------------------------


def exception_event(kind: str, message: str) -> OtlpEvent:
    return OtlpEvent(
        "exception",
        START + 1000,
        {"exception.type": kind, "exception.message": message, "exception.stacktrace": "Traceback ...",
         "exception.escaped": True},
    )  # fmt: skip


def test_rate_limit_exception_event_is_kept_and_classified() -> None:
    span = mapped(
        {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o"},
        status_code=2,
        status_message="RateLimitError: Error code: 429",
        events=[exception_event("openai.RateLimitError", "Error code: 429 - Rate limit reached")],
    )
    assert (span.status, span.status_message) == ("ERROR", "RateLimitError: Error code: 429")
    (event,) = span.events
    assert (event.name, event.time_ns) == ("exception", START + 1000)
    assert event.attributes == {
        "exception.type": "openai.RateLimitError",
        "exception.message": "Error code: 429 - Rate limit reached",
        "exception.stacktrace": "Traceback ...",
        "exception.escaped": "true",
    }
    assert span.attributes["error.type"] == "rate_limit"


@pytest.mark.parametrize(
    ("kind", "message", "explicit", "expected"),
    [
        ("anthropic.RateLimitError", "slow down", None, "rate_limit"),
        ("httpx.HTTPStatusError", "Client error '429 Too Many Requests'", None, "rate_limit"),
        ("google.api_core.exceptions.ResourceExhausted", "quota", None, "rate_limit"),
        ("botocore.ThrottlingException", "Rate exceeded", None, "rate_limit"),
        ("ValueError", "bad input 14290", None, None),  # 14290 is not 429
        ("TimeoutError", "timed out", "timeout", "timeout"),
        ("Exception", "x", "429", "rate_limit"),
    ],
)
def test_error_type_classification(kind: str, message: str, explicit: str | None, expected: str | None) -> None:
    attributes = {} if explicit is None else {"error.type": explicit}
    span = mapped(attributes, status_code=2, events=[exception_event(kind, message)])
    assert span.attributes.get("error.type") == expected


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"trace_id": "abc"}, "invalid trace id"),
        ({"trace_id": "0" * 32}, "invalid trace id"),
        ({"trace_id": "Z" * 32}, "invalid trace id"),
        ({"span_id": ""}, "invalid span id"),
        ({"span_id": "0" * 16}, "invalid span id"),
        ({"parent_span_id": "123"}, "invalid parent span id"),
        ({"parent_span_id": SPAN}, "names itself as its parent"),
        ({"start_time_ns": 0}, "start_time_unix_nano 0 is missing"),
        ({"end_time_ns": 0}, "end_time_unix_nano 0 is missing"),
        ({"end_time_ns": START - 1}, "is before its start"),
        ({"end_time_ns": 2**64 - 1}, "outside 2000..2262"),
    ],
)
def test_spans_that_cannot_be_stored_are_rejected_with_a_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(SpanRejected, match=reason):
        map_span(otlp({}, **fields), ORIGIN)


def test_root_spans_links_kinds_and_odd_events() -> None:
    span = mapped(
        {},
        parent_span_id="0" * 16,  # all-zero parent: a root, as some SDKs send it
        name="",
        kind=3,
        trace_state="vendor=1",
        links=[OtlpLink(TRACE, PARENT, {"link.reason": "retry"})],
        events=[OtlpEvent("", 0, {"n": 1})],
        dropped_attributes_count=2,
    )
    assert span.parent_span_id == "" and span.name == "unnamed"
    assert span.attributes["otel.span_kind"] == "CLIENT"
    assert span.attributes["otel.trace_state"] == "vendor=1"
    assert json.loads(span.attributes["otel.links"]) == [
        {"trace_id": TRACE, "span_id": PARENT, "trace_state": "", "attributes": {"link.reason": "retry"}}
    ]
    assert span.attributes["otel.dropped_attributes_count"] == "2"
    (event,) = span.events
    assert (event.name, event.time_ns, event.attributes) == ("event", START, {"n": "1"})  # missing time: start


def test_unknown_attributes_are_kept_as_text() -> None:
    span = mapped(
        {
            "s": "text",
            "i": 42,
            "f": 1.5,
            "b": False,
            "raw": b"\x00\xff",
            "list": ["a", 1, [True, None]],
            "map": {"k": {"n": 1.25}},
            "none": None,
        }
    )
    assert span.attributes == {
        "s": "text",
        "i": "42",
        "f": "1.5",
        "b": "false",
        "raw": base64.b64encode(b"\x00\xff").decode(),
        "list": '["a",1,[true,null]]',
        "map": '{"k":{"n":1.25}}',
        "none": "",
        "otel.scope.name": "openinference.openai",
        "otel.scope.version": "1.2",
    }


def test_unusable_values_stay_in_attributes_instead_of_being_guessed() -> None:
    span = mapped(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.temperature": "hot",
            "gen_ai.request.max_tokens": -5,
            "gen_ai.usage.input_tokens": 2**40,
            "llm.invocation_parameters": "not json",
            "metadata": "[1, 2]",
            "tag.tags": 7,
        }
    )
    assert span.llm is not None and span.llm.temperature is None and span.llm.max_tokens is None
    assert span.usage is None  # 2**40 does not fit the UInt32 column: kept as text below
    assert span.llm.invocation_parameters == "not json"
    for key, value in [
        ("gen_ai.request.temperature", "hot"),
        ("gen_ai.request.max_tokens", "-5"),
        ("gen_ai.usage.input_tokens", str(2**40)),
        ("metadata", "[1, 2]"),
        ("tag.tags", "7"),
    ]:
        assert span.attributes[key] == value  # fmt: skip


def test_long_texts_are_cut_with_a_visible_marker() -> None:
    span = map_span(otlp({"input.value": "x" * 5000, "note": "y" * 5000}), ORIGIN, limit=1000)
    assert span.input.startswith("x" * 1000) and span.input.endswith("[truncated 4000 bytes]")
    assert span.attributes["note"].endswith("[truncated 4000 bytes]")


def test_resource_without_service_name() -> None:
    origin = origin_for({"host.name": "h1", "service.name": ""})
    span = map_span(otlp({}), origin)
    assert span.service == "unknown_service" and span.resource == {"host.name": "h1", "service.name": ""}


# ---- decoders: protobuf and OTLP/JSON read the same span ----------------------------------------


def json_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):  # proto3 JSON writes non-finite doubles as "NaN", "Infinity"
        special = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return {"doubleValue": value if math.isfinite(value) else special}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [json_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": json_value(v)} for k, v in value.items()]}}
    return {}


def protobuf_request(attributes: dict[str, Any], trace_id: bytes, span_id: bytes, start: int, end: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "scope"
    scope_spans.scope.attributes.add(key="scope.flag", value=AnyValue(bool_value=True))
    span = scope_spans.spans.add(
        trace_id=trace_id, span_id=span_id, name="op", start_time_unix_nano=start, end_time_unix_nano=end, kind=1
    )
    span.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in attributes.items())
    event = span.events.add(name="exception", time_unix_nano=min(start + 1, 2**64 - 1))
    event.attributes.add(key="exception.type", value=AnyValue(string_value="RateLimitError"))
    span.status.code = 2
    span.status.message = "boom"
    return request.SerializeToString()


def json_request(attributes: dict[str, Any], trace_id: str, span_id: str, start: int, end: int) -> bytes:
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "op",
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": [{"key": k, "value": json_value(v)} for k, v in attributes.items()],
        "events": [{"name": "exception", "timeUnixNano": str(min(start + 1, 2**64 - 1)),
                    "attributes": [{"key": "exception.type", "value": {"stringValue": "RateLimitError"}}]}],
        "status": {"code": 2, "message": "boom"},
    }  # fmt: skip
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "scope", "attributes": [{"key": "scope.flag", "value": {"boolValue": True}}]},
                        "spans": [span],
                    }
                ],
            }
        ]
    }
    return json.dumps(document).encode()


def test_protobuf_and_json_encodings_decode_to_the_same_span() -> None:
    attributes = dict(OPENINFERENCE_LLM, nested={"a": [1, 2.5, b"\x01", {"b": None}]})
    pb = ingest(protobuf_request(attributes, bytes.fromhex(TRACE), bytes.fromhex(SPAN), START, END),
                "application/x-protobuf")  # fmt: skip
    js = ingest(json_request(attributes, TRACE.upper(), SPAN, START, END), "application/json")
    assert pb.rejected == js.rejected == 0
    assert pb.spans == js.spans
    (span,) = pb.spans
    assert span.service == "svc" and span.status == "ERROR" and span.attributes["error.type"] == "rate_limit"
    assert span.attributes["otel.scope.name"] == "scope"
    assert span.attributes["otel.scope.attributes.scope.flag"] == "true"


def test_json_decoder_accepts_base64_ids_snake_case_and_enum_names() -> None:
    body = {
        "resource_spans": [
            {"scope_spans": [{"spans": [{
                "trace_id": base64.b64encode(bytes.fromhex(TRACE)).decode(),
                "span_id": base64.b64encode(bytes.fromhex(SPAN)).decode(),
                "name": "op", "kind": "SPAN_KIND_SERVER",
                "start_time_unix_nano": START, "end_time_unix_nano": END,
                "status": {"code": "STATUS_CODE_OK"},
                "attributes": [{"key": "n", "value": {"int_value": "7"}}, {"key": "bare", "value": 3}],
            }]}]}
        ]
    }  # fmt: skip
    result = ingest(json.dumps(body).encode(), "application/json")
    (span,) = result.spans
    assert (span.trace_id, span.span_id, span.status) == (TRACE, SPAN, "OK")
    assert span.attributes["otel.span_kind"] == "SERVER"
    assert span.attributes["n"] == "7" and span.attributes["bare"] == "3"


def test_json_spans_that_cannot_be_read_are_rejected_one_by_one() -> None:
    good = json.loads(json_request({}, TRACE, SPAN, START, END))
    spans = good["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append("not a span")
    spans.append(dict(spans[0], spanId="eee19b7ec3c1b175", startTimeUnixNano="soon"))
    spans.append(dict(spans[0], spanId="eee19b7ec3c1b176", traceId="xyz"))
    result = ingest(json.dumps(good).encode(), "application/json")
    assert len(result.spans) == 1 and result.rejected == 3
    assert "a span must be a JSON object" in result.error_message
    assert "startTimeUnixNano is not an integer" in result.error_message
    assert "invalid trace id 'xyz'" in result.error_message


def test_compressed_bodies() -> None:
    body = protobuf_request({}, bytes.fromhex(TRACE), bytes.fromhex(SPAN), START, END)
    for encoded, encoding in [
        (gzip.compress(body), "gzip"),
        (gzip.compress(body[:10]) + gzip.compress(body[10:]), "gzip"),  # two gzip members
        (zlib.compress(body), "deflate"),
        (zlib.compress(body)[2:-4], "deflate"),  # raw deflate, as some clients send it
    ]:
        assert len(ingest(encoded, "application/x-protobuf", encoding).spans) == 1
    with pytest.raises(RequestError, match="above the limit") as info:
        ingest(gzip.compress(b"\x00" * 2_000_000), "application/x-protobuf", "gzip", max_decompressed_bytes=1_000_000)
    assert info.value.status == 413
    with pytest.raises(RequestError, match="truncated") as info:
        ingest(gzip.compress(body)[:-12], "application/x-protobuf", "gzip")
    assert info.value.status == 400
    with pytest.raises(RequestError) as info:
        ingest(body, "application/x-protobuf", "br")
    assert info.value.status == 415


# ---- properties ---------------------------------------------------------------------------------

KNOWN_KEYS = sorted(
    {
        *OPENINFERENCE_LLM,
        *genai_llm(),
        "openinference.span.kind", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
        "gen_ai.retrieval.documents", "gen_ai.evaluation.name", "gen_ai.evaluation.score.value",
        "error.type", "llm.input_messages", "retrieval.documents", "gen_ai.usage.cache_read.input_tokens",
        "llm.token_count.completion_details.reasoning", "reranker.model_name", "traceloop.span.kind",
        "llm.request.type", "enduser.id", "embedding.model_name",
    }
)  # fmt: skip
INDEXED_KEYS = st.builds(
    "{}.{}.{}".format,
    st.sampled_from(["llm.input_messages", "llm.output_messages", "retrieval.documents", "gen_ai.prompt",
                     "gen_ai.completion", "evaluations", "reranker.output_documents", "embedding.embeddings",
                     "llm.prompts", "annotations"]),
    st.one_of(st.integers(0, 3), st.just(999_999_999), st.just("x"), st.just("-1")),
    st.sampled_from(["message.role", "message.content", "message.tool_calls.0.tool_call.id",
                     "message.contents.0.message_content.text", "document.score", "document.metadata",
                     "document.id", "role", "content", "tool_calls.1.arguments", "evaluation.score",
                     "embedding.vector", "prompt.text", "finish_reason", "message.function_call_name"]),
)  # fmt: skip
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), INDEXED_KEYS, st.text(max_size=30))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.binary(max_size=20),
    st.sampled_from(["0.5", "12", "[]", "{}", "[1, 2]", '{"a": {"b": [1]}}', "LLM", "chat", json.dumps(GENAI_INPUT),
                     '[{"type": "text", "content": 3}]', '[{"id": 1, "score": "x"}]', "nan", "-3"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attributes=st.dictionaries(KEYS, VALUES, max_size=25), status=st.integers(-1, 5), kind=st.integers(-2, 9))
def test_any_attribute_set_maps_to_a_valid_span(attributes: dict[str, Any], status: int, kind: int) -> None:
    span = map_span(otlp(attributes, status_code=status, kind=kind), ORIGIN)
    assert decode_span(encode_span(span)) == span  # the worker would accept it
    for key in attributes:  # nothing silently dropped: a key the mapping does not read is kept as is
        if key not in mapping._KNOWN and mapping._indexed_key(key) is None:
            assert key in span.attributes, key


@settings(max_examples=300, deadline=None)
@given(
    trace_id=st.one_of(st.binary(min_size=0, max_size=20), st.just(bytes(16))),
    span_id=st.one_of(st.binary(min_size=0, max_size=10), st.just(bytes(8))),
    start=st.integers(0, 2**64 - 1),
    duration=st.integers(-(2**40), 2**40),
    attributes=st.dictionaries(KEYS, VALUES, max_size=8),
)
def test_any_span_through_both_decoders_is_mapped_or_rejected(
    trace_id: bytes, span_id: bytes, start: int, duration: int, attributes: dict[str, Any]
) -> None:
    end = min(max(start + duration, 0), 2**64 - 1)
    pb = ingest(protobuf_request(attributes, trace_id, span_id, start, end), "application/x-protobuf")
    assert len(pb.spans) + pb.rejected == 1
    if pb.rejected:
        assert pb.error_message.startswith("1 span(s) rejected: ")
    for span in pb.spans:
        assert decode_span(encode_span(span)) == span
    js = ingest(json_request(attributes, trace_id.hex(), span_id.hex(), start, end), "application/json")
    assert (len(js.spans), js.rejected) == (len(pb.spans), pb.rejected)


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=2000))
def test_arbitrary_bytes_decode_or_fail_clearly(body: bytes) -> None:
    for decode in (decode_protobuf, decode_json):
        try:
            decode(body)
        except BadRequest as exc:
            assert exc.status == 400 and exc.reason
    for media in ("application/x-protobuf", "application/json"):
        for encoding in ("", "gzip", "deflate"):
            try:
                result = ingest(body, media, encoding)
            except RequestError as exc:
                assert exc.status in (400, 413)
            else:
                for span in result.spans:
                    assert decode_span(encode_span(span)) == span


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=string.printable + "\u00e9\u4e2d\U0001f600", max_size=200), limit=st.integers(8, 100))
def test_attribute_text_respects_the_byte_limit(text: str, limit: int) -> None:
    out = attribute_text(text, limit)
    if len(text.encode()) <= limit:
        assert out == text
    else:
        kept = out.split("…[truncated ")[0]
        assert len(kept.encode()) <= limit and text.startswith(kept)


def test_each_span_gets_its_own_resource_and_scope() -> None:
    request = ExportTraceServiceRequest()
    span_ids = iter(range(1, 100))
    for service, scopes in [("svc-a", ["s1", "s2"]), ("svc-b", ["s1"])]:
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value=service))
        for scope in scopes:
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name = scope
            span_id = next(span_ids).to_bytes(8, "big")
            name = f"{service}/{scope}"
            scope_spans.spans.add(
                trace_id=bytes.fromhex(TRACE),
                span_id=span_id,
                name=name,
                start_time_unix_nano=START,
                end_time_unix_nano=END,
            )
    result = ingest(request.SerializeToString(), "application/x-protobuf")
    assert [(s.name, s.service, s.attributes["otel.scope.name"], s.resource["service.name"]) for s in result.spans] == [
        ("svc-a/s1", "svc-a", "s1", "svc-a"),
        ("svc-a/s2", "svc-a", "s2", "svc-a"),
        ("svc-b/s1", "svc-b", "s1", "svc-b"),
    ]
    assert result.spans[0].resource is result.spans[1].resource  # stringified once per resource
