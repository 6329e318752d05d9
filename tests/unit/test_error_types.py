"""One rule for a span's error type: the SDK, the OTLP receiver's mapping, the worker's rollups and the
sink's `spans.error_type` agree on which errors are rate limits (core/error_types.py).

Each case is an exception as a real client raises it (classes named and placed like the real ones, with
their status codes and messages: the real SDKs are not dependencies). It reaches tracehouse three ways:
through our SDK (`record_exception` sets `error.type`), through OTLP from an OpenTelemetry SDK (an
`exception` event and an ERROR status, no `error.type`), and as a span another producer wrote to Kafka
with the exception event alone. The worker sees each through its own decoder (`WorkSpan`).
"""

from __future__ import annotations

import pytest

from tracehouse.core.error_types import RATE_LIMIT, is_rate_limit_text, is_rate_limited, span_error_type
from tracehouse.core.schema import Event, Span, encode_batch
from tracehouse.pipeline.span_view import decode_work_batch
from tracehouse.pipeline.windows import WindowPartial
from tracehouse.pipeline.windows import is_rate_limited as worker_rate_limited
from tracehouse.producers import InMemoryTransport, Tracer
from tracehouse.producers.errors import error_type, qualified_name
from tracehouse.producers.otlp.mapping import map_span, origin_for
from tracehouse.producers.otlp.records import OtlpEvent, OtlpSpan
from tracehouse.sinks.rows import error_type_of

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
START = 1_750_000_000_000_000_000
END = START + 250_000_000


def _exception_class(module: str, name: str, base: type[Exception] = Exception) -> type[Exception]:
    return type(name, (base,), {"__module__": module})


class _StatusError(Exception):
    """Like openai's and anthropic's APIStatusError: the HTTP status as `status_code`."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def openai_rate_limit() -> Exception:
    cls = _exception_class("openai", "RateLimitError", _StatusError)
    return cls("Error code: 429 - {'error': {'message': 'Rate limit reached for gpt-4o', 'type': 'requests'}}", 429)


def anthropic_429() -> Exception:
    # a status error whose class name says nothing: only the 429 in its message (and its status_code)
    cls = _exception_class("anthropic", "APIStatusError", _StatusError)
    return cls("Error code: 429 - {'type': 'error', 'error': {'type': 'error', 'message': 'Slow down'}}", 429)


def botocore_throttling() -> Exception:
    cls = _exception_class("botocore.errorfactory", "ThrottlingException")
    exc = cls("An error occurred (ThrottlingException) when calling the Converse operation: Too many tokens")
    exc.response = {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}  # type: ignore[attr-defined]
    return exc


def google_resource_exhausted() -> Exception:
    too_many = _exception_class("google.api_core.exceptions", "TooManyRequests")
    cls = _exception_class("google.api_core.exceptions", "ResourceExhausted", too_many)
    return cls("Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_minute")


def plain_value_error() -> Exception:
    return ValueError("context window exceeded by 1290 tokens")


CASES = [
    pytest.param(openai_rate_limit, RATE_LIMIT, id="openai-RateLimitError"),
    pytest.param(anthropic_429, RATE_LIMIT, id="anthropic-429-message"),
    pytest.param(botocore_throttling, RATE_LIMIT, id="botocore-ThrottlingException"),
    pytest.param(google_resource_exhausted, RATE_LIMIT, id="google-ResourceExhausted"),
    pytest.param(plain_value_error, "ValueError", id="ValueError"),
]


def via_sdk(exc: Exception) -> Span:
    tracer = Tracer("svc", InMemoryTransport())
    with pytest.raises(type(exc)), tracer.span("llm", kind="LLM"):
        raise exc
    (span,) = tracer.transport.spans  # type: ignore[union-attr]
    return span


def exception_event(exc: Exception) -> dict[str, str]:
    return {"exception.type": qualified_name(type(exc)), "exception.message": str(exc)}


def via_otlp(exc: Exception) -> Span:
    """As OpenTelemetry's Python SDK sends it: an exception event, status ERROR "<Type>: <message>"."""
    otlp = OtlpSpan(
        trace_id=TRACE,
        span_id=SPAN,
        name="chat",
        start_time_ns=START,
        end_time_ns=END,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
        status_code=2,
        status_message=f"{type(exc).__name__}: {exc}",
        events=[OtlpEvent("exception", START + 1000, exception_event(exc))],
    )
    return map_span(otlp, origin_for({"service.name": "svc"}))


def via_kafka(exc: Exception) -> Span:
    """Written by another producer: the exception event alone, no `error.type`, no status message."""
    return Span(
        trace_id=TRACE,
        span_id=SPAN,
        name="chat",
        start_time_ns=START,
        end_time_ns=END,
        status="ERROR",
        events=[Event("exception", START + 1000, exception_event(exc))],
    )


@pytest.mark.parametrize(("make", "expected"), CASES)
def test_sdk_mapping_worker_and_sink_agree(make, expected: str) -> None:
    exc = make()
    limited = expected == RATE_LIMIT
    assert error_type(exc) == (RATE_LIMIT if limited else qualified_name(type(exc)))
    sdk, otlp, raw = via_sdk(make()), via_otlp(exc), via_kafka(exc)
    assert sdk.attributes["error.type"] == expected
    assert otlp.attributes.get("error.type") == (RATE_LIMIT if limited else None)
    for span in (sdk, otlp, raw):
        assert error_type_of(span) == expected  # the `spans.error_type` column
        (work,), rejected = decode_work_batch(encode_batch([span]))
        assert not rejected
        assert worker_rate_limited(work) is limited  # the rollups' `rate_limit_count`
        partial = WindowPartial()
        partial.add_span(work, 0.0)
        assert partial.rate_limit_count == int(limited)


@pytest.mark.parametrize(
    ("text", "limited"),
    [
        ("RateLimitError", True),
        ("rate_limit_exceeded", True),
        ("Too Many Requests", True),
        ("RESOURCE_EXHAUSTED", True),
        ("ThrottlingException", True),
        ("HTTP 429", True),
        ("bad input 14290", False),
        ("ValueError", False),
        ("", False),
    ],
)
def test_rate_limit_text(text: str, limited: bool) -> None:
    assert is_rate_limit_text(text) is limited


def test_rule_order() -> None:
    exc_event = Event("exception", START, {"exception.type": "openai.RateLimitError"})
    other = Event("exception", START, {"exception.type": "KeyError", "exception.message": "x"})
    # an explicit error.type decides, whatever the events say
    assert span_error_type("timeout", [exc_event], "ERROR", "") == "timeout"
    assert span_error_type("TooManyRequests", [], "ERROR", "") == RATE_LIMIT
    # then the exceptions: any that names a rate limit, else the first one's type
    assert span_error_type(None, [other, exc_event], "ERROR", "") == RATE_LIMIT
    assert span_error_type("", [other], "ERROR", "") == "KeyError"
    # then an ERROR status message; then "error" for an ERROR span, "" for the rest
    assert span_error_type(None, [], "ERROR", "quota: 429") == RATE_LIMIT
    assert span_error_type(None, [], "OK", "quota: 429") == ""
    assert span_error_type(None, [], "ERROR", "boom") == "error"
    assert span_error_type(None, [], "UNSET", "") == ""
    assert is_rate_limited(None, (), "OK", "") is False
    assert is_rate_limited("rate_limit", (), "OK", "") is True
