"""`tracehouse loadgen`: realistic LLM traffic at a chosen rate, for trying the pipeline and sizing it.

RAG, agent-with-tools and multi-turn chat traces (producers/traffic.py) go through the SDK's transport,
exactly as an instrumented application's spans would. The rate is held by a token bucket over whole traces;
a progress bar shows the achieved rate, and the summary says what was sent, dropped and failed, so a run
that cannot keep up says so instead of quietly sending less.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tracehouse.core.config import Settings
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport

TICK_S = 0.02


def run_loadgen(
    settings: Settings,
    *,
    rate: float,
    duration: float,
    error_ratio: float,
    prompt_bytes: int = 1024,
    seed: int | None = None,
) -> int:
    if rate <= 0 or duration <= 0:
        raise SystemExit("--rate and --duration must be positive")
    if not 0 <= error_ratio <= 1:
        raise SystemExit("--error-ratio is a fraction between 0 and 1")
    from tracehouse.infra.kafka_broker import kafka_answers

    if not kafka_answers(settings.kafka_bootstrap, timeout=3.0):
        raise SystemExit(
            f"tracehouse loadgen: no Kafka answers at {settings.kafka_bootstrap}: start the stack with "
            "`tracehouse up` (or give --kafka HOST:PORT)"
        )
    console = Console(stderr=True)
    factory = TraceFactory(TrafficOptions(error_ratio=error_ratio, prompt_bytes=prompt_bytes, seed=seed))
    transport = SpanTransport(settings.kafka_bootstrap, max_queue=max(200_000, int(rate * 5)))
    produced = traces = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rate]:>9,.0f} spans/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"sending to {settings.kafka_bootstrap}", total=duration, rate=0.0)
        while (elapsed := time.monotonic() - started) < duration:
            due = rate * elapsed
            while produced < due:
                trace = factory.any()
                transport.submit_many(trace)
                produced += len(trace)
                traces += 1
            progress.update(task, completed=elapsed, rate=produced / max(elapsed, 1e-9))
            time.sleep(TICK_S)
        progress.update(task, completed=duration)
        flushed = transport.flush(60)
    elapsed = time.monotonic() - started
    transport.shutdown()
    stats = transport.stats
    console.print(
        f"sent {stats.sent:,} spans of {traces:,} traces in {elapsed:.1f}s "
        f"({stats.sent / elapsed:,.0f} spans/s achieved, target {rate:,.0f}); "
        f"{stats.messages:,} Kafka messages, {stats.dropped:,} dropped, {stats.failed:,} failed",
        soft_wrap=True,
    )
    if not flushed or stats.dropped or stats.failed:
        console.print("[red]not everything was delivered[/]")
        return 1
    return 0
