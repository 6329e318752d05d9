"""The load generator of the end-to-end benchmark (e2e.py), run by it as child processes.

Not a benchmark itself and not a test. Two modes, one process each, so each one's CPU shows on its own:
- `sdk`: whole traces into the SDK's `SpanTransport` (what an instrumented application does);
- `otlp`: the same traces as OTLP/HTTP protobuf requests (OpenInference attributes, like Phoenix's
  instrumentors export them) to a receiver at `--url`: tracehouse's, or Arize Phoenix's.

Traces come from `TraceFactory` (RAG, agent and chat traces, ~5 spans each, ~1.5 KB of msgpack per span),
built once into a pool at start-up and re-sent with a fresh trace id and timestamps moved so the trace's
root span ends at the moment it is handed over (a trace is submitted when its root ends, as the SDK does),
so `ingested_at - end_time` of a root span is the delay from span end to queryable. Rebasing a span costs
~0.5 µs; `TraceFactory` would cost ~10 µs per span, a sixth of a core at 16,000 spans/s.

Alert traffic: traces carrying a rate-limited LLM call are sent only in even 10-second windows (epoch
aligned), so an alert rule `rate_limit_count > 0 over 10 s` fires and resolves every 20 s.

Protocol with the parent: the child builds its pool and connects, prints `READY`, reads `GO <epoch
seconds>` from stdin, runs from that instant for `--duration` seconds at `--rate` spans/s (a token bucket
over whole traces), flushes, and prints one JSON line with its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from tracehouse.core.schema import Event, Span

ALERT_PERIOD_S = 10  # rate-limited calls only in even windows of this size
TICK_S = 0.005


# ---- the trace pool ---------------------------------------------------------------------------------


@dataclass
class PoolTrace:
    spans: list[Span]
    end_ns: int  # latest end time in the trace (the root's)
    rate_limited: bool
    service: str
    protos: list[Any] | None = None  # OTLP protobuf Span templates (otlp mode)


class TracePool:
    """Realistic traces made once, handed out again and again with fresh ids and current times."""

    def __init__(self, spans: int, seed: int, phase: str, prompt_bytes: int = 1024, error_ratio: float = 0.05):
        from tracehouse.producers.traffic import TraceFactory, TrafficOptions

        factory = TraceFactory(TrafficOptions(seed=seed, error_ratio=error_ratio, prompt_bytes=prompt_bytes))
        resource_attrs = {"bench.phase": phase}
        self.traces: list[PoolTrace] = []
        made = 0
        while made < spans:
            trace = factory.any()
            for span in trace:
                span.resource = resource_attrs
            limited = any(s.attributes.get("error.type") == "rate_limit" for s in trace)
            root = next(s for s in trace if not s.parent_span_id)
            end = max(s.end_time_ns for s in trace)
            self.traces.append(PoolTrace(trace, end, limited, root.service))
            made += len(trace)
        self.calm = [t for t in self.traces if not t.rate_limited]
        self._i = 0
        self._j = 0
        self.rng = random.Random(os.urandom(16))  # trace ids unique across processes and phases

    def next(self, now_s: float) -> PoolTrace:
        """The next trace; traces with a rate-limited call only in even alert windows."""
        if int(now_s // ALERT_PERIOD_S) % 2 == 0:
            self._i = (self._i + 1) % len(self.traces)
            return self.traces[self._i]
        self._j = (self._j + 1) % len(self.calm)
        return self.calm[self._j]

    def trace_id(self) -> int:
        return self.rng.getrandbits(128) | 1  # never the all-zero id OTLP forbids

    def fresh(self, trace: PoolTrace, now_ns: int) -> list[Span]:
        """The trace's spans with a new trace id, moved in time so its root ends at `now_ns`."""
        tid = f"{self.trace_id():032x}"
        delta = now_ns - trace.end_ns
        replace = msgspec.structs.replace
        out = []
        for s in trace.spans:
            if s.events:
                events = [Event(e.name, e.time_ns + delta, e.attributes) for e in s.events]
                out.append(
                    replace(
                        s, trace_id=tid, start_time_ns=s.start_time_ns + delta, end_time_ns=s.end_time_ns + delta,
                        events=events,
                    )
                )  # fmt: skip
            else:
                out.append(
                    replace(s, trace_id=tid, start_time_ns=s.start_time_ns + delta, end_time_ns=s.end_time_ns + delta)
                )
        return out


# ---- OTLP protobuf (OpenInference attributes) ---------------------------------------------------


def _kv(key: str, value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

    if isinstance(value, bool):
        any_value = AnyValue(bool_value=value)
    elif isinstance(value, int):
        any_value = AnyValue(int_value=value)
    elif isinstance(value, float):
        any_value = AnyValue(double_value=value)
    elif isinstance(value, list):
        any_value = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=str(v)) for v in value]))
    else:
        any_value = AnyValue(string_value=str(value))
    return KeyValue(key=key, value=any_value)


def openinference_attributes(span: Span) -> dict[str, Any]:
    """A tracehouse span as the attributes an OpenInference instrumentor would export."""
    a: dict[str, Any] = {"openinference.span.kind": span.kind}
    if span.input:
        a["input.value"] = span.input
    if span.output:
        a["output.value"] = span.output
    llm, usage, prompt = span.llm, span.usage, span.prompt
    if llm is not None:
        if llm.model:
            a["embedding.model_name" if span.kind == "EMBEDDING" else "llm.model_name"] = llm.model
        if llm.provider:
            a["llm.provider"] = llm.provider
        if llm.invocation_parameters:
            a["llm.invocation_parameters"] = llm.invocation_parameters
        for side, messages in (("input", llm.input_messages), ("output", llm.output_messages)):
            for i, m in enumerate(messages):
                prefix = f"llm.{side}_messages.{i}.message."
                a[prefix + "role"] = m.role
                if m.content:
                    a[prefix + "content"] = m.content
                for j, call in enumerate(m.tool_calls):
                    a[f"{prefix}tool_calls.{j}.tool_call.id"] = call.id
                    a[f"{prefix}tool_calls.{j}.tool_call.function.name"] = call.name
                    a[f"{prefix}tool_calls.{j}.tool_call.function.arguments"] = call.arguments
        if llm.finish_reason:
            a["llm.finish_reason"] = llm.finish_reason
    if usage is not None:
        a["llm.token_count.prompt"] = usage.input
        a["llm.token_count.completion"] = usage.output
        a["llm.token_count.total"] = usage.total
        if usage.cached:
            a["llm.token_count.prompt_details.cache_read"] = usage.cached
        if usage.reasoning:
            a["llm.token_count.completion_details.reasoning"] = usage.reasoning
    if prompt is not None:
        a["llm.prompt_template.name"] = prompt.name
        a["llm.prompt_template.version"] = prompt.version
        a["llm.prompt_template.template"] = prompt.template
        a["llm.prompt_template.variables"] = json.dumps(prompt.variables)
    prefix = "reranker.output_documents." if span.kind == "RERANKER" else "retrieval.documents."
    for i, d in enumerate(span.documents):
        a[f"{prefix}{i}.document.id"] = d.id
        a[f"{prefix}{i}.document.content"] = d.content
        if d.score is not None:
            a[f"{prefix}{i}.document.score"] = d.score
        if d.metadata:
            a[f"{prefix}{i}.document.metadata"] = json.dumps(d.metadata)
    if span.session_id:
        a["session.id"] = span.session_id
    if span.user_id:
        a["user.id"] = span.user_id
    if span.tags:
        a["tag.tags"] = list(span.tags)
    for key, value in span.attributes.items():
        a.setdefault(key, value)
    return a


def to_otlp(span: Span) -> Any:
    """One OTLP protobuf Span (times as in `span`)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    pb = PbSpan(
        trace_id=bytes.fromhex(span.trace_id),
        span_id=bytes.fromhex(span.span_id),
        parent_span_id=bytes.fromhex(span.parent_span_id) if span.parent_span_id else b"",
        name=span.name,
        kind=PbSpan.SPAN_KIND_CLIENT if span.kind in ("LLM", "EMBEDDING") else PbSpan.SPAN_KIND_INTERNAL,
        start_time_unix_nano=span.start_time_ns,
        end_time_unix_nano=span.end_time_ns,
        attributes=[_kv(k, v) for k, v in openinference_attributes(span).items()],
        status=Status(
            code={"OK": Status.STATUS_CODE_OK, "ERROR": Status.STATUS_CODE_ERROR}.get(
                span.status, Status.STATUS_CODE_UNSET
            ),
            message=span.status_message,
        ),
    )
    for event in span.events:
        pb.events.add(
            name=event.name,
            time_unix_nano=event.time_ns,
            attributes=[_kv(k, v) for k, v in event.attributes.items()],
        )
    return pb


class OtlpRequests:
    """Builds ExportTraceServiceRequest bodies from pool traces with fresh ids and current times."""

    def __init__(self, pool: TracePool, phase: str) -> None:
        for trace in pool.traces:
            trace.protos = [to_otlp(s) for s in trace.spans]
        self.pool = pool
        self.phase = phase

    def body(self, traces: list[PoolTrace], now_ns: int) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        scopes: dict[str, Any] = {}
        for trace in traces:
            scope = scopes.get(trace.service)
            if scope is None:
                resource_spans = request.resource_spans.add()
                resource_spans.resource.attributes.extend(
                    [_kv("service.name", trace.service), _kv("bench.phase", self.phase)]
                )
                scope = scopes[trace.service] = resource_spans.scope_spans.add()
                scope.scope.name = "openinference.instrumentation.bench"
            tid = self.pool.trace_id().to_bytes(16, "big")
            delta = now_ns - trace.end_ns
            assert trace.protos is not None
            for template in trace.protos:
                span = scope.spans.add()
                span.CopyFrom(template)
                span.trace_id = tid
                span.start_time_unix_nano = template.start_time_unix_nano + delta
                span.end_time_unix_nano = template.end_time_unix_nano + delta
                for event in span.events:
                    event.time_unix_nano += delta
        return request.SerializeToString()


# ---- the two modes -----------------------------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_go() -> float:
    print("READY", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "GO":
        raise SystemExit(0)  # the parent gave up
    return float(line[1])


def run_sdk(args: argparse.Namespace) -> dict[str, Any]:
    from tracehouse.producers.transport import SpanTransport

    pool = TracePool(args.pool_spans, args.seed, args.phase, args.prompt_bytes)
    transport = SpanTransport(
        args.kafka, max_queue=max(200_000, int(args.rate * 5)), client_id=f"bench-loadgen-{args.phase}"
    )
    # Connect before the clock starts: one trace, sent and acknowledged.
    warm = pool.fresh(pool.traces[0], time.time_ns())
    for span in warm:
        span.resource = {"bench.phase": "warmup"}
    transport.submit_many(warm)
    transport.flush(60)
    base_sent = transport.stats.sent
    t0 = _wait_go()
    while time.time() < t0:
        time.sleep(0.001)
    cpu0 = _cpu_s()
    produced = traces = 0
    end = t0 + args.duration
    while (now := time.time()) < end:
        due = args.rate * (now - t0)
        while produced < due:
            trace = pool.next(now)
            spans = pool.fresh(trace, time.time_ns())
            transport.submit_many(spans)
            produced += len(spans)
            traces += 1
        time.sleep(TICK_S)
    send_wall = time.time() - t0
    flushed = transport.flush(180)
    acked_wall = time.time() - t0
    stats = transport.stats
    result = {
        "mode": "sdk",
        "phase": args.phase,
        "offered": int(args.rate * args.duration),
        "produced": produced,
        "traces": traces,
        "sent": stats.sent - base_sent,
        "dropped": stats.dropped,
        "failed": stats.failed,
        "messages": stats.messages,
        "retries": stats.retries,
        "flushed": flushed,
        "send_wall_s": send_wall,
        "acked_wall_s": acked_wall,
        "cpu_s": _cpu_s() - cpu0,
    }
    transport.shutdown()
    return result


async def _otlp_main(args: argparse.Namespace, requests: OtlpRequests, t0: float) -> dict[str, Any]:
    import aiohttp

    pool = requests.pool
    stats = {"requests": 0, "ok_spans": 0, "ok_requests": 0, "throttled": 0, "errors": 0, "gave_up_spans": 0}
    latencies: list[float] = []
    error_samples: list[str] = []
    produced = 0
    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(args.concurrency)
    end = t0 + args.duration
    headers = {"Content-Type": "application/x-protobuf"}

    async def post(session: aiohttp.ClientSession, body: bytes, spans: int) -> None:
        try:
            while True:
                stats["requests"] += 1
                started = time.monotonic()
                try:
                    async with session.post(args.url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, retry_after = 0, None
                    if len(error_samples) < 5:
                        error_samples.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.monotonic() - started)
                if status == 200:
                    stats["ok_spans"] += spans
                    stats["ok_requests"] += 1
                    return
                if status == 503:
                    stats["throttled"] += 1
                else:
                    stats["errors"] += 1
                    if status and len(error_samples) < 5:
                        error_samples.append(f"HTTP {status}")
                # An exporter retries 503s and lost connections after a pause (Retry-After, at most 2 s),
                # until its deadline: here, the end of the run plus 10 s.
                if time.time() > end + 10:
                    stats["gave_up_spans"] += spans
                    return
                try:
                    pause = min(float(retry_after or 0.5), 2.0)
                except ValueError:
                    pause = 0.5
                await asyncio.sleep(pause)
        finally:
            slots.release()

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, t0 - time.time()))
        cpu0 = _cpu_s()
        last_send = time.monotonic()
        pending: list[PoolTrace] = []
        pending_spans = 0
        while (now := time.time()) < end:
            due = args.rate * (now - t0)
            while produced + pending_spans < due:
                trace = pool.next(now)
                pending.append(trace)
                pending_spans += len(trace.spans)
            # A batch exporter sends when it has a full batch, or what it has every 200 ms.
            ready = pending_spans >= args.batch or (pending and time.monotonic() - last_send > 0.2)
            if ready and not slots.locked():
                await slots.acquire()
                body = requests.body(pending, time.time_ns())
                task = asyncio.create_task(post(session, body, pending_spans))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                produced += pending_spans
                pending, pending_spans = [], 0
                last_send = time.monotonic()
                continue
            await asyncio.sleep(TICK_S)
        send_wall = time.time() - t0
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=60)
        acked_wall = time.time() - t0
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {
        "mode": "otlp",
        "phase": args.phase,
        "url": args.url,
        "offered": int(args.rate * args.duration),
        "produced": produced,
        "unsent": int(args.rate * args.duration) - produced,
        "sent": stats["ok_spans"],
        **stats,
        "request_p50_s": q(0.5),
        "request_p99_s": q(0.99),
        "error_samples": error_samples,
        "send_wall_s": send_wall,
        "acked_wall_s": acked_wall,
        "cpu_s": _cpu_s() - cpu0,
    }


def run_otlp(args: argparse.Namespace) -> dict[str, Any]:
    pool = TracePool(args.pool_spans, args.seed, args.phase, args.prompt_bytes)
    requests = OtlpRequests(pool, args.phase)
    t0 = _wait_go()
    return asyncio.run(_otlp_main(args, requests, t0))


def main() -> int:
    parser = argparse.ArgumentParser(description="load generator for e2e.py (run by it)")
    parser.add_argument("mode", choices=("sdk", "otlp"))
    parser.add_argument("--kafka", default="", help="bootstrap (sdk mode)")
    parser.add_argument("--url", default="", help="OTLP/HTTP traces URL (otlp mode)")
    parser.add_argument("--rate", type=float, required=True, help="spans per second")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--phase", default="bench")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool-spans", type=int, default=60_000)
    parser.add_argument("--prompt-bytes", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512, help="spans per OTLP request (the SDK's 512)")
    parser.add_argument("--concurrency", type=int, default=4, help="OTLP requests in flight")
    args = parser.parse_args()
    if os.environ.get("BENCH_LOAD_CPU") is not None:
        os.sched_setaffinity(0, {int(os.environ["BENCH_LOAD_CPU"])})
    result = run_sdk(args) if args.mode == "sdk" else run_otlp(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
