"""The wire schema: what goes in comes out, and malformed or oversized records are refused with a reason."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.core import schema
from tracehouse.core.schema import (
    Document,
    Event,
    LLMCall,
    Message,
    PromptTemplate,
    SchemaError,
    Score,
    Span,
    TokenUsage,
    ToolCall,
    decode_batch,
    decode_span,
    encode_batch,
    encode_span,
)

T0 = 1_790_000_000_000_000_000


def full_span(**overrides: object) -> Span:
    fields: dict[str, object] = dict(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id="00f067aa0ba902b7",
        name="generate_answer",
        kind="LLM",
        service="support-bot",
        start_time_ns=T0,
        end_time_ns=T0 + 1_250_000_000,
        status="ERROR",
        status_message="rate limited",
        input='{"question": "hi"}',
        output="",
        attributes={"http.status_code": "429", "error.type": "rate_limit"},
        resource={"host.name": "web-1"},
        events=[Event("exception", T0 + 1, {"exception.type": "RateLimitError", "exception.message": "429"})],
        llm=LLMCall(
            model="gpt-4o",
            provider="openai",
            temperature=0.2,
            max_tokens=512,
            top_p=0.9,
            stop=["###"],
            system_prompt="be brief",
            input_messages=[Message("system", "be brief"), Message("user", "hi")],
            output_messages=[Message("assistant", "", tool_calls=[ToolCall("c1", "search", "{}")])],
            finish_reason="tool_calls",
            invocation_parameters='{"temperature": 0.2}',
        ),
        usage=TokenUsage(input=1200, output=300, cached=1000, reasoning=100),
        cost_usd=None,
        prompt=PromptTemplate("rag_answer", "v4", "Q: {question}", {"question": "hi"}),
        documents=[Document("d1", "text", 0.9, 0, {"source": "kb"}), Document("d2", "more", None, 1)],
        scores=[Score("relevance", 0.8, "good", "llm_judge")],
        session_id="s-1",
        user_id="u-1",
        tags=["prod", "rag"],
    )
    fields.update(overrides)
    return Span(**fields)  # type: ignore[arg-type]


def test_every_field_round_trips_through_a_batch() -> None:
    spans = [full_span(), full_span(span_id="c7ad6b7169203331", kind="RETRIEVER", llm=None, usage=None)]
    good, bad = decode_batch(encode_batch(spans))
    assert bad == []
    assert good == spans
    assert good[0].usage is not None and good[0].usage.total == 1500
    assert good[0].duration_ns == 1_250_000_000


def test_one_bad_span_is_rejected_alone_with_its_reason_and_bytes() -> None:
    ok = full_span()
    raw = msgspec.msgpack.decode(encode_batch([ok, ok, ok]))
    raw["spans"][1]["end_time_ns"] = T0 - 1
    raw["spans"][2]["trace_id"] = "XYZ"
    good, bad = decode_batch(msgspec.msgpack.encode(raw))
    assert good == [ok]
    assert bad[0].reason.startswith("invalid span: end_time_ns")
    assert "trace_id" in bad[1].reason
    with pytest.raises(SchemaError, match="trace_id"):
        decode_span(bad[1].payload)


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ({"kind": "WIZARD"}, "kind"),
        ({"status": "MAYBE"}, "status"),
        ({"span_id": "123"}, "span_id"),
        ({"start_time_ns": 5}, "start_time_ns"),
        ({"name": ""}, "name"),
        ({"usage": {"input": -1}}, "input"),
        # Token counts are UInt32 columns: ClickHouse would silently wrap 2**32 to 0.
        ({"usage": {"output": 2**32}}, "output"),
        ({"llm": {"model": "gpt-4o", "max_tokens": -5}}, "max_tokens"),
    ],
)
def test_invalid_fields_are_named_in_the_reason(mutation: dict[str, object], reason: str) -> None:
    raw = msgspec.to_builtins(full_span())
    raw.update(mutation)
    with pytest.raises(SchemaError, match=reason):
        decode_span(msgspec.msgpack.encode(raw))


def test_garbage_and_oversized_messages_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SchemaError, match="not a span batch"):
        decode_batch(b"\x00\x01garbage")
    with pytest.raises(SchemaError, match="not a span batch"):
        decode_batch(msgspec.msgpack.encode({"spans": "nope"}))
    monkeypatch.setattr(schema, "MAX_BATCH_BYTES", 100)
    with pytest.raises(SchemaError, match="above the limit"):
        decode_batch(encode_batch([full_span()]))
    monkeypatch.setattr(schema, "MAX_SPAN_BYTES", 100)
    with pytest.raises(SchemaError, match="above the limit"):
        decode_span(encode_span(full_span()))


def test_newer_envelope_version_is_refused_when_it_does_not_decode() -> None:
    data = msgspec.msgpack.encode({"v": 99, "spans": [{"unexpected": 1}]})
    with pytest.raises(SchemaError, match="newer"):
        decode_batch(data)


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    raw = msgspec.to_builtins(full_span())
    raw["future_field"] = {"x": 1}
    assert decode_span(msgspec.msgpack.encode(raw)) == full_span()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        good, bad = decode_batch(data)
    except SchemaError as exc:
        assert exc.reason
    else:
        assert isinstance(good, list) and isinstance(bad, list)
