"""OTLP load for receiver fault tests: protobuf bodies of whole traces, several concurrent senders, and a
ledger of what each POST's answer said.

A body carries whole traces (4 spans each), so "every span of a trace was acknowledged" is simply "its
POST got 200". A sender that gets anything but 200 (a 503, a reset connection, nobody listening) moves
on to a new body, as an exporter gives up on a batch; the ledger then knows those spans as unconfirmed:
they may or may not be stored, and either is fine.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

SPANS_PER_TRACE = 4


def _text(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def otlp_body(service: str, traces: int) -> tuple[bytes, dict[str, list[str]]]:
    """A protobuf `ExportTraceServiceRequest` of `traces` traces (a CHAIN root, an LLM call, a retriever,
    a tool); returns the body and the span ids (hex) of each trace id (hex)."""
    now = time.time_ns()
    spans: list[OtlpSpan] = []
    ids: dict[str, list[str]] = {}
    for _ in range(traces):
        trace_id = os.urandom(16)
        root = os.urandom(8)
        children = [os.urandom(8) for _ in range(SPANS_PER_TRACE - 1)]
        ids[trace_id.hex()] = [root.hex(), *(c.hex() for c in children)]
        spans.append(OtlpSpan(trace_id=trace_id, span_id=root, name="answer", kind=1,
                              start_time_unix_nano=now, end_time_unix_nano=now + 90_000_000,
                              attributes=[_text("openinference.span.kind", "CHAIN"),
                                          _text("input.value", "How do I rotate a key? " * 8)]))  # fmt: skip
        for kind, child in zip(("LLM", "RETRIEVER", "TOOL"), children, strict=True):
            spans.append(OtlpSpan(trace_id=trace_id, span_id=child, parent_span_id=root, name=kind.lower(),
                                  kind=1, start_time_unix_nano=now + 1_000_000, end_time_unix_nano=now + 80_000_000,
                                  attributes=[_text("openinference.span.kind", kind),
                                              _text("llm.model_name", "gpt-4o-mini"),
                                              _text("output.value", "Open Settings > API keys. " * 6)]))  # fmt: skip
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[_text("service.name", service)]),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )
    return request.SerializeToString(), ids


@dataclass
class Ledger:
    """What the receiver answered: traces acknowledged (200) and traces sent without a 200."""

    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    unconfirmed: dict[str, list[str]] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, answer: str, ids: dict[str, list[str]]) -> None:
        with self.lock:
            self.answers[answer] = self.answers.get(answer, 0) + 1
            (self.acknowledged if answer == "200" else self.unconfirmed).update(ids)

    @property
    def acknowledged_spans(self) -> set[str]:
        with self.lock:
            return {s for spans in self.acknowledged.values() for s in spans}


class OtlpLoad:
    """`senders` threads POSTing bodies of `traces_per_body` traces to `port` until stopped; `pause()`
    returns once no POST is in flight (to kill the receiver between requests), `resume()` goes on."""

    def __init__(self, port: int, service: str, *, senders: int = 4, traces_per_body: int = 50) -> None:
        self.port = port
        self.service = service
        self.traces_per_body = traces_per_body
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._in_flight = 0
        self._idle = threading.Condition()
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]

    def start(self) -> OtlpLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        while not self._stop.is_set():
            body, ids = otlp_body(self.service, self.traces_per_body)
            self._go.wait()
            with self._idle:
                if not self._go.is_set() or self._stop.is_set():
                    continue
                self._in_flight += 1
            try:
                answer = self._post(body)
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()
            self.ledger.record(answer, ids)
            if answer != "200":
                time.sleep(0.05)

    def _post(self, body: bytes) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            response = connection.getresponse()
            response.read()
            return str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__
        finally:
            connection.close()

    def pause(self) -> None:
        self._go.clear()
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=60)

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> Ledger:
        self._stop.set()
        self._go.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.ledger
