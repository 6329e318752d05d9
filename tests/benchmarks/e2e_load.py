"""The load generator of the end-to-end benchmark (e2e.py), run by it as child processes.

Not a benchmark itself and not a test. Two modes, one process each, so each one's CPU shows on its own:
- `otlp`: issue 12's workload as OTLP/HTTP protobuf, 200 spans per POST (otlp_workload.py), to a receiver
  at `--url`: tracehouse's, or Arize Phoenix's (the same bodies for both with the same seed). The bodies
  are encoded once before the clock starts; each POST is a copy with fresh trace and span ids and times
  patched into the bytes (~1.5 µs per span), so the generator neither limits the rate nor takes much of
  the CPU the stack needs. `--concurrency` requests in flight (4: the issue's four senders); 503s and
  lost connections are retried after a pause, as an exporter does.
- `sdk`: whole traces into the SDK's `SpanTransport` (what an instrumented application does), from
  `TraceFactory` (RAG, agent and chat traces), built once into a pool at start-up and re-sent with a fresh
  trace id and moved times (~0.5 µs per span). Used only with e2e.py's --otlp-share below 1.

In both, a trace's root ends at the moment it is handed over, so `ingested_at - end_time` of a root span
is the delay from span end to queryable.

Alert traffic: traces carrying a rate-limited LLM call are sent only in even 10-second windows (epoch
aligned), so an alert rule `rate_limit_count > 0 over 10 s` fires and resolves every 20 s.

Protocol with the parent: the child builds its pool and connects, prints `READY`, reads `GO <epoch
seconds>` from stdin, runs from that instant for `--duration` seconds at `--rate` spans/s (a token bucket),
flushes, and prints one JSON line with its counts and its own CPU seconds over the run.
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
from pathlib import Path
from typing import Any

import msgspec
from otlp_workload import SPANS_PER_BODY, BodyPool

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


def rejected_spans(answer: bytes) -> int:
    """`partial_success.rejected_spans` of a 200 answer: spans the receiver refused (they are not "sent")."""
    if not answer:
        return 0
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    try:
        return ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans
    except Exception:  # an answer that is not protobuf (Phoenix answers with an empty body)
        return 0


async def _otlp_main(args: argparse.Namespace, pool: BodyPool, t0: float) -> dict[str, Any]:
    import aiohttp

    stats = {
        "requests": 0,
        "ok_spans": 0,
        "ok_requests": 0,
        "throttled": 0,
        "errors": 0,
        "gave_up_spans": 0,
        "rejected_spans": 0,
    }
    latencies: list[float] = []
    error_samples: list[str] = []
    produced = 0
    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(args.concurrency)
    end = t0 + args.duration
    headers = {"Content-Type": "application/x-protobuf"}

    async def post(session: aiohttp.ClientSession, body: bytes | bytearray, spans: int) -> None:
        try:
            while True:
                stats["requests"] += 1
                started = time.monotonic()
                try:
                    async with session.post(args.url, data=body, headers=headers) as response:
                        answer = await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, retry_after = 0, None
                    if len(error_samples) < 5:
                        error_samples.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.monotonic() - started)
                if status == 200:
                    rejected = rejected_spans(answer)
                    stats["ok_spans"] += spans - rejected
                    stats["rejected_spans"] += rejected
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
        while (now := time.time()) < end:
            # A body when the token bucket holds its spans and a request slot is free; the slot wait is
            # what makes a slow receiver show as spans not sent ("unsent") rather than as a queue here.
            if produced + SPANS_PER_BODY <= args.rate * (now - t0) and not slots.locked():
                await slots.acquire()
                template = pool.next(with_limited=int(now // ALERT_PERIOD_S) % 2 == 0)
                body = pool.fresh(template, time.time_ns())
                task = asyncio.create_task(post(session, body, template.spans))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                produced += template.spans
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
    pool = BodyPool(args.pool_bodies, args.seed, args.phase, cache=args.pool_cache)
    t0 = _wait_go()
    return asyncio.run(_otlp_main(args, pool, t0))


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
    parser.add_argument("--pool-bodies", type=int, default=100, help="distinct OTLP bodies (otlp mode)")
    parser.add_argument("--pool-cache", type=Path, default=None,
                        help="otlp mode: the encoded bodies, kept here for the next phase's generator")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=4, help="OTLP requests in flight")
    args = parser.parse_args()
    if os.environ.get("BENCH_LOAD_CPU") is not None:
        os.sched_setaffinity(0, {int(os.environ["BENCH_LOAD_CPU"])})
    result = run_sdk(args) if args.mode == "sdk" else run_otlp(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
