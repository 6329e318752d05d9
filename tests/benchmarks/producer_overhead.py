"""What tracing costs the application thread per LLM span: tracehouse SDK vs the OpenTelemetry SDK.

Run: `python tests/benchmarks/producer_overhead.py [--spans 20000] [--runs 5]` (not a pytest test).

The span: an LLM call with 12 attributes' worth of data and a 1 KB prompt. OpenTelemetry gets its
usual shape (12 OpenInference/GenAI attributes through `set_attributes`) with a BatchSpanProcessor and an
exporter that drops everything, so only the SDK's own work is measured. tracehouse is measured twice:
with its typed setters (the same 12 values) and with the same 12 free attributes. Its transport is the
real `SpanTransport`: against `TRACEHOUSE_KAFKA_BOOTSTRAP` when a broker answers there, otherwise against
an unreachable address with a queue big enough to hold every span (the app-thread cost is the same; the
background thread then only retries connecting).

Per variant and run we take the app thread's CPU time (`time.thread_time_ns`, the headline figure: what
the instrumented thread pays), its wall time, and the whole process's CPU time (which includes the
background threads: encoding and sending for tracehouse, nothing for the dropping OTel exporter). Runs are
interleaved and each gets fresh SDK objects; the medians of the runs are printed with the ratios.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

PROMPT = ("You are a support assistant. Use the context to answer. " * 20)[:1024]
COMPLETION = "To rotate your API key, open Settings > API keys, create a new key, update your clients, " * 2
TEMPLATE_ATTRS = {"app.route": "/v1/answer", "deployment.region": "eu-west-1"}


def otel_attributes() -> dict[str, Any]:
    """The 12 attributes an OpenInference/GenAI instrumentation sets on an LLM span."""
    return {
        "openinference.span.kind": "LLM",
        "input.value": PROMPT,
        "output.value": COMPLETION,
        "llm.model_name": "gpt-4o-mini",
        "llm.provider": "openai",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 512,
        "llm.token_count.prompt": 312,
        "llm.token_count.completion": 96,
        "session.id": "sess-42",
        "user.id": "user-7",
        "app.route": "/v1/answer",
    }


# ---- OpenTelemetry -------------------------------------------------------------------------------


def make_otel() -> tuple[Callable[[], None], Callable[[], None]]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    class DropExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    tracer = provider.get_tracer("bench")

    def one_span() -> None:
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as s:
            s.set_attributes(otel_attributes())

    return one_span, provider.shutdown


# ---- tracehouse ----------------------------------------------------------------------------------


def broker_reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def make_tracehouse(bootstrap: str, max_queue: int, typed: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    from tracehouse.producers import Tracer
    from tracehouse.producers.transport import SpanTransport

    transport = SpanTransport(bootstrap, max_queue=max_queue)
    tracer = Tracer("bench", transport)
    start = tracer.span

    def typed_span() -> None:
        with start("chat gpt-4o-mini", kind="LLM") as s:
            s.set_input(PROMPT)
            s.set_output(COMPLETION)
            s.set_llm(model="gpt-4o-mini", provider="openai", temperature=0.2, max_tokens=512)
            s.set_usage(input=312, output=96)
            s.set_session("sess-42")
            s.set_user("user-7")
            s.set_attributes(TEMPLATE_ATTRS)

    def attribute_span() -> None:
        with start("chat gpt-4o-mini", kind="LLM") as s:
            s.set_attributes(otel_attributes())

    def stop() -> None:
        stats = transport.stats.snapshot()
        transport.shutdown(timeout=30.0 if broker_reachable(bootstrap) else 0.0)
        if stats["dropped"]:
            print(f"  warning: tracehouse dropped {stats['dropped']} spans (queue full)", file=sys.stderr)

    return (typed_span if typed else attribute_span), stop


# ---- measuring -----------------------------------------------------------------------------------


def measure(one_span: Callable[[], None], n: int) -> tuple[float, float, float]:
    """µs per span: app-thread CPU, app-thread wall, process CPU."""
    for _ in range(min(n // 10, 2000)):  # warm-up (caches, lazy imports)
        one_span()
    gc.collect()
    cpu0, wall0, proc0 = time.thread_time_ns(), time.perf_counter_ns(), time.process_time_ns()
    for _ in range(n):
        one_span()
    cpu1, wall1, proc1 = time.thread_time_ns(), time.perf_counter_ns(), time.process_time_ns()
    return (cpu1 - cpu0) / n / 1000, (wall1 - wall0) / n / 1000, (proc1 - proc0) / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=20_000, help="spans per run and variant")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    # "unable to connect" is expected when no broker answers
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("tracehouse").setLevel(logging.ERROR)

    env_bootstrap = os.environ.get("TRACEHOUSE_KAFKA_BOOTSTRAP", "")
    if env_bootstrap and broker_reachable(env_bootstrap):
        bootstrap, where = env_bootstrap, f"Kafka at {env_bootstrap}"
    else:
        bootstrap, where = "127.0.0.1:1", "unreachable broker (127.0.0.1:1), spans held in the queue"
    max_queue = args.spans * 2 + 10_000

    variants: dict[str, Callable[[], tuple[Callable[[], None], Callable[[], None]]]] = {
        "opentelemetry-sdk (BatchSpanProcessor, dropping exporter)": make_otel,
        "tracehouse, typed setters": lambda: make_tracehouse(bootstrap, max_queue, typed=True),
        "tracehouse, 12 free attributes": lambda: make_tracehouse(bootstrap, max_queue, typed=False),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    print(f"{args.runs} runs x {args.spans} spans per variant; tracehouse transport: {where}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for run in range(args.runs):
        for name, make in variants.items():
            one_span, stop = make()
            try:
                results[name].append(measure(one_span, args.spans))
            finally:
                stop()
        print(f"  run {run + 1}/{args.runs} done", file=sys.stderr)

    print(f"\n{'variant':58} {'thread CPU':>11} {'wall':>9} {'proc CPU':>9}   (µs/span, median)")
    medians = {}
    for name, rows in results.items():
        med = tuple(statistics.median(r[i] for r in rows) for i in range(3))
        medians[name] = med
        print(f"{name:58} {med[0]:11.2f} {med[1]:9.2f} {med[2]:9.2f}")
    otel = medians[next(iter(variants))]
    for name, med in list(medians.items())[1:]:
        print(
            f"ratio {name} / opentelemetry: thread CPU {med[0] / otel[0]:.2f}, wall {med[1] / otel[1]:.2f}, "
            f"process CPU {med[2] / otel[2]:.2f}"
        )


if __name__ == "__main__":
    main()
