"""How many LLM spans per second the OTLP/HTTP receiver takes in on one core.

Run: `python tests/benchmarks/receiver_throughput.py [--spans 60000] [--runs 3] [--kafka auto]`
(not a pytest test). Prints the median of the runs.

The span: what an OpenInference-instrumented OpenAI call exports — 15 attributes (kind, model, provider,
invocation parameters, two input messages, an output message, token counts, session, user) and a
~900-byte prompt, ~1.7 KB per span in protobuf — made by the OpenTelemetry SDK and encoded by its OTLP
encoder, 500 spans per request (the SDK's BatchSpanProcessor sends up to 512).

The receiver runs in a child process pinned to CPU 0 (`sched_setaffinity`), so "spans/s" is what one
core does; the load generator (aiohttp, bodies built in advance, 4 requests in flight) is pinned to
CPU 1. Per run we report wall-clock spans/s and the receiver process's CPU time per span (from
/proc/PID/stat). The span queue behind the receiver is, by `--kafka`:
- `none` (default): a queue that counts and drops, to measure the receiver alone;
- `auto`: a real Apache Kafka started for the run (needs Java 17; slow to start), with the real
  `SpanTransport` in the receiver process (its encoding and sending thread shares the receiver's core,
  as in production), and the run ends only when Kafka has acknowledged every span;
- `HOST:PORT`: the same against a broker you run.
Also printed, for reference: the CPU cost of decode + map alone per span, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = ("You are a support assistant. Use the context to answer. " * 20)[:900]
COMPLETION = "To rotate your API key, open Settings > API keys, create a new key, update your clients."


def llm_attributes(i: int) -> dict[str, object]:
    return {
        "openinference.span.kind": "LLM",
        "input.value": PROMPT,
        "output.value": COMPLETION,
        "llm.model_name": "gpt-4o-mini",
        "llm.provider": "openai",
        "llm.invocation_parameters": '{"temperature": 0.2, "max_tokens": 512}',
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "You are helpful.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": f"How do I rotate my key? ({i})",
        "llm.token_count.prompt": 312 + i % 50,
        "llm.token_count.completion": 96,
        "llm.token_count.total": 408 + i % 50,
        "session.id": f"sess-{i % 97}",
        "user.id": f"user-{i % 13}",
    }


def build_bodies(count: int, batch: int, encoding: str) -> list[bytes]:
    """`count` request bodies of `batch` LLM spans each, made and encoded by the OpenTelemetry SDK."""
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    captured: list[object] = []

    class Capture(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            captured.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-receiver"}))
    provider.add_span_processor(SimpleSpanProcessor(Capture()))
    tracer = provider.get_tracer("bench")
    bodies = []
    for b in range(count):
        captured.clear()
        for i in range(batch):
            with tracer.start_as_current_span("ChatCompletion") as span:
                span.set_attributes(llm_attributes(b * batch + i))  # type: ignore[arg-type]
        request = encode_spans(captured)  # type: ignore[arg-type]
        if encoding == "json":
            document = json_format.MessageToDict(request)
            for resource_spans in document["resourceSpans"]:
                for scope_spans in resource_spans["scopeSpans"]:
                    for span in scope_spans["spans"]:
                        for key in ("traceId", "spanId", "parentSpanId"):
                            if key in span:  # OTLP/JSON ids are hex, not protobuf-JSON base64
                                import base64

                                span[key] = base64.b64decode(span[key]).hex()
            bodies.append(json.dumps(document).encode())
        else:
            bodies.append(request.SerializeToString())
    return bodies


# ---- the receiver process -----------------------------------------------------------------------


class CountingQueue:
    """A span queue that counts and drops: the receiver's cost without a transport's."""

    max_queue = 10_000_000
    pending = 0

    def __init__(self) -> None:
        self.count = 0

    def submit_many(self, spans: list[object]) -> int:
        self.count += len(spans)
        return len(spans)


def serve(port: int, kafka: str, offload_bytes: int | None) -> None:
    os.sched_setaffinity(0, {0})
    from tracehouse.producers.otlp import ReceiverOptions
    from tracehouse.producers.otlp.server import ReceiverServer

    if kafka == "none":
        queue: object = CountingQueue()
    else:
        from tracehouse.producers.transport import SpanTransport

        queue = SpanTransport(kafka, client_id="bench-receiver")
    options = ReceiverOptions() if offload_bytes is None else ReceiverOptions(offload_bytes=offload_bytes)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = await ReceiverServer(queue, options, "127.0.0.1", port).start()  # type: ignore[arg-type]
        print("READY", flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
    if kafka != "none":
        queue.shutdown()  # type: ignore[attr-defined]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the load generator -------------------------------------------------------------------------


async def send_all(
    url: str, bodies: list[bytes], requests: int, concurrency: int, headers: dict[str, str]
) -> int:
    """Send `requests` bodies with `concurrency` in flight; 503s are retried like an exporter would."""
    import aiohttp

    throttled = 0
    next_index = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, throttled
        while next_index < requests:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            while True:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        break
                    if response.status != 503:
                        raise RuntimeError(f"receiver answered {response.status}")
                    throttled += 1
                await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return throttled


async def wait_drained(health_url: str, timeout: float = 120.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(health_url) as response:
                if (await response.json())["pending_spans"] == 0:
                    return
            await asyncio.sleep(0.02)
    raise TimeoutError("the transport did not drain")


def one_run(args: argparse.Namespace, bodies: list[bytes], kafka: str) -> tuple[float, float, int]:
    from tracehouse.infra.ports import free_port

    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--kafka", kafka,
         *(["--offload-bytes", str(args.offload_bytes)] if args.offload_bytes is not None else [])],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"READY"
        url = f"http://127.0.0.1:{port}/v1/traces"
        content_type = "application/json" if args.encoding == "json" else "application/x-protobuf"
        headers = {"Content-Type": content_type}
        if args.gzip:
            headers["Content-Encoding"] = "gzip"
        requests = max(args.spans // args.batch, 1)
        asyncio.run(send_all(url, bodies, min(8, requests), 2, headers))  # warm-up
        asyncio.run(wait_drained(url.replace("/v1/traces", "/health")))
        cpu0, t0 = cpu_seconds(child.pid), time.perf_counter()
        throttled = asyncio.run(send_all(url, bodies, requests, args.concurrency, headers))
        asyncio.run(wait_drained(url.replace("/v1/traces", "/health")))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(child.pid) - cpu0
        spans = requests * args.batch
        return spans / wall, cpu / spans * 1e6, throttled
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)


def ingest_cost(bodies: list[bytes], encoding: str, compressed: bool) -> float:
    """CPU µs per span of decompress + decode + map alone (best of a few), in this process."""
    from tracehouse.producers.otlp.ingest import ingest

    media = "application/json" if encoding == "json" else "application/x-protobuf"
    body = bodies[0]
    spans = len(ingest(body, media, "gzip" if compressed else "").spans)
    best = float("inf")
    for _ in range(7):
        t0 = time.process_time()
        ingest(body, media, "gzip" if compressed else "")
        best = min(best, time.process_time() - t0)
    return best / spans * 1e6


def start_kafka() -> tuple[object, str]:
    from tracehouse.core import topics
    from tracehouse.infra.kafka_broker import KafkaBroker, create_topics

    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="bench-kafka-")), partitions=4)
    broker.start()
    create_topics(broker.bootstrap, {topics.SPANS: 4})
    return broker, broker.bootstrap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=60_000, help="spans per run")
    parser.add_argument("--batch", type=int, default=500, help="spans per request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--encoding", choices=("protobuf", "json"), default="protobuf")
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies (Content-Encoding: gzip)")
    parser.add_argument("--kafka", default="none", help="none | auto | HOST:PORT (see the module doc)")
    parser.add_argument("--offload-bytes", type=int, default=None, help="ReceiverOptions.offload_bytes")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.kafka, args.offload_bytes)
        return 0

    os.sched_setaffinity(0, {1})
    bodies = build_bodies(12, args.batch, args.encoding)
    if args.gzip:
        bodies = [gzip.compress(b, 6) for b in bodies]
    size = len(bodies[0]) / args.batch
    print(
        f"{args.batch} LLM spans per request, {size:.0f} bytes per span ({args.encoding}"
        f"{', gzip' if args.gzip else ''}), {args.concurrency} requests in flight, receiver pinned to CPU 0"
    )
    print(f"decode + map alone: {ingest_cost(bodies, args.encoding, args.gzip):.1f} µs CPU per span")
    broker, kafka = (None, args.kafka)
    if args.kafka == "auto":
        broker, kafka = start_kafka()
    try:
        results = []
        for run in range(args.runs):
            rate, cpu_us, throttled = one_run(args, bodies, kafka)
            results.append((rate, cpu_us))
            print(
                f"  run {run + 1}: {rate:,.0f} spans/s, {cpu_us:.1f} µs receiver CPU per span, {throttled} x 503"
            )
    finally:
        if broker is not None:
            broker.stop()  # type: ignore[attr-defined]
    rate = statistics.median(r for r, _ in results)
    cpu_us = statistics.median(c for _, c in results)
    queue = "counting queue (receiver alone)" if kafka == "none" else f"SpanTransport -> Kafka {kafka}"
    print(f"median of {args.runs}: {rate:,.0f} spans/s on one core, {cpu_us:.1f} µs CPU per span [{queue}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
