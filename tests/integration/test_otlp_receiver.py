"""The OTLP/HTTP receiver on the real broker and the real ClickHouse engine.

The receiver runs in this process (`BackgroundReceiver`: its own event loop on a thread, a free port)
in front of a real `AckedSpanSender` to the session's Kafka; the sink runs as a child process, as in
production. Spans are sent by the official OpenTelemetry SDK's OTLP/HTTP exporter — a real client
with OpenInference attributes — and by hand-built protobuf and OTLP/JSON bodies, and what lands in
ClickHouse `spans` is checked column by column. The status-code tests speak plain HTTP (http.client)
so every header and byte is under the test's control; error bodies are decoded with googleapis'
own `google.rpc.Status` to prove they are what OTLP clients expect.

Kafka away uses a real `AckedSpanSender` whose broker address has nobody listening: the receiver must
answer 503 with Retry-After instead of a 200 it cannot keep.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.rpc.status_pb2 import Status
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status as OtelStatus
from opentelemetry.trace import StatusCode
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.acked_sender import AckedSpanSender
from tracehouse.producers.otlp import BackgroundReceiver, ReceiverOptions
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

pytestmark = pytest.mark.timeout(240)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NOW = time.time_ns()


# ---- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def transport(kafka_bootstrap: str) -> AckedSpanSender:
    """The production sender to the session's Kafka (the receiver app starts and stops it)."""
    return AckedSpanSender(kafka_bootstrap, client_id="otlp-receiver-test")


@contextmanager
def receiving(queue: Any, **options: Any) -> Iterator[BackgroundReceiver]:
    with BackgroundReceiver(queue, ReceiverOptions(**options)) as receiver:
        yield receiver


def post(
    url: str, body: bytes, content_type: str = PROTOBUF, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def status_of(body: bytes, content_type: str = PROTOBUF) -> Status:
    if content_type == JSON:
        document = json.loads(body)
        return Status(code=document["code"], message=document["message"])
    return Status.FromString(body)


def span_json(trace_id: str, span_id: str, name: str, attributes: dict[str, Any], parent: str = "") -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        if isinstance(v, list):
            return {"arrayValue": {"values": [value(x) for x in v]}}
        return {"stringValue": v}

    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(NOW),
        "endTimeUnixNano": str(NOW + 80_000_000),
        "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()],
        "status": {"code": 1},
    }


def request_json(spans: list[dict[str, Any]], service: str = "json-svc") -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                    "scopeSpans": [{"scope": {"name": "hand-made"}, "spans": spans}],
                }
            ]
        }
    ).encode()


def request_protobuf(spans: list[dict[str, Any]]) -> bytes:
    """The same spans as protobuf, via protobuf's own JSON parser (after turning the hex ids into the
    base64 its JSON mapping expects)."""
    from base64 import b64encode

    from google.protobuf import json_format

    document = json.loads(request_json(spans))
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            span[key] = b64encode(bytes.fromhex(span[key])).decode() if span[key] else ""
    return json_format.ParseDict(document, ExportTraceServiceRequest()).SerializeToString()


def ids(n: int) -> list[str]:
    return [os.urandom(8).hex() for _ in range(n)]


def new_trace() -> str:
    return os.urandom(16).hex()


# ---- end to end: OpenTelemetry SDK exporter -> receiver -> Kafka -> sink -> ClickHouse ------------


@pytest.fixture
def sink(settings: Settings) -> Iterator[ManagedProcess]:
    asyncio.run(migrate(settings.clickhouse))
    env = LocalStack(settings).child_env()
    process = ManagedProcess("sink", ["sink", "--flush-interval", "0.3"], settings.data_dir / "logs", env).start()
    try:
        assert process.wait_for_log("started", timeout=60), process.log_tail()
        yield process
    finally:
        process.stop()


def send_with_the_otel_sdk(url: str, token: str) -> dict[str, str]:
    """A small RAG trace with OpenInference attributes, exported by the OpenTelemetry SDK's OTLP/HTTP
    exporter (protobuf, gzip, bearer token); returns the span ids by name."""
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-rag-app", "team": "search"}))
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", compression=Compression.Gzip, headers={"Authorization": f"Bearer {token}"}
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("openinference.instrumentation.test", "0.1")
    found: dict[str, str] = {}
    with tracer.start_as_current_span("rag-answer") as root:
        root.set_attributes({"openinference.span.kind": "CHAIN", "input.value": "How do I rotate a key?",
                             "session.id": "sess-otlp-1", "user.id": "u-42", "tag.tags": ["otlp", "e2e"]})  # fmt: skip
        with tracer.start_as_current_span("retrieve") as retriever:
            retriever.set_attributes({"openinference.span.kind": "RETRIEVER", "input.value": "rotate key"})
            for i, (doc_id, score) in enumerate([("kb-1", 0.93), ("kb-7", 0.71), ("kb-3", 0.42)]):
                retriever.set_attributes(
                    {f"retrieval.documents.{i}.document.id": doc_id,
                     f"retrieval.documents.{i}.document.content": f"content of {doc_id}",
                     f"retrieval.documents.{i}.document.score": score}
                )  # fmt: skip
            found["retrieve"] = format(retriever.get_span_context().span_id, "016x")
        with tracer.start_as_current_span("ChatCompletion") as llm:
            llm.set_attributes(
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "gpt-4o-mini",
                    "llm.provider": "openai",
                    "llm.invocation_parameters": json.dumps({"temperature": 0.2, "max_tokens": 300, "top_p": 0.9}),
                    "llm.input_messages.0.message.role": "system",
                    "llm.input_messages.0.message.content": "Answer from the context.",
                    "llm.input_messages.1.message.role": "user",
                    "llm.input_messages.1.message.content": "How do I rotate a key?",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "Open Settings > API keys.",
                    "llm.token_count.prompt": 850,
                    "llm.token_count.completion": 120,
                    "llm.token_count.prompt_details.cache_read": 512,
                    "llm.token_count.completion_details.reasoning": 64,
                    "llm.prompt_template.template": "Answer {question} from {context}",
                    "llm.prompt_template.version": "v7",
                    "llm.prompt_template.variables": json.dumps({"question": "rotate a key?"}),
                    "session.id": "sess-otlp-1",
                }
            )
            found["llm"] = format(llm.get_span_context().span_id, "016x")
        with tracer.start_as_current_span("ChatCompletion retry") as failed:
            failed.set_attributes({"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini"})
            try:
                raise RuntimeError("Error code: 429 - Rate limit reached for requests")
            except RuntimeError as exc:
                failed.record_exception(exc)
                failed.set_status(OtelStatus(StatusCode.ERROR, "rate limited"))
            found["failed"] = format(failed.get_span_context().span_id, "016x")
        found["root"] = format(root.get_span_context().span_id, "016x")
        found["trace"] = format(root.get_span_context().trace_id, "032x")
    assert provider.force_flush(30_000)
    provider.shutdown()
    return found


def test_otel_exporter_spans_land_in_clickhouse_with_their_llm_fields(
    settings: Settings, sink: ManagedProcess, transport: AckedSpanSender
) -> None:
    with receiving(transport, tokens=("e2e-token",)) as receiver:
        sent = send_with_the_otel_sdk(receiver.url, "e2e-token")
        json_trace, (json_span,) = new_trace(), ids(1)
        status, _, body = post(
            receiver.url,
            gzip.compress(request_json([span_json(json_trace, json_span, "genai-chat", {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4", "gen_ai.request.temperature": 0.5,
                "gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 9,
                "gen_ai.conversation.id": "conv-json"})])),
            JSON,
            {"Content-Encoding": "gzip", "Authorization": "Bearer e2e-token"},
        )  # fmt: skip
        assert (status, body) == (200, b"{}")
        assert receiver.receiver.stats.spans_accepted == 5  # four from the SDK, one by hand
    assert transport.stats.failed == 0 and transport.pending == 0  # a 200 means Kafka has them

    client = sync_client(settings.clickhouse)
    try:
        trace = sent["trace"]

        def landed() -> int:
            return int(
                client.query(
                    "SELECT count() FROM spans WHERE trace_id IN ({a:String}, {b:String})",
                    parameters={"a": trace, "b": json_trace},
                ).result_rows[0][0]
            )

        assert wait_until(lambda: landed() >= 5, 90), f"{landed()} of 5 spans landed\n{sink.log_tail()}"

        def row(span_id: str, columns: str) -> tuple[Any, ...]:
            rows = client.query(
                f"SELECT {columns} FROM spans WHERE span_id = {{s:String}}", parameters={"s": span_id}
            ).result_rows
            assert len(rows) == 1, rows
            return tuple(rows[0])

        root_columns = "kind, service, parent_span_id, session_id, user_id, tags, resource_attributes['team']"
        assert row(sent["root"], root_columns) == (
            "CHAIN", "otel-rag-app", "", "sess-otlp-1", "u-42", ["otlp", "e2e"], "search",
        )  # fmt: skip
        assert row(
            sent["llm"],
            "kind, model, provider, temperature, max_tokens, top_p, input_tokens, output_tokens, total_tokens,"
            " cached_tokens, reasoning_tokens, system_prompt, length(input_messages), output_messages[1].content,"
            " prompt_version, prompt_text, prompt_variables['question'], session_id, parent_span_id",
        ) == (
            "LLM", "gpt-4o-mini", "openai", 0.2, 300, 0.9, 850, 120, 970, 512, 64, "Answer from the context.", 2,
            "Open Settings > API keys.", "v7", "Answer {question} from {context}", "rotate a key?", "sess-otlp-1",
            sent["root"],
        )  # fmt: skip
        documents = client.query(
            "SELECT d.position, d.id, d.score, d.content FROM spans ARRAY JOIN documents AS d"
            " WHERE span_id = {s:String} ORDER BY d.position",
            parameters={"s": sent["retrieve"]},
        ).result_rows
        assert documents == [
            (0, "kb-1", 0.93, "content of kb-1"),
            (1, "kb-7", 0.71, "content of kb-7"),
            (2, "kb-3", 0.42, "content of kb-3"),
        ]
        status_row = row(
            sent["failed"],
            "status, status_message, error_type, length(events), events[1].name,"
            " events[1].attributes['exception.type'], events[1].attributes['exception.message']",
        )
        assert status_row == (
            "ERROR", "rate limited", "rate_limit", 1, "exception", "RuntimeError",
            "Error code: 429 - Rate limit reached for requests",
        )  # fmt: skip
        json_columns = "kind, service, model, provider, temperature, input_tokens, output_tokens, session_id"
        assert row(json_span, json_columns) == (
            "LLM", "json-svc", "claude-sonnet-4", "anthropic", 0.5, 40, 9, "conv-json",
        )  # fmt: skip
    finally:
        client.close()


# ---- the OTLP/HTTP status codes -----------------------------------------------------------------


def test_protobuf_json_gzip_and_deflate_bodies_are_accepted(transport: AckedSpanSender) -> None:
    trace = new_trace()
    spans = [span_json(trace, s, f"op-{i}", {"openinference.span.kind": "TOOL"}) for i, s in enumerate(ids(4))]
    with receiving(transport) as receiver:
        for body, content_type, encoding in [
            (request_protobuf(spans[:1]), PROTOBUF, None),
            (gzip.compress(request_protobuf(spans[1:2])), PROTOBUF, "gzip"),
            (zlib.compress(request_json(spans[2:3])), JSON, "deflate"),
            (request_json(spans[3:]), "application/json; charset=utf-8", None),
        ]:
            extra = {"Content-Encoding": encoding} if encoding else {}
            status, headers, answer = post(receiver.url, body, content_type, extra)
            assert status == 200, answer
            if content_type == PROTOBUF:
                assert headers["content-type"] == PROTOBUF
                assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")
            else:
                assert headers["content-type"].startswith(JSON) and json.loads(answer) == {}
        assert receiver.receiver.stats.spans_accepted == 4
    assert transport.stats.acknowledged >= 4 and transport.pending == 0


def test_partial_success_counts_the_spans_with_bad_ids(transport: AckedSpanSender) -> None:
    trace = new_trace()
    good = [span_json(trace, span_id, "good", {}) for span_id in ids(2)]
    bad_trace = span_json("abc", ids(1)[0], "bad", {})
    bad_times = dict(span_json(trace, ids(1)[0], "late", {}), endTimeUnixNano=str(NOW - 1))
    with receiving(transport) as receiver:
        status, _, answer = post(receiver.url, request_protobuf([*good, bad_times]))
        assert status == 200
        partial = ExportTraceServiceResponse.FromString(answer).partial_success
        assert partial.rejected_spans == 1 and "before its start" in partial.error_message

        status, _, answer = post(receiver.url, request_json([*good, bad_trace, bad_times]), JSON)
        assert status == 200
        partial_json = json.loads(answer)["partialSuccess"]
        assert partial_json["rejectedSpans"] == "2"
        assert "invalid trace id 'abc'" in partial_json["errorMessage"]
        assert "before its start" in partial_json["errorMessage"]
        stats = receiver.receiver.stats
        assert (stats.spans_accepted, stats.spans_rejected) == (4, 3)


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_undecodable_bodies_get_400_with_a_status(transport: AckedSpanSender, content_type: str) -> None:
    with receiving(transport) as receiver:
        for body, headers in [
            (b"\xff\x00garbage", {}),
            (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}),
            (gzip.compress(b"x" * 100)[:-10], {"Content-Encoding": "gzip"}),
        ]:
            status, response_headers, answer = post(receiver.url, body, content_type, headers)
            assert status == 400, answer
            assert response_headers["content-type"].startswith(content_type)
            rpc = status_of(answer, content_type)
            assert rpc.code == 3 and rpc.message  # INVALID_ARGUMENT, with the reason
        assert receiver.receiver.stats.bad_requests == 3


def test_oversized_bodies_and_gzip_bombs_get_413(transport: AckedSpanSender) -> None:
    with receiving(transport, max_body_bytes=50_000, max_decompressed_bytes=200_000) as receiver:
        status, _, answer = post(receiver.url, b"\x00" * 60_000)
        assert status == 413 and "above the limit of 50000" in status_of(answer).message
        bomb = gzip.compress(b"\x00" * 50_000_000)  # 49 KB that would become 50 MB: under the body limit
        assert len(bomb) < 50_000
        status, _, answer = post(receiver.url, bomb, headers={"Content-Encoding": "gzip"})
        assert status == 413 and status_of(answer).code == 8  # RESOURCE_EXHAUSTED
        assert "decompressed body is above the limit of 200000" in status_of(answer).message
        assert receiver.receiver.stats.too_large == 2
        # Chunked, without Content-Length: refused as it streams past the limit.
        parts = urlsplit(receiver.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        connection.request(
            "POST", "/v1/traces", body=iter([b"\x00" * 20_000] * 4), headers={"Content-Type": PROTOBUF},
            encode_chunked=True,
        )  # fmt: skip
        assert connection.getresponse().status == 413
        connection.close()


def test_unsupported_content_types_and_encodings_get_415(transport: AckedSpanSender) -> None:
    with receiving(transport) as receiver:
        for content_type, headers in [
            ("text/plain", {}),
            ("application/grpc", {}),
            (PROTOBUF, {"Content-Encoding": "br"}),
        ]:
            status, _, answer = post(receiver.url, b"{}", content_type, headers)
            assert status == 415
            assert status_of(answer).message
        assert receiver.receiver.stats.unsupported == 3


def test_bearer_tokens_are_required_when_configured(transport: AckedSpanSender, tmp_path: Any) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# receiver tokens\nfrom-file\n")
    options = ReceiverOptions.from_env({"TRACEHOUSE_RECEIVER_TOKENS": "alpha, beta",
                                        "TRACEHOUSE_RECEIVER_TOKENS_FILE": str(token_file)})  # fmt: skip
    assert options.tokens == ("alpha", "beta", "from-file") and "alpha" not in repr(options)
    body = request_json([span_json(new_trace(), ids(1)[0], "op", {})])
    with BackgroundReceiver(transport, options) as receiver:
        for headers in [{}, {"Authorization": "Bearer gamma"}, {"Authorization": "Basic YWxwaGE="},
                        {"Authorization": "Bearer"}, {"Authorization": "alpha"}]:  # fmt: skip
            status, response_headers, answer = post(receiver.url, body, JSON, headers)
            assert status == 401 and response_headers["www-authenticate"] == "Bearer"
            assert status_of(answer, JSON).code == 16  # UNAUTHENTICATED
            assert "alpha" not in answer.decode() and "gamma" not in answer.decode()
        for token in ("alpha", "beta", "from-file"):
            assert post(receiver.url, body, JSON, {"Authorization": f"bearer {token}"})[0] == 200
        status, _, _ = post(receiver.url, b"garbage", "text/plain")  # auth is checked before anything else
        assert status == 401


def get_json(url: str, path: str) -> tuple[int, Any]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_kafka_away_answers_503_with_retry_after_before_reading_the_body() -> None:
    # Nobody listens at this address: the sender cannot connect, so nothing can be acknowledged.
    away = AckedSpanSender(f"127.0.0.1:{free_port()}", max_pending=5)
    trace = new_trace()
    with receiving(away, retry_after_s=3) as receiver:
        status, headers, answer = post(receiver.url, request_json([span_json(trace, s, "a", {}) for s in ids(3)]), JSON)
        assert status == 503 and headers["retry-after"] == "3"
        assert status_of(answer, JSON).code == 14  # UNAVAILABLE: the exporter retries
        assert away.pending == 0 and away.stats.accepted == 0  # refused whole, nothing half-taken
        health_status, health = get_json(receiver.url, "/health")
        assert health_status == 200 and health["status"] == "kafka_unavailable" and health["kafka_ready"] is False
        assert health["receiver"]["throttled"] == 1
        assert get_json(receiver.url, "/health/ready")[0] == 503
        assert get_json(receiver.url, "/health/live") == (200, {"process": "receiver", "live": True})


def test_more_spans_than_the_receiver_holds_get_413(transport: AckedSpanSender) -> None:
    transport.max_pending = 5
    with receiving(transport) as receiver:
        trace = new_trace()
        assert post(receiver.url, request_json([span_json(trace, s, "a", {}) for s in ids(5)]), JSON)[0] == 200
        assert post(receiver.url, request_json([span_json(trace, s, "b", {}) for s in ids(6)]), JSON)[0] == 413
        assert get_json(receiver.url, "/health/ready") == (200, {"process": "receiver", "ready": True})


def test_health(transport: AckedSpanSender) -> None:
    with receiving(transport) as receiver:
        parts = urlsplit(receiver.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        connection.request("GET", "/health")
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
    assert response.status == 200 and body["status"] == "ok" and body["queue_capacity"] == transport.max_pending
    assert body["kafka_ready"] is True and body["pending_spans"] == 0


@pytest.fixture(scope="module")
def fuzz_receiver(kafka_bootstrap: str) -> Iterator[BackgroundReceiver]:
    sender = AckedSpanSender(kafka_bootstrap, client_id="otlp-fuzz")
    with BackgroundReceiver(sender, ReceiverOptions(max_body_bytes=100_000)) as receiver:
        yield receiver


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=3000), st.binary(max_size=300).map(gzip.compress)),
    content_type=st.sampled_from([PROTOBUF, JSON]),
    encoding=st.sampled_from(["", "gzip", "deflate", "identity"]),
)
def test_arbitrary_bodies_get_200_or_400_never_a_crash(
    fuzz_receiver: BackgroundReceiver, body: bytes, content_type: str, encoding: str
) -> None:
    status, _, answer = post(fuzz_receiver.url, body, content_type, {"Content-Encoding": encoding} if encoding else {})
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert status_of(answer, content_type).code == 3
    elif content_type == PROTOBUF:
        ExportTraceServiceResponse.FromString(answer)
    else:
        json.loads(answer)


# ---- `run_receiver`: the CLI hook ---------------------------------------------------------------

RUN_RECEIVER = """
import sys
from tracehouse.core.config import Settings
from tracehouse.producers.otlp import run_receiver
sys.exit(run_receiver(Settings.from_env(), "127.0.0.1", int(sys.argv[1]), []))
"""


def test_run_receiver_serves_until_sigterm_and_flushes_to_kafka(kafka_bootstrap: str, tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from tracehouse.core import topics
    from tracehouse.core.schema import decode_batch

    def serve_one_request_then_sigterm(trace: str, stderr_path: Any) -> None:
        port = free_port()
        env = dict(os.environ, TRACEHOUSE_KAFKA_BOOTSTRAP=kafka_bootstrap, TRACEHOUSE_RECEIVER_TOKENS="tok")
        with stderr_path.open("wb") as stderr:
            child = subprocess.Popen([sys.executable, "-c", RUN_RECEIVER, str(port)], env=env, stderr=stderr)
        try:
            started = f"tracehouse receiver started on http://127.0.0.1:{port}"
            assert wait_until(lambda: started in stderr_path.read_text(), 30), stderr_path.read_text()
            body = request_json([span_json(trace, s, "op", {}) for s in ids(2)])
            url = f"http://127.0.0.1:{port}"
            assert post(url, body, JSON)[0] == 401  # the token came from the environment
            assert post(url, body, JSON, {"Authorization": "Bearer tok"})[0] == 200
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=45) == 0
        finally:
            if child.poll() is None:
                child.kill()
        assert stderr_path.read_text().count("started on") == 1

    async def scenario() -> int:
        """Start reading tracehouse.spans at its end, run the receiver, count our spans that arrive."""
        trace = new_trace()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topics.SPANS])
        finally:
            await admin.close()
        partitions = [TopicPartition(topics.SPANS, p["partition"]) for p in described["partitions"]]
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for partition in partitions:
                await consumer.position(partition)
            await asyncio.to_thread(serve_one_request_then_sigterm, trace, tmp_path / "receiver.err")
            found, deadline = 0, time.monotonic() + 20
            while time.monotonic() < deadline and found < 2:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        found += sum(s.trace_id == trace for s in decode_batch(message.value)[0])
            return found
        finally:
            await consumer.stop()

    assert asyncio.run(scenario()) == 2  # accepted before SIGTERM, in Kafka after the process exited


def test_run_receiver_reports_a_taken_port(kafka_bootstrap: str) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, TRACEHOUSE_KAFKA_BOOTSTRAP=kafka_bootstrap)
        result = subprocess.run(
            [sys.executable, "-c", RUN_RECEIVER, str(port)], env=env, capture_output=True, timeout=60
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
