"""How many LLM spans per second the OTLP/HTTP receiver takes in on one core.

Run: `python tests/benchmarks/receiver_throughput.py [--spans 60000] [--runs 3] [--kafka auto]`
(not a pytest test). Prints the median of the runs.

The span: what an OpenInference-instrumented OpenAI call exports — 15 attributes (kind, model, provider,
invocation parameters, two input messages, an output message, token counts, session, user) and a
~900-byte prompt, ~1.7 KB per span in protobuf — made by the OpenTelemetry SDK and encoded by its OTLP
encoder, 500 spans per request (the SDK's BatchSpanProcessor sends up to 512).

The receiver runs in a child process pinned to CPU 0 (`sched_setaffinity`), so "spans/s" is what one
core does; the load generator (aiohttp, bodies built in advance, 4 requests in flight) is pinned to
CPU 1. With `--processes N` (as `tracehouse receiver --processes N`), N receivers share the port
(SO_REUSEPORT), each with its own sender, unpinned, and the CPU per span is the sum over all N.
`--py-spy PREFIX` records each receiver with py-spy (collapsed stacks per process and path, for a flame graph).
Per run we report wall-clock spans/s, the receiver process's CPU time per span (from
/proc/PID/stat) and the request latency p50/p99 seen by the load generator. What is behind the
receiver, by `--kafka`:
- `none` (default): a sender that acknowledges at once, to measure the receiver alone;
- `auto`: a real Apache Kafka started for the run (needs Java 17; slow to start);
- `HOST:PORT`: the same against a broker you run.
With Kafka, each run measures two peers on the same broker, one after the other:
- `acked`: the production path, `AckedSpanSender` on the receiver's event loop; a request is answered
  once Kafka has acknowledged its spans (acks=all). The run ends when the last answer arrives.
- `fire-and-forget`: the path before it, the SDK's `SpanTransport` (its own thread) answering as soon
  as the spans are queued; the run ends only when Kafka has acknowledged every span, so both peers
  move the same spans into Kafka. Its latency is that of the answer, not of the spans' arrival.
The ratio of the two is the cost of "200 means in Kafka"; the added latency is the difference of the
p50s and of the p99s.
Also printed, for reference: the CPU cost of decode + map alone per span, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from otlp_workload import anchor_attributes  # issue 12's workload, shared with e2e.py

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


def anchor_bodies(count: int, batch: int, encoding: str) -> list[bytes]:
    """`count` bodies of `batch` spans of issue 12's workload (see `anchor_attributes`)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def kv(key: str, value: object) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        if isinstance(value, float):
            return KeyValue(key=key, value=AnyValue(double_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=str(value)))

    rng = random.Random(12)
    names = ("agent.run", "ChatCompletion", "chat gpt-4o", "lookup_order")
    bodies = []
    for b in range(count):
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource = [kv("service.name", "support-bot"), kv("deployment.environment", "prod")]
        resource_spans.resource.attributes.extend(resource)
        scope = resource_spans.scope_spans.add()
        scope.scope.name = "openinference.instrumentation.openai"
        for t in range(batch // 4):
            trace_id, root = rng.randbytes(16), rng.randbytes(8)
            start = 1_750_000_000_000_000_000 + (b * batch + t) * 10_000_000
            for j, attributes in enumerate(anchor_attributes(rng, b * batch + t)):
                span = scope.spans.add(
                    trace_id=trace_id, span_id=root if j == 0 else rng.randbytes(8),
                    parent_span_id=b"" if j == 0 else root, name=names[j], kind=3 if j == 2 else 1,
                    start_time_unix_nano=start + j, end_time_unix_nano=start + 5_000_000 + j,
                )  # fmt: skip
                span.status.code = 1
                span.attributes.extend(kv(k, v) for k, v in attributes.items())
        if encoding == "json":
            document = json_format.MessageToDict(request)
            for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:  # OTLP/JSON ids are hex, not protobuf-JSON base64
                        span[key] = base64.b64decode(span[key]).hex()
            bodies.append(json.dumps(document).encode())
        else:
            bodies.append(request.SerializeToString())
    return bodies


def ingest_split(body: bytes, encoding: str, repeats: int = 9, rounds: int = 10) -> dict[str, float]:
    """CPU µs per span of decode, of map (with the span limits) and of the whole `ingest`, each the
    median of `repeats` (time.process_time over `rounds` calls), interleaved so load hits all alike."""
    from tracehouse.producers.otlp.ingest import decode_request, ingest, map_batches

    media = "application/json" if encoding == "json" else "application/x-protobuf"
    spans = len(ingest(body, media).spans)
    decoded = decode_request(body, media)
    steps = {
        "decode": lambda: decode_request(body, media),
        "map": lambda: map_batches(decoded, source_bytes=len(body)),
        "ingest": lambda: ingest(body, media),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.process_time()
            for _ in range(rounds):
                step()
            times[name].append((time.process_time() - t0) / (rounds * spans) * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


# ---- the receiver process -----------------------------------------------------------------------


class CountingSender:
    """A sender that acknowledges at once: the receiver's cost without Kafka's."""

    max_pending = 10_000_000
    pending = 0
    connected = ready = True
    closing = False

    def health(self) -> dict[str, object]:
        return {"kafka_ready": True}

    async def start(self) -> None:
        return None

    async def stop(self, timeout: float = 0.0) -> bool:
        return True

    def submit(self, spans: list[object], encoded: list[bytes] | None = None) -> asyncio.Future[object]:
        from tracehouse.producers.acked_sender import SendOutcome

        future = asyncio.get_running_loop().create_future()
        future.set_result(SendOutcome(True))
        return future


class FireAndForget(CountingSender):
    """The path before acknowledged sends: the SDK's `SpanTransport` (a thread of its own) takes the spans
    into its queue and the request is answered at once."""

    def __init__(self, bootstrap: str) -> None:
        from tracehouse.producers.transport import SpanTransport

        self.transport = SpanTransport(bootstrap, client_id="bench-receiver")
        self.max_pending = self.transport.max_queue

    @property
    def pending(self) -> int:  # type: ignore[override]
        return self.transport.pending

    async def stop(self, timeout: float = 30.0) -> bool:
        flushed = await asyncio.to_thread(self.transport.flush, timeout)
        self.transport.shutdown(timeout=5)
        return flushed

    def submit(self, spans: list[object], encoded: list[bytes] | None = None) -> asyncio.Future[object]:
        self.transport.submit_many(spans)  # type: ignore[arg-type]
        return super().submit(spans)


def serve(port: int, kafka: str, path: str, offload_bytes: int | None, processes: int = 1) -> None:
    if processes == 1:
        os.sched_setaffinity(0, {0})
    from tracehouse.producers.otlp import ReceiverOptions
    from tracehouse.producers.otlp.processes import tune_gc
    from tracehouse.producers.otlp.server import ReceiverServer

    if kafka == "none":
        sender: object = CountingSender()
    elif path == "fire-and-forget":
        sender = FireAndForget(kafka)
    else:
        from tracehouse.producers.acked_sender import AckedSpanSender

        sender = AckedSpanSender(kafka, client_id="bench-receiver")
    options = ReceiverOptions() if offload_bytes is None else ReceiverOptions(offload_bytes=offload_bytes)
    if not os.environ.get("BENCH_DEFAULT_GC"):  # as `tracehouse receiver` runs (set it to compare)
        tune_gc()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = ReceiverServer(sender, options, "127.0.0.1", port, reuse_port=processes > 1)  # type: ignore[arg-type]
        await server.start()
        print("READY", flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


def _serving_pid(child: subprocess.Popen[bytes]) -> int:
    """The receiver's pid: the child itself, or (under `--py-spy`) the python process py-spy started."""
    if Path(child.args[0]).name != "py-spy":  # type: ignore[index]
        return child.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.05)
    raise TimeoutError("py-spy did not start the receiver")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the load generator -------------------------------------------------------------------------


async def send_all(
    url: str, bodies: list[bytes], requests: int, concurrency: int, headers: dict[str, str]
) -> tuple[int, list[float]]:
    """Send `requests` bodies with `concurrency` in flight; 503s are retried like an exporter would.
    Returns the 503 count and each 200's latency in seconds (from sending to the full answer)."""
    import aiohttp

    throttled = 0
    next_index = 0
    latencies: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, throttled
        while next_index < requests:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            while True:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - t0)
                        break
                    if response.status != 503:
                        raise RuntimeError(f"receiver answered {response.status}")
                    throttled += 1
                await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return throttled, latencies


async def wait_drained(health_url: str, timeout: float = 120.0, processes: int = 1) -> None:
    """Until every receiver process has reported nothing pending (a new connection per poll, so that
    the kernel spreads the polls over the processes sharing the port)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    drained: set[int] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while time.monotonic() < deadline:
            async with session.get(health_url) as response:
                health = await response.json()
            if health["pending_spans"] == 0:
                drained.add(health["pid"])
                if len(drained) >= processes:
                    return
            else:
                drained.discard(health["pid"])
                await asyncio.sleep(0.02)
    raise TimeoutError("the transport did not drain")


@dataclass
class RunResult:
    rate: float  # spans/s
    cpu_us: float  # receiver CPU µs per span
    p50_ms: float  # request latency under the load
    p99_ms: float
    throttled: int
    idle_p50_ms: float = 0.0  # request latency one request at a time, after the load
    idle_p99_ms: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def one_run(args: argparse.Namespace, bodies: list[bytes], kafka: str, path: str) -> RunResult:
    from tracehouse.infra.ports import free_port

    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--kafka", kafka, "--path", path,
               "--processes", str(args.processes),
               *(["--offload-bytes", str(args.offload_bytes)] if args.offload_bytes is not None else [])]  # fmt: skip
    children = []
    for n in range(args.processes):
        out = f"{args.py_spy}.{path.replace(' ', '-')}.{n}"
        spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-f", "raw", "-r", "250", "-o", out, "--"]
        children.append(subprocess.Popen([*(spy if args.py_spy else []), *command], stdout=subprocess.PIPE))
    pids = [_serving_pid(child) for child in children]
    processes = args.processes

    def cpu_seconds_all() -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    try:
        for child in children:  # py-spy says a line or two of its own first
            assert child.stdout is not None and b"READY\n" in iter(child.stdout.readline, b"")
        url = f"http://127.0.0.1:{port}/v1/traces"
        content_type = "application/json" if args.encoding == "json" else "application/x-protobuf"
        headers = {"Content-Type": content_type}
        if args.gzip:
            headers["Content-Encoding"] = "gzip"
        requests = max(args.spans // args.batch, 1)
        asyncio.run(send_all(url, bodies, min(8, requests), 2, headers))  # warm-up
        asyncio.run(wait_drained(url.replace("/v1/traces", "/health"), processes=processes))
        cpu0, t0 = cpu_seconds_all(), time.perf_counter()
        throttled, latencies = asyncio.run(send_all(url, bodies, requests, args.concurrency, headers))
        # fire-and-forget: until in Kafka
        asyncio.run(wait_drained(url.replace("/v1/traces", "/health"), processes=processes))
        wall, cpu = time.perf_counter() - t0, cpu_seconds_all() - cpu0
        spans = requests * args.batch
        p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
        _, idle = asyncio.run(send_all(url, bodies, 40, 1, headers))
        asyncio.run(wait_drained(url.replace("/v1/traces", "/health"), processes=processes))
        idle_p50, idle_p99 = percentile(idle, 0.5) * 1e3, percentile(idle, 0.99) * 1e3
        return RunResult(spans / wall, cpu / spans * 1e6, p50, p99, throttled, idle_p50, idle_p99)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # it died already; its error is on stderr
                pass
        for child in children:
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
    from tracehouse.core.topic_admin import create_topics
    from tracehouse.core.topics import topic_specs
    from tracehouse.infra.kafka_broker import KafkaBroker

    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="bench-kafka-")), partitions=4)
    broker.start()
    create_topics(broker.bootstrap, topic_specs(4))  # every topic, as `migrate` makes them
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
    parser.add_argument(
        "--workload",
        choices=("llm", "anchor"),
        default="llm",
        help="llm: one OpenInference LLM span shape; anchor: issue 12's traces (200 spans a body)",
    )
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="print decode / map / ingest CPU µs per span in this process, and exit",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="receiver processes sharing the port (unpinned when more than 1)"
    )
    parser.add_argument("--py-spy", default="", help="record each receiver with py-spy into PREFIX.<path>.<n>")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="acked", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.kafka, args.path, args.offload_bytes, args.processes)
        return 0

    if args.ingest_only:  # measured where it runs, not pinned: compare runs made in the same conditions
        batch = 200 if args.workload == "anchor" and args.batch == 500 else args.batch
        build = anchor_bodies if args.workload == "anchor" else build_bodies
        (body,) = build(1, batch, args.encoding)
        cost = ingest_split(body, args.encoding)
        print(
            f"{args.workload} workload, {batch} spans per {args.encoding} body"
            f" ({len(body) / batch:.0f} bytes per span): decode {cost['decode']:.1f}, map {cost['map']:.1f},"
            f" ingest {cost['ingest']:.1f} µs CPU per span (medians)"
        )
        return 0
    if args.processes == 1:
        os.sched_setaffinity(0, {1})
    build = anchor_bodies if args.workload == "anchor" else build_bodies
    bodies = build(12, args.batch, args.encoding)
    if args.gzip:
        bodies = [gzip.compress(b, 6) for b in bodies]
    size = len(bodies[0]) / args.batch
    print(
        f"{args.batch} LLM spans per request, {size:.0f} bytes per span ({args.encoding}"
        f"{', gzip' if args.gzip else ''}), {args.concurrency} requests in flight, "
        + ("receiver pinned to CPU 0" if args.processes == 1 else f"{args.processes} receiver processes, unpinned")
    )
    print(f"decode + map alone: {ingest_cost(bodies, args.encoding, args.gzip):.1f} µs CPU per span")
    broker, kafka = (None, args.kafka)
    if args.kafka == "auto":
        broker, kafka = start_kafka()
    paths = ["receiver alone"] if kafka == "none" else ["acked", "fire-and-forget"]
    results: dict[str, list[RunResult]] = {path: [] for path in paths}
    try:
        for run in range(args.runs):
            for path in paths:  # interleaved, so a busy moment of the machine hits both peers alike
                result = one_run(args, bodies, kafka, path)
                results[path].append(result)
                print(
                    f"  run {run + 1} {path:>15}: {result.rate:,.0f} spans/s, {result.cpu_us:.1f} µs receiver CPU"
                    f" per span, latency p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms"
                    f" (one at a time: {result.idle_p50_ms:.1f} / {result.idle_p99_ms:.1f} ms),"
                    f" {result.throttled} x 503"
                )
    finally:
        if broker is not None:
            broker.stop()  # type: ignore[attr-defined]
    medians = {}
    for path, runs in results.items():
        medians[path] = RunResult(
            statistics.median(r.rate for r in runs),
            statistics.median(r.cpu_us for r in runs),
            statistics.median(r.p50_ms for r in runs),
            statistics.median(r.p99_ms for r in runs),
            sum(r.throttled for r in runs),
            statistics.median(r.idle_p50_ms for r in runs),
            statistics.median(r.idle_p99_ms for r in runs),
        )
    behind = "a sender that acknowledges at once (receiver alone)" if kafka == "none" else f"Kafka {kafka}"
    print(f"median of {args.runs} [{behind}]:")
    for path, m in medians.items():
        print(
            f"  {path:>15}: {m.rate:,.0f} spans/s, {m.cpu_us:.1f} µs CPU per span (all receiver processes),"
            f" latency p50 {m.p50_ms:.1f} ms p99 {m.p99_ms:.1f} ms; one request at a time p50 {m.idle_p50_ms:.1f} ms"
            f" p99 {m.idle_p99_ms:.1f} ms"
        )
    if len(medians) == 2:
        acked, old = medians["acked"], medians["fire-and-forget"]
        print(
            f"  acked / fire-and-forget: {acked.rate / old.rate:.2f}x spans/s, {acked.cpu_us / old.cpu_us:.2f}x CPU"
            f" per span; added latency under load p50 {acked.p50_ms - old.p50_ms:+.1f} ms,"
            f" p99 {acked.p99_ms - old.p99_ms:+.1f} ms;"
            f" one at a time p50 {acked.idle_p50_ms - old.idle_p50_ms:+.1f} ms,"
            f" p99 {acked.idle_p99_ms - old.idle_p99_ms:+.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
