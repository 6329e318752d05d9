"""How many spans per second the worker (`tracehouse worker`, Faust) takes through validation, trace assembly
and windowed rollups, with one and with two worker processes; and how long after a span ends its trace
record is on `tracehouse.traces`.

Run: `python tests/benchmarks/pipeline_throughput.py [--quick]` (a script, not a pytest test). It starts a
real Apache Kafka (KRaft) on free ports in a temporary directory unless TRACEHOUSE_KAFKA_BOOTSTRAP names
one (ClickHouse is not needed: the worker does not write to it). Target (issue): at least 30,000 spans/s per
worker process on this 2-core machine.

1. The ceiling: `SpanProcessor.on_event` / `on_message` (pipeline/processor.py) driven directly with events
   shaped like Faust's, without Faust or Kafka:
   decode + validate, assemble, price, window, then the tick that emits the trace records, with the
   garbage collector tuned as `tracehouse worker` tunes it. CPU µs per span in this process; 1e6 / that
   is what one core could do if Faust and Kafka cost nothing.
2. Worker throughput: N spans pre-loaded into `tracehouse.spans` (4 partitions, 500 spans per message, the
   SDK's transport; traces from the last few minutes, each span in the order it ended, as an application
   emits them), then one worker (and then two) started with a consumer group of its own, pointed at the
   first offset of the load. The signal is what the worker emits: every trace record on `tracehouse.traces`
   (read by a consumer here) says how many spans it covers, so the spans emitted over time trace the spans
   consumed, shifted by the quiet period (a trace is emitted `quiet_s` = 3 s after its last span arrived)
   and the 0.25 s tick. Committed offsets would be a worse signal: the worker commits only below its oldest
   open trace and after a checkpoint, so they lag by seconds. The rate is the slope between 10 % and 90 % of
   the spans emitted (the shift cancels; Faust's start-up and the final quiet period are outside the
   window); the wall time from start to the last record is shown too. CPU per span of the workers and of
   the Kafka broker is read from /proc over the same phase. Each worker process gets its own data directory.
3. Delay from a span's end to its trace record: while the single worker runs, traces are sent live at a
   fixed rate (5,000 spans/s), each shifted so that it ends at the moment it is handed to the transport;
   for each trace record, the time it was read here minus its `end_time_ns`. This is mostly the quiet
   period by design (a trace is only known to be complete once nothing new arrived for `quiet_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import _harness as h
from aiokafka import TopicPartition

from tracehouse.core import topics
from tracehouse.core.schema import Span, decode_traces, encode_batch
from tracehouse.pipeline.partition_windows import windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor
from tracehouse.pipeline.sampling import SamplingRules
from tracehouse.pipeline.worker import GC_THRESHOLDS

MESSAGE_SPANS = 500
# --sampling modes: the default rules, and with the keep rule on the root group's p95 as well
SAMPLING_RULES = {"on": SamplingRules(), "p95": SamplingRules(latency_above_quantile=0.95)}
QUIET_S = ProcessorOptions().quiet_s
TARGET_PER_WORKER = 30_000


def emitted_order(spans: list[Span]) -> list[Span]:
    """Spans in the order an application emits them: each when it ends. (TraceFactory returns whole traces,
    children first; sent as they are, a trace's early spans would arrive after spans that ended seconds
    later, and the 10-second rollup windows, which close by event time while catching up, would count them
    as late, a slower path that live traffic rarely takes.)"""
    return sorted(spans, key=lambda s: s.end_time_ns)


# ---- 1: the ceiling, in process --------------------------------------------------------------------------


class _Counter:
    """A Sendable that only counts what it is given."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def send(self, *, key: Any = None, value: Any = None, partition: int | None = None) -> None:
        self.messages += 1
        self.bytes += len(value or b"")


# In-flight guards (pipeline/guards.py), `--guards`: none; the built-in loop guard (what a worker runs by
# default); or one rule of every trace metric, thresholds never reached (every check paid, nothing fired).
GUARD_MODES = ("off", "loop", "all")


def guard_rules(mode: str) -> list[Any]:
    from tracehouse.pipeline.guard_rules import TRACE_METRICS, default_trace_rules, parse_trace_rules

    if mode == "off":
        return []
    if mode == "loop":
        return default_trace_rules()
    tables = [{"name": m, "type": "trace", "metric": m, "threshold": 1e12} for m in TRACE_METRICS]
    return parse_trace_rules({"rules": tables})


# Budgets per user and session (pipeline/budgets.py), `--budgets`: none (a worker's default); one rule (cost
# per user per hour); or three (that, LLM calls per session, tokens per user), thresholds never reached.
BUDGET_MODES = ("off", "on", "all")


def budget_rules(mode: str) -> list[Any]:
    from tracehouse.pipeline.budgets_rules import parse_budget_rules

    rule = {"type": "budget", "window_seconds": 3600, "threshold": 1e12}
    tables = [{"name": "user-cost", "key": "user", "metric": "cost_usd", **rule}]
    if mode == "all":
        tables.append({"name": "session-calls", "key": "session", "metric": "llm_calls", **rule})
        tables.append({"name": "user-tokens", "key": "user", "metric": "total_tokens", **rule})
    return parse_budget_rules({"rules": tables}) if mode != "off" else []


def held_bytes_per_span(messages: list[tuple[int, bytes]], count: int) -> float:
    """What tail sampling holds per span of an open trace: its bytes, copied out of the message
    (pipeline/sampling.py `raw_spans`), kept until its trace is decided; measured with tracemalloc."""
    import tracemalloc

    from tracehouse.pipeline.sampling import raw_spans
    from tracehouse.pipeline.span_view import decode_work_batch

    decoded = [(value, decode_work_batch(value)[0]) for _, value in messages]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        held = [raw_spans(value, spans) for value, spans in decoded]
        size = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del held
    return size / count


def sampling_table(results: dict[str, list[tuple[float, float, int]]], held: float, kept: str) -> None:
    h.table(
        "Tail sampling: SpanProcessor CPU µs per span (on_message + on_tick), median (min-max) of interleaved runs",
        ["sampling", "µs/span", "spans/s on one core"],
        [
            (mode, h.spread([a + b for a, b, _ in got], "{:.2f}"), h.spread([1e6 / (a + b) for a, b, _ in got]))
            for mode, got in results.items()
        ],
        caption=f"on: keep errors, rate limits, guarded traces and 10 % of the rest ({kept}); the spans of kept "
        f"traces copied onto tracehouse.spans.kept at emission. Memory held per span of an open trace: "
        f"{held:,.0f} bytes (the span's bytes). Delay added to span storage: the trace's emission (quiet period "
        f"+ tick; see the delay table), since kept spans leave the worker with their trace record; "
        f"{h.host_load()}",
    )


def ceiling(
    count: int,
    runs: int,
    guard_modes: tuple[str, ...] = ("loop",),
    sampling_modes: tuple[str, ...] = ("off",),
    budget_modes: tuple[str, ...] = ("off",),
) -> None:
    h.note(f"ceiling: SpanProcessor.on_message on {count:,} spans, {runs} runs, guards {'/'.join(guard_modes)}")
    spans = emitted_order(h.make_spans(count, seed=7, spread_s=150))
    count = len(spans)
    by_partition: dict[int, list[Span]] = {}
    from tracehouse.core.partitioning import partition_for

    for span in spans:
        by_partition.setdefault(partition_for(span.trace_id, h.SPANS_PARTITIONS), []).append(span)
    messages = [
        (p, encode_batch(chunk[i : i + MESSAGE_SPANS]))
        for p, chunk in by_partition.items()
        for i in range(0, len(chunk), MESSAGE_SPANS)
    ]
    del spans

    kept_fraction: dict[str, list[float]] = {}  # sampling mode -> kept fraction per run

    async def one_run(guards: str, sampling: str = "off", budgets: str = "off") -> tuple[float, float, int]:
        from tracehouse.pipeline.guards import GuardPublisher

        traces = _Counter()
        rules = guard_rules(guards)
        processor = SpanProcessor(
            traces_out=traces,
            partials_out=_Counter(),
            dlq_out=_Counter(),
            windows_factory=windows_factory(budget_rules=budget_rules(budgets)),
            options=ProcessorOptions(checkpoint_interval_s=3600),
            guards=GuardPublisher(rules, _Counter()) if rules else None,
            # tail sampling: the default rules; p95: and the group p95 rule
            sampling=SAMPLING_RULES[sampling] if sampling != "off" else None,
            kept_out=_Counter() if sampling != "off" else None,
        )
        processor.attach(None, None)  # no Faust stream to acknowledge to, no Table to checkpoint into
        offsets = dict.fromkeys(by_partition, 0)
        events = []
        stamp = time.time()  # the Kafka record's timestamp (seconds, as Faust gives it): spans are checked against it
        for p, value in messages:  # what Faust hands the agent: an event whose message has these fields
            message = SimpleNamespace(partition=p, offset=offsets[p], value=value, timestamp=stamp)
            events.append(SimpleNamespace(value=value, message=message))
            offsets[p] += 1
        gc.collect()
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)  # as `tracehouse worker` runs
        try:
            start = time.thread_time()
            for event in events:
                await processor.on_event(event)
            consumed = time.thread_time() - start
            for state in processor._partitions.values():  # everything is quiet now: the next tick emits all
                state.assembler.quiet_s = 0.0
            start = time.thread_time()
            await processor.on_tick()
            emitted = time.thread_time() - start
        finally:
            gc.set_threshold(*thresholds)
        if sampling != "off":
            fractions = processor.sampling_stats.fractions()
            kept_fraction.setdefault(sampling, []).append(fractions["kept"])
            if sampling == "p95":
                kept_fraction.setdefault("of which by the group p95", []).append(fractions["latency_quantile"])
        return consumed * 1e6 / count, emitted * 1e6 / count, processor.stats.traces

    # Guard modes interleaved run by run, so that a noisy neighbour weighs on each alike.
    by_mode: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in guard_modes}
    for _ in range(runs):
        for mode in guard_modes:
            by_mode[mode].append(asyncio.run(one_run(mode)))
    if len(guard_modes) > 1:
        h.table(
            f"In-flight guards: SpanProcessor CPU µs per span (on_message + on_tick), median (min-max) of {runs}"
            " interleaved runs",
            ["guards", "µs/span", "spans/s on one core"],
            [
                (mode, h.spread([a + b for a, b, _ in got], "{:.2f}"), h.spread([1e6 / (a + b) for a, b, _ in got]))
                for mode, got in by_mode.items()
            ],
            caption="off: no trace rule; loop: the built-in loop guard (a worker's default); all: one rule of "
            f"every trace metric, never reached; {h.host_load()}",
        )
    if len(sampling_modes) > 1:
        by_sampling: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in sampling_modes}
        for _ in range(runs):
            for mode in sampling_modes:
                by_sampling[mode].append(asyncio.run(one_run(guard_modes[0], mode)))
        kept = ", ".join(f"{mode} {h.median(f):.1%}" for mode, f in kept_fraction.items())
        kept = f"traces kept: {kept}" if kept else ""
        sampling_table(by_sampling, held_bytes_per_span(messages, count), kept)
    if len(budget_modes) > 1:
        by_budgets: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in budget_modes}
        for _ in range(runs):
            for mode in budget_modes:
                by_budgets[mode].append(asyncio.run(one_run(guard_modes[0], sampling_modes[0], mode)))
        h.table(
            f"Budgets: SpanProcessor CPU µs per span (on_message + on_tick), median (min-max) of {runs}"
            " interleaved runs",
            ["budgets", "µs/span", "spans/s on one core"],
            [
                (mode, h.spread([a + b for a, b, _ in got], "{:.2f}"), h.spread([1e6 / (a + b) for a, b, _ in got]))
                for mode, got in by_budgets.items()
            ],
            caption="off: no budget rule (the default); on: cost per user per hour; all: that, LLM calls per "
            f"session and tokens per user; thresholds never reached; {h.host_load()}",
        )
    results = by_mode[guard_modes[0]]
    per_span = [a + b for a, b, _ in results]
    h.table(
        f"Worker ceiling, guards {guard_modes[0]}: SpanProcessor driven directly ({count:,} spans, "
        f"{len(messages)} messages, {results[0][2]:,} traces), CPU µs per span, median (min-max) of {runs} runs",
        ["step", "µs/span", "spans/s on one core"],
        [
            ("on_message: decode, validate, assemble, price, window", h.spread([r[0] for r in results], "{:.2f}"), ""),
            ("on_tick: emit every trace record (encode + send)", h.spread([r[1] for r in results], "{:.2f}"), ""),
            ("total", h.spread(per_span, "{:.2f}"), h.spread([1e6 / x for x in per_span])),
        ],
        caption="no Faust, no Kafka: the work the worker does per span, and so its ceiling on one core",
    )


# ---- reading trace records ------------------------------------------------------------------------------


@dataclass
class TraceLog:
    """Every trace record seen on tracehouse.traces since `start`, with the time it was read."""

    spans_by_trace: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, spans emitted so far)
    arrivals: dict[str, tuple[int, int]] = field(default_factory=dict)  # trace_id -> (read at ns, end ns)
    records: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def spans(self) -> int:
        return self.timeline[-1][1] if self.timeline else 0


class TraceReader:
    """A consumer of tracehouse.traces on its own thread, from given offsets on."""

    def __init__(self, bootstrap: str, start: dict[Any, int]) -> None:
        self.bootstrap = bootstrap
        self.start_offsets = start
        self.log = TraceLog()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> TraceReader:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(tp.topic, tp.partition) for tp in self.start_offsets]
            consumer.assign(tps)
            for tp, offset in self.start_offsets.items():
                consumer.seek(TopicPartition(tp.topic, tp.partition), offset)
            self._ready.set()
            log = self.log
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                read_ns, read_mono = time.time_ns(), time.monotonic()
                for messages in batch.values():
                    for message in messages:
                        records = decode_traces(message.value)
                        with log.lock:
                            total = log.spans
                            for record in records:
                                log.records += 1
                                before = log.spans_by_trace.get(record.trace_id, 0)
                                if record.span_count > before:  # a revision counts only what it adds
                                    log.spans_by_trace[record.trace_id] = record.span_count
                                    total += record.span_count - before
                                log.arrivals.setdefault(record.trace_id, (read_ns, record.end_time_ns))
                            log.timeline.append((read_mono, total))
        finally:
            self._ready.set()
            await consumer.stop()


# ---- 2: worker throughput ------------------------------------------------------------------------------


def start_workers(stack: h.Stack, settings: Any, n: int, extra_env: dict[str, str] | None = None) -> list[Any]:
    from tracehouse.infra.processes import ManagedProcess
    from tracehouse.infra.stack import LocalStack

    workers = []
    for i in range(n):
        env = LocalStack(settings).child_env()
        env["TRACEHOUSE_DATA_DIR"] = str(settings.data_dir / f"worker-{i}")
        env.update(extra_env or {})
        workers.append(ManagedProcess(f"worker-{i}", ["worker"], settings.data_dir / "logs", env).start())
    return workers


def stop_workers(workers: list[Any]) -> None:
    for worker in workers:
        worker.stop()


def cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """CPU seconds at `when`, interpolated between the samples around it."""
    before = [s for s in samples if s[0] <= when]
    after = [s for s in samples if s[0] >= when]
    if not before:
        return samples[0][1]
    if not after:
        return samples[-1][1]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)


def crossing(timeline: list[tuple[float, int]], level: float) -> float:
    for t, spans in timeline:
        if spans >= level:
            return t
    return float("nan")


def guard_env(settings: Any, mode: str) -> dict[str, str]:
    """The worker's environment for a guard mode: the built-in rules for `loop`; otherwise a rules file with
    the built-in window rules and the mode's trace rules."""
    import json

    import msgspec

    from tracehouse.pipeline.alert_rules import default_rules

    if mode == "loop":
        return {}

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + " }"
        return json.dumps(list(v) if isinstance(v, tuple) else v)

    tables = [{k: v for k, v in msgspec.structs.asdict(r).items() if k != "base_seconds"} for r in default_rules()]
    tables += [{k: v for k, v in msgspec.structs.asdict(r).items()} | {"type": "trace"} for r in guard_rules(mode)]
    text = "\n".join("[[rules]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in t.items()) for t in tables)
    path = settings.data_dir / f"rules-{mode}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"TRACEHOUSE_ALERT_RULES": str(path)}


def worker_run(
    stack: h.Stack,
    start: dict[Any, int],
    count: int,
    n_workers: int,
    delay: dict[str, Any] | None,
    guards: str = "loop",
    extra_env: dict[str, str] | None = None,
):
    settings = stack.settings()
    asyncio.run(h.commit_group(stack.kafka_bootstrap, settings.worker_group, start))
    traces_start = asyncio.run(h.end_offsets(stack.kafka_bootstrap, [topics.TRACES]))
    with TraceReader(stack.kafka_bootstrap, traces_start) as reader:
        t0 = time.monotonic()
        workers = start_workers(stack, settings, n_workers, guard_env(settings, guards) | (extra_env or {}))
        try:
            for worker in workers:
                if not worker.wait_for_log("started", timeout=120):
                    raise RuntimeError(f"{worker.name} did not start:\n{worker.log_tail()}")
            cpu: list[tuple[float, float]] = []  # (monotonic, CPU seconds of all workers)
            kafka_cpu: list[tuple[float, float]] = []  # (monotonic, CPU seconds of the broker started here)

            def done() -> bool:
                now = time.monotonic()
                cpu.append((now, sum(h.cpu_seconds(w.pid) for w in workers)))
                if stack.kafka_pid is not None:
                    kafka_cpu.append((now, h.cpu_seconds(stack.kafka_pid)))
                return reader.log.spans >= count

            if not h.wait_for(done, timeout=600, interval=0.1):
                raise RuntimeError(
                    f"{n_workers} worker(s) emitted {reader.log.spans} of {count} spans:\n{workers[0].log_tail()}"
                )
            with reader.log.lock:
                timeline = list(reader.log.timeline)
                records = reader.log.records
            t10, t90 = crossing(timeline, 0.1 * count), crossing(timeline, 0.9 * count)
            t100 = crossing(timeline, count)
            # records come out a quiet period after their spans went in: the CPU spent on the middle 80 %
            cpu_used = cpu_at(cpu, t90 - QUIET_S) - cpu_at(cpu, t10 - QUIET_S)
            kafka_used = (
                cpu_at(kafka_cpu, t90 - QUIET_S) - cpu_at(kafka_cpu, t10 - QUIET_S) if kafka_cpu else float("nan")
            )
            result = {
                "rate": 0.8 * count / (t90 - t10),
                "wall": t100 - t0,
                "consume_wall": t100 - t0 - QUIET_S,
                "cpu_us": cpu_used * 1e6 / (0.8 * count),
                "kafka_cpu_us": kafka_used * 1e6 / (0.8 * count),
                "records": records,
                "traces": len(reader.log.spans_by_trace),
            }
            if delay is not None:
                result["delays"] = live_delays(stack, reader, **delay)
            return result
        finally:
            stop_workers(workers)


# ---- 3: delay from span end to trace record ---------------------------------------------------------


def live_delays(stack: h.Stack, reader: TraceReader, rate: int, seconds: float) -> list[float]:
    """Send traces at `rate` spans/s for `seconds`, each ending as it is sent; ms from each trace's end to its
    record being read here."""
    from tracehouse.producers.traffic import TraceFactory, TrafficOptions
    from tracehouse.producers.transport import SpanTransport

    factory = TraceFactory(TrafficOptions(seed=99))
    transport = SpanTransport(stack.kafka_bootstrap)
    sent: set[str] = set()
    tick = 0.05
    h.note(f"  live: {rate:,} spans/s for {seconds:.0f}s, each trace ending as it is sent")
    try:
        deadline = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            budget = rate * tick
            batch: list[Span] = []
            while len(batch) < budget:
                trace = factory.any()
                now = time.time_ns()
                shift = max(s.end_time_ns for s in trace) - now
                for s in trace:
                    s.start_time_ns -= shift
                    s.end_time_ns -= shift
                    for event in s.events:
                        event.time_ns -= shift
                batch.extend(trace)
                sent.add(trace[0].trace_id)
            transport.submit_many(batch)
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))
        transport.flush(30)
    finally:
        transport.shutdown()
    h.wait_for(lambda: sent <= reader.log.arrivals.keys(), timeout=QUIET_S + 30, interval=0.1)
    with reader.log.lock:
        arrivals = {t: reader.log.arrivals[t] for t in sent if t in reader.log.arrivals}
    if len(arrivals) < len(sent):
        h.note(f"  {len(sent) - len(arrivals)} of {len(sent)} live traces had no record in time")
    return [(read_ns - end_ns) / 1e6 for read_ns, end_ns in arrivals.values()]


def percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, int(q * len(data)))]


def throughput(
    stack: h.Stack,
    count: int,
    runs: int,
    delay: dict[str, Any],
    guards: str = "loop",
    extra_env: dict[str, str] | None = None,  # e.g. tail sampling on
) -> None:
    h.note(f"workers: loading {count:,} spans into {topics.SPANS}...")
    spans = emitted_order(h.make_spans(count, seed=3, spread_s=150))
    count = len(spans)
    start = asyncio.run(h.end_offsets(stack.kafka_bootstrap, [topics.SPANS]))
    h.load_spans(stack.kafka_bootstrap, spans)
    del spans
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for r in range(runs):
        for n in (1, 2):
            want_delay = delay if (n == 1 and r == 0) else None
            results[n].append(worker_run(stack, start, count, n, want_delay, guards, extra_env))
            got = results[n][-1]
            h.note(
                f"  run {r + 1}/{runs}, {n} worker(s): {got['rate']:,.0f} spans/s ({got['rate'] / n:,.0f} per worker);"
                f" CPU µs/span: workers {got['cpu_us']:.1f}, Kafka {got['kafka_cpu_us']:.1f}"
            )
    rows = []
    for n, values in results.items():
        per_worker = h.median(v["rate"] for v in values) / n
        rows.append(
            (
                f"{n} worker process{'es' if n > 1 else ''}",
                h.spread([v["rate"] for v in values]),
                h.spread([v["rate"] / n for v in values]),
                "met" if per_worker >= TARGET_PER_WORKER else "MISSED",
                h.spread([v["consume_wall"] for v in values], "{:.1f}"),
                h.spread([v["cpu_us"] for v in values], "{:.1f}"),
                h.spread([v["kafka_cpu_us"] for v in values], "{:.1f}"),
                f"{h.median(v['records'] for v in values):,.0f} / {h.median(v['traces'] for v in values):,.0f}",
            )
        )
    one, two = (h.median(v["rate"] for v in results[n]) for n in (1, 2))
    h.table(
        f"Worker throughput: {count:,} spans pre-loaded in {topics.SPANS} ({h.SPANS_PARTITIONS} partitions, "
        f"{MESSAGE_SPANS} spans/message); median (min-max) of {runs} runs",
        [
            "workers",
            "spans/s (10 %->90 % emitted)",
            "per worker",
            f">= {TARGET_PER_WORKER:,}/worker",
            "s from start to all consumed",
            "worker CPU µs/span (10->90 %)",
            "Kafka CPU µs/span (same phase)",
            "records / traces",
        ],
        rows,
        caption=f"two workers vs one: {h.ratio(two, one)}. 'All consumed' = last record read minus the "
        f"{QUIET_S:.0f} s quiet period (includes Faust's start-up and group join); records > traces means "
        f"traces were emitted more than once (a rebalance replayed them); CPU from /proc over the middle 80 % "
        f"(Kafka: the broker started here, nan for an external one); {h.host_load()}",
    )
    delays = results[1][0].get("delays") or []
    if delays:
        h.table(
            f"Delay from a span's end to its trace record on {topics.TRACES} (one worker, live traffic at "
            f"{delay['rate']:,} spans/s, {len(delays):,} traces)",
            ["p50 ms", "p90 ms", "p99 ms", "max ms", "quiet period ms"],
            [
                (
                    f"{percentile(delays, 0.5):,.0f}",
                    f"{percentile(delays, 0.9):,.0f}",
                    f"{percentile(delays, 0.99):,.0f}",
                    f"{max(delays):,.0f}",
                    f"{QUIET_S * 1000:,.0f}",
                )
            ],
            caption="by design ≈ the quiet period (a trace is emitted once no span of it arrived for quiet_s = "
            "TRACEHOUSE_TRACE_QUIET_S) + the 0.25 s tick + the SDK transport's linger + Kafka both ways",
        )


# ---- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: well under a minute")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--spans", type=int, default=None, help="spans pre-loaded for the worker runs")
    parser.add_argument("--rate", type=int, default=5_000, help="spans/s of the live delay run")
    parser.add_argument("--only", choices=["ceiling", "workers"], action="append")
    parser.add_argument(
        "--guards",
        choices=GUARD_MODES,
        action="append",
        help="in-flight guards: off, loop (the default rules) or all (every trace metric); several are run "
        "interleaved in the ceiling; the worker runs use the first (default: loop)",
    )
    parser.add_argument(
        "--sampling",
        choices=("off", *SAMPLING_RULES),
        action="append",
        help="tail sampling (on: the default rules: errors, rate limits, guards, 10 %% of the rest; p95: and the"
        " group p95 rule); several: compared in the ceiling, interleaved; the worker runs use the first (default: off)",
    )
    parser.add_argument(
        "--budgets",
        choices=BUDGET_MODES,
        action="append",
        help="budget rules per user/session: off (default), on (one rule) or all (three); several are compared"
        " in the ceiling, interleaved",
    )
    args = parser.parse_args()
    guard_modes = tuple(dict.fromkeys(args.guards or ["loop"]))
    sampling_modes = tuple(dict.fromkeys(args.sampling or ["off"]))
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    count = args.spans or (150_000 if quick else 400_000)
    parts = set(args.only or ["ceiling", "workers"])
    h.console.print(f"pipeline_throughput ({'quick' if quick else 'full'}): {h.python_info()}, {h.host_load()}")
    started = time.perf_counter()
    if "ceiling" in parts:
        budget_modes = tuple(dict.fromkeys(args.budgets or ["off"]))
        ceiling(20_000 if quick else 100_000, 2 if quick else 3, guard_modes, sampling_modes, budget_modes)
    if "workers" in parts:
        with h.Stack(need_kafka=True, need_clickhouse=False) as stack:  # every topic: the worker waits for all
            sampling_env = {"TRACEHOUSE_SAMPLING": "1"} if sampling_modes[0] == "on" else {}
            throughput(
                stack, count, runs, {"rate": args.rate, "seconds": 6 if quick else 15}, guard_modes[0], sampling_env
            )
    h.note(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
