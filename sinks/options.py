"""What the sink is told (`SinkOptions`) and what it counts (`SinkStats`), shared by its parts: the
consumer loop (sinks/consumer.py), the writer (sinks/writer.py) and the metrics the `Sink` serves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tracehouse.core import topics


@dataclass
class SinkOptions:
    group_id: str = ""  # default: Settings.sink_group
    batch_rows: int = 50_000
    batch_bytes: int = 32 * 1024 * 1024  # encoded rows per insert; memory holds 2 * lanes of them at most
    # Concurrent inserts, each for its own share of the partitions (see sinks/sink.py); two keep two cores
    # of ClickHouse busy (measured: one insert at a time reaches ~90k spans/s of the embedded engine's
    # ~125k with two).
    insert_lanes: int = 2
    flush_interval_s: float = 1.0
    # When the last fetch found no backlog, insert after this long. Not shorter: every insert writes a part
    # in `spans` and in each table its views feed, and ClickHouse's CPU per span climbs steeply as parts
    # shrink (measured on the embedded engine: ~13 µs at 25,000 rows, 17 at 10,000, 35 at 2,500, 55 at
    # 1,000, merges included). 0.5 s keeps the delay to queryable well under a second at moderate load.
    idle_flush_s: float = 0.5
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    stats_interval_s: float = 10.0
    # The worker runs the same validation and dead-letters invalid records; a sink deployed without
    # workers sets this so invalid records still reach the DLQ.
    dead_letter_invalid: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics endpoint
    # Move the objects that exist once the sink has started (modules, clients) out of the garbage
    # collector's sight while it runs: every span decoded allocates containers, which triggers collections
    # that would otherwise rescan that whole heap each time (~25% of the sink's CPU per span, measured).
    gc_freeze: bool = True
    # Where span rows come from: `tracehouse.spans`, or with tail sampling on (TRACEHOUSE_SAMPLING) the
    # spans the worker keeps, `tracehouse.spans.kept` (pipeline/sampling.py; see `sampled_routes`).
    spans_topic: str = topics.SPANS


@dataclass
class SinkStats:
    rows: int = 0
    batches: int = 0
    retries: int = 0
    dead_letters: int = 0
    invalid: int = 0  # records that failed validation (the worker dead-letters them)
    refused: int = 0  # spans and traces refused for their time (core.timestamps), dead-lettered by the sink
    last_batch_rows: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)
