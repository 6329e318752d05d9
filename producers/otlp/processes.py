"""`tracehouse receiver --processes N`: N receiver processes sharing one port, under one supervisor.

Why: one receiver is one Python process, so one core. Decoding and mapping OTLP is CPU work that holds the
GIL (threads would only contend for it), so the way to use more cores is more processes. Each child is a
whole receiver (`run_receiver`): its own event loop, its own `AckedSpanSender` and Kafka producer, its
own /health. They bind the same address with SO_REUSEPORT, and the kernel spreads new connections
across them; no process hands requests to another, so nothing is copied between them and "200 means in
Kafka" holds per child exactly as with one.

The parent only supervises:
- a child that dies (killed, crashed, port taken) is started again, so the port keeps answering;
- SIGTERM or SIGINT is forwarded to every child, which stops as one receiver does (stop accepting,
  answer what is in flight, flush to Kafka); the parent waits for them and exits 0 if they all did;
- a child that keeps dying (`MAX_DEATHS` within `DEATH_WINDOW_S`) is not restarted in a tight loop: the
  parent stops the others and exits 1, so a service manager sees the failure.

Every receiver process also tunes its garbage collector (`tune_gc`): mapping a span allocates a few
hundred short-lived objects, so CPython's default (a young collection every 700 allocations, and full
collections that walk every module and class imported at start) cost ~4 µs of the ~40 µs a span takes
to decode and map (measured with `tests/benchmarks/receiver_throughput.py`). Freezing what exists after
start-up moves it out of every collection; a larger young generation collects ~70 times less often.
Reference cycles are still collected.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracehouse.core.config import Settings

__all__ = ["DEATH_WINDOW_S", "GC_THRESHOLDS", "MAX_DEATHS", "run_receivers", "tune_gc"]

log = logging.getLogger("tracehouse.receiver")

MAX_DEATHS = 5  # child deaths within DEATH_WINDOW_S after which the parent gives up
DEATH_WINDOW_S = 60.0
STOP_TIMEOUT_S = 30.0  # how long a child may take to flush after SIGTERM before it is killed
GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold for a receiver process (CPython's: 700, 10, 10)


def tune_gc() -> None:
    """Freeze what start-up made and collect less often; see the module docstring. Call it once the
    receiver's modules are imported."""
    from .. import acked_sender  # noqa: F401
    from . import app, server  # noqa: F401  (imported here so that freezing covers them)

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _child(settings: Settings, host: str, port: int, tokens: list[str]) -> None:
    """One receiver, sharing the port; its exit code is the receiver's."""
    from .server import run_receiver

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which forwards SIGTERM
    tune_gc()
    sys.exit(run_receiver(settings, host, port, tokens, reuse_port=True))


def run_receivers(settings: Settings, host: str, port: int, tokens: list[str], processes: int = 1) -> int:
    """Serve with `processes` receivers on host:port (one: this process itself); returns the exit code."""
    from .server import run_receiver

    if processes <= 1:
        tune_gc()
        return run_receiver(settings, host, port, tokens)
    if port == 0:
        print("tracehouse receiver: --processes needs a fixed --port (not 0)", file=sys.stderr)
        return 2
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or sockets
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def start(slot: int) -> BaseProcess:
        child = context.Process(
            target=_child, args=(settings, host, port, tokens), name=f"tracehouse-receiver-{slot}", daemon=False
        )
        child.start()
        return child

    children = {slot: start(slot) for slot in range(processes)}
    print(f"tracehouse receiver: {processes} processes on {host}:{port}", file=sys.stderr, flush=True)
    deaths: list[float] = []
    failed = False
    try:
        while not stopping:
            wait([c.sentinel for c in children.values()], timeout=0.5)
            for slot, child in list(children.items()):
                if child.is_alive() or stopping:
                    continue
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < DEATH_WINDOW_S] + [now]
                log.error("receiver process %d (pid %s) exited with %s", slot, child.pid, child.exitcode)
                if len(deaths) >= MAX_DEATHS:
                    print(
                        f"tracehouse receiver: {len(deaths)} receiver processes died within {DEATH_WINDOW_S:g}s;"
                        " stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    failed = stopping = True
                    break
                children[slot] = start(slot)
                print(
                    f"tracehouse receiver: process {slot} (pid {child.pid}) exited with {child.exitcode};"
                    f" started again as pid {children[slot].pid}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for child in children.values():
            if child.is_alive() and child.pid is not None:
                child.terminate()  # SIGTERM: the child stops as one receiver does
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children.values():
            child.join(max(deadline - time.monotonic(), 0.1))
            if child.is_alive():
                log.error("receiver process pid %s did not stop in %gs; killing it", child.pid, STOP_TIMEOUT_S)
                child.kill()
                child.join()
                failed = True
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = failed or any(child.exitcode != 0 for child in children.values())
    return 1 if failed else 0
