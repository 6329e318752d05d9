"""End to end: the whole tracehouse pipeline on this machine at a sustained rate, and Arize Phoenix next to it.

Run (a script, not a pytest test): `python tests/benchmarks/e2e.py [--mode headline|latency|find] [--runs N]
[--rate R] [--quick] [--duration S] [--skip-phoenix] [--json PATH] [--otlp-share F] [--embedded] [--workers 1|2]`.

tracehouse side — every process on this machine, each its own OS process, as `tracehouse up` runs them:
  load generator (OTLP/HTTP protobuf, 100 % by default) → `tracehouse receiver` ─┬→ Kafka (Apache Kafka
  load generator (SDK `SpanTransport`, the rest with --otlp-share below 1) ────────┘  KRaft; noida-db with
  --embedded) → `tracehouse worker` (1, or 2) and `tracehouse sink` → ClickHouse (the embedded engine over
  HTTP, `tracehouse.infra.clickhouse.server`).
The traffic is issue 12's workload (otlp_workload.py): 200 spans per POST, traces of 1 AGENT + 3 children,
12 attributes per span, 1 KB input and 512 B output of varied prose, four requests in flight. The bodies
are encoded before the clock starts and each POST only gets new ids and times patched into its bytes, so
the load generator costs ~10 µs of CPU per span with its HTTP client (its own CPU is reported), not the
~60 µs that building the protobuf took, and does not limit the rate.

Modes, each run on a fresh stack after a short warm-up phase; every phase starts after the previous one
has drained:
- `headline` (default): `max`, at --rate (default 20,000 spans/s, the issue's target) for --duration (60 s,
  15 with --quick), then Phoenix with the same bodies at the same rate (below); with --diag auto, a `diag`
  phase at half what max stored when max did not keep up. About 5 minutes a run in full (2.5 without
  Phoenix), 3 with --quick.
- `latency`: one phase, `fixed`, at --rate: give it half the top rate for the target p99 end → queryable
  < 1 s. About 2.5 minutes in full.
- `find`: the sustainable rate: phases at --start-rate, + --step, ... up to --rate, stopping at the first
  one where stored < 95 % of offered or the backlog at its end exceeds 3 s of the rate. Full: about
  1.5-2 minutes per step.
--runs N repeats the whole run N times (a fresh stack, and Phoenix, each time) and ends with a table of
each run's figures and their medians: the README's figures.

Figures per phase: spans/s offered, sent (acknowledged by Kafka / accepted by the receiver) and stored
(rows landing in ClickHouse during the phase, from `count()` sampled each second, first 20 % excluded);
the backlog at the end and the time to drain it; every sent span stored exactly once (count against
uniqExact(trace_id, span_id)), and every trace id new (uniqExact(trace_id) against the root spans);
delay from span end to queryable: `ingested_at - end_time` in SQL over every root span of the phase (a
root ends when its trace is handed over; children ended earlier and waited in the application, so the
all-span figure is also shown but is not the pipeline's delay); alert delay: a rule
`rate_limit_count > 0 over 10 s` (TRACEHOUSE_ALERT_RULES) fires and resolves every 20 s because the load
generator sends rate-limited calls only in even 10-s windows; reported are `fired_at - window end` and
first seen in ClickHouse (polled each second) - window end; CPU of each process (share of one core, from
/proc) and of the machine, the busiest threads, RSS start/max/end and its growth over the phase's
second half; CPU µs per span of each process (receiver, worker, sink, ClickHouse, Kafka, the load
generator; from /proc, from the phase's start until its last span was stored, over the spans sent); bytes
per span on disk (system.parts, active parts of `spans`). A line per phase is printed as it ends.

Arize Phoenix side, in the same run after the tracehouse stack is stopped (so neither steals the other's
CPU): `arize-phoenix` (pinned in e2e_phoenix.py) in its own venv under ~/.cache/tracehouse/phoenix-venv,
`phoenix serve` on SQLite in a temporary directory, fed the same bodies (same seed) by the same load
generator at the same offered rate. Figures: spans accepted (HTTP 200) per second, spans stored (rows in its
SQLite `spans` table, read-only) during the send window and after waiting for it to drain, delay to
queryable (first seen in SQLite - end time, root spans), RSS, CPU, and CPU µs per span stored. Phoenix is
stopped (its whole process group) in every case. --skip-phoenix, or a failed install, reports tracehouse alone.

Targets (issue): >= 20,000 spans/s sustained with every process on this 2-core machine; p99 span end to
queryable < 1 s at half that rate; bounded memory; the ratio to Phoenix.

Notes: the machine is shared and noisy; compare ratios within a run, and prefer the CPU µs per span
(steadier than spans/s). The texts are a pool of 100 bodies (20,000 spans) re-sent with fresh ids and
times, so ClickHouse compresses them somewhat better than fully unique traffic (bytes per span is a lower
bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h
from e2e_monitor import Monitor

from tracehouse.core.config import Settings
from tracehouse.core.topics import topic_specs
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack

HERE = Path(__file__).resolve().parent
LOAD = HERE / "e2e_load.py"
PARTITIONS = 4
TARGET_RATE = 20_000
TARGET_P99_S = 1.0
STORED_SHARE_OK = 0.95  # find mode: a rate holds while stored >= this share of offered
BACKLOG_OK_S = 3.0  # ... and what is left at the phase's end is under this many seconds of the rate
ALERT_RULE = "bench-rate-limits"
ALERT_RULES_TOML = f"""
[[rules]]
name = "{ALERT_RULE}"
metric = "rate_limit_count"
window_seconds = 10
comparison = ">"
threshold = 0
severity = "warning"
min_count = 1
group_by = ["service"]
"""
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- small helpers ------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return "-" if n is None or math.isnan(n) else f"{n / 1e6:,.0f} MB"


def rate(n: float) -> str:
    return "-" if n is None or math.isnan(n) else f"{n:,.0f}"


def secs(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 1000:,.0f} ms" if x < 10 else f"{x:,.1f} s"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, max(0, math.ceil(p * len(data)) - 1))]


def readline(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """One line of a child's stdout, or None after `timeout` seconds or at its end."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            return line if line else None
        if proc.poll() is not None:
            return None
    return None


# ---- ClickHouse reads -----------------------------------------------------------------------------------


class CH:
    """Plain HTTP reads (a fresh connection each time: safe from any thread)."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url.rstrip("/")
        self.database = database

    def query(self, sql: str, timeout: float = 60.0) -> list[list[str]]:
        params = urllib.parse.urlencode({"query": sql + " FORMAT TSV", "database": self.database})
        with _opener.open(f"{self.url}/?{params}", timeout=timeout) as response:
            text = response.read().decode()
        return [line.split("\t") for line in text.splitlines() if line]

    def scalar(self, sql: str, timeout: float = 60.0) -> str:
        return self.query(sql, timeout)[0][0]


# ---- the stack -----------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    args: argparse.Namespace
    tmp: Path
    monitor: Monitor
    kafka: Any = None
    clickhouse: Any = None
    settings: Settings | None = None
    procs: list[ManagedProcess] = field(default_factory=list)
    receiver_url: str = ""
    ch: CH | None = None

    def start(self) -> Pipeline:
        from tracehouse.core.topic_admin import create_topics
        from tracehouse.infra.clickhouse.launcher import EmbeddedClickHouse
        from tracehouse.infra.kafka_broker import KafkaBroker
        from tracehouse.sinks.migrate import migrate

        h.note("starting the embedded ClickHouse engine...")
        self.clickhouse = EmbeddedClickHouse(self.tmp / "clickhouse").start()
        self.monitor.watch("clickhouse", self.clickhouse.pid)
        if self.args.embedded:
            from tracehouse.infra.noida_broker import NoidaKafka

            h.note("starting Kafka (noida-db)...")
            self.kafka = NoidaKafka(self.tmp / "kafka").start()
        else:
            h.note("starting Apache Kafka (KRaft, JDK 17)...")
            self.kafka = KafkaBroker(self.tmp / "kafka", partitions=PARTITIONS).start()
        self.monitor.watch("kafka", self.kafka.pid)
        create_topics(self.kafka.bootstrap, topic_specs(PARTITIONS))  # every topic, as `migrate` makes them
        self.settings = settings = Settings.from_env(
            kafka_bootstrap=self.kafka.bootstrap,
            clickhouse_url=self.clickhouse.url,
            clickhouse_database="tracehouse",
            data_dir=self.tmp / "data",
            worker_group="bench-worker",
            sink_group="bench-sink",
            spans_partitions=PARTITIONS,
        )
        asyncio.run(migrate(settings.clickhouse))
        self.ch = CH(self.clickhouse.url, "tracehouse")
        rules = self.tmp / "alert-rules.toml"
        rules.write_text(ALERT_RULES_TOML)
        env = {**LocalStack(settings).child_env(), "TRACEHOUSE_ALERT_RULES": str(rules)}
        log_dir = self.tmp / "logs"
        port = free_port()
        self.receiver_url = f"http://127.0.0.1:{port}/v1/traces"
        names = [
            (f"worker-{i + 1}" if self.args.workers > 1 else "worker", ["worker"]) for i in range(self.args.workers)
        ]
        receiver = ["receiver", "--port", str(port)]
        if self.args.receiver_processes > 1:  # they share the port; their CPU counts as the receiver's (a tree)
            receiver += ["--processes", str(self.args.receiver_processes)]
        names += [("sink", ["sink"]), ("receiver", receiver)]
        for name, argv in names:
            proc = ManagedProcess(name, argv, log_dir, env).start()
            self.procs.append(proc)
        for proc in self.procs:
            if not proc.wait_for_log("started", timeout=120):
                raise RuntimeError(f"{proc.name} did not start; its log:\n{proc.log_tail()}")
            self.monitor.watch(proc.name, proc.pid)
        h.note(f"stack up: Kafka {self.kafka.bootstrap}, ClickHouse {self.clickhouse.url}, logs in {log_dir}")
        return self

    def check(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited; its log ({proc.log_path}):\n{proc.log_tail()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
            self.monitor.forget(proc.name)
        self.procs = []
        if self.kafka is not None:
            self.kafka.stop()
            self.monitor.forget("kafka")
            self.kafka = None
        if self.clickhouse is not None:
            self.clickhouse.stop()
            self.monitor.forget("clickhouse")
            self.clickhouse = None


# ---- load generators -----------------------------------------------------------------------------------


def pool_cache(tmp: Path, args: argparse.Namespace) -> Path:
    """Where the OTLP generators keep the encoded bodies: built by the first phase, loaded by the others."""
    return tmp / f"otlp-bodies-{args.seed}-{args.pool_bodies}.pickle"


def start_load(name: str, argv: list[str], log_dir: Path) -> subprocess.Popen[str]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(LOAD), *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
        )  # fmt: skip


def run_load(
    loads: dict[str, subprocess.Popen[str]], duration: float, monitor: Monitor, on_go: Any = None
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Wait until every generator is READY, start them together, return (t0, their results)."""
    try:
        for name, proc in loads.items():
            line = readline(proc, 300)
            if line is None or line.strip() != "READY":
                raise RuntimeError(f"load generator {name} did not start (got {line!r}); see its log")
            monitor.watch(f"loadgen-{name}", proc.pid)
        if on_go is not None:
            on_go()
        t0 = time.time() + 1.0
        for proc in loads.values():
            assert proc.stdin is not None
            proc.stdin.write(f"GO {t0}\n")
            proc.stdin.flush()
        results: dict[str, dict[str, Any]] = {}
        for name, proc in loads.items():
            while True:
                line = readline(proc, duration + 400)
                if line is None:
                    raise RuntimeError(f"load generator {name} ended without a result; see its log")
                if line.startswith("RESULT "):
                    results[name] = json.loads(line[len("RESULT ") :])
                    break
        return t0, results
    finally:
        for name, proc in loads.items():
            monitor.forget(f"loadgen-{name}")
            if proc.poll() is None:
                try:
                    if proc.stdin is not None:
                        proc.stdin.close()
                    proc.wait(timeout=30)
                except (subprocess.TimeoutExpired, BrokenPipeError):
                    proc.kill()
                    proc.wait()


# ---- observations during a run -------------------------------------------------------------------------


@dataclass
class Watch:
    """What the monitor thread polls in ClickHouse each second: rows stored, alert records seen."""

    ch: CH
    counts: list[tuple[float, int]] = field(default_factory=list)
    alerts_seen: dict[tuple[str, str, int], float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    enabled: bool = True

    def __call__(self, now: float) -> None:
        if not self.enabled:
            return
        try:
            self.counts.append((time.time(), int(self.ch.scalar("SELECT count() FROM spans", 10))))
            for service, state, window_start in self.ch.query(
                f"SELECT service, state, toUnixTimestamp(window_start) FROM alerts WHERE rule = '{ALERT_RULE}'", 10
            ):
                self.alerts_seen.setdefault((service, state, int(window_start)), time.time())
        except Exception as exc:
            if len(self.errors) < 5:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def count_at(self, t: float) -> tuple[float, int] | None:
        best = None
        for when, count in self.counts:
            if when <= t:
                best = (when, count)
        return best


# ---- one tracehouse phase -------------------------------------------------------------------------------


def run_phase(
    pipe: Pipeline, watch: Watch, monitor: Monitor, name: str, offered: float, duration: float, args: argparse.Namespace
) -> dict[str, Any]:
    assert pipe.settings is not None and pipe.ch is not None
    ch = pipe.ch
    share = args.otlp_share
    common = ["--duration", str(duration), "--phase", name, "--seed", str(args.seed)]
    loads = {}
    if share < 1:
        loads["sdk"] = start_load(f"load-sdk-{name}", [
            "sdk", "--kafka", pipe.settings.kafka_bootstrap, "--rate", str(offered * (1 - share)),
            "--pool-spans", str(args.pool_spans), *common,
        ], pipe.tmp / "logs")  # fmt: skip
    if share > 0:
        loads["otlp"] = start_load(f"load-otlp-{name}", [
            "otlp", "--url", pipe.receiver_url, "--rate", str(offered * share),
            "--pool-bodies", str(args.pool_bodies), "--pool-cache", str(pool_cache(pipe.tmp, args)), *common,
        ], pipe.tmp / "logs")  # fmt: skip
    h.note(f"phase {name}: {offered:,.0f} spans/s offered for {duration:.0f}s ({share:.0%} over OTLP/HTTP)")
    baseline: dict[str, int] = {}

    def on_go() -> None:
        baseline["count"] = int(ch.scalar("SELECT count() FROM spans"))

    t0, results = run_load(loads, duration, monitor, on_go)
    t_end = t0 + duration
    pipe.check()
    sent = sum(r["sent"] for r in results.values())
    # Drain: wait until every sent span is stored (or the timeout says the pipeline fell too far behind).
    drain_deadline = time.time() + args.drain_timeout
    drained_at = None
    stored = 0
    while time.time() < drain_deadline:
        if int(ch.scalar("SELECT count() FROM spans")) - baseline["count"] >= sent:
            stored = int(ch.scalar(f"SELECT count() FROM spans WHERE resource_attributes['bench.phase'] = '{name}'"))
            if stored >= sent:
                drained_at = time.time()
                break
        pipe.check()
        time.sleep(0.5)
    h.note(
        f"phase {name}: sent {sent:,}; "
        + (f"all stored {drained_at - t_end:.1f}s after the end" if drained_at else "NOT all stored in time")
    )
    # Stored during the phase: the slope of count() between 20 % into the phase and its end.
    warm = duration * 0.2
    a, b = watch.count_at(t0 + warm), watch.count_at(t_end)
    stored_rate = (b[1] - a[1]) / (b[0] - a[0]) if a and b and b[0] > a[0] else float("nan")
    stored_at_end = (b[1] - baseline["count"]) if b else 0
    steady = [(t, c) for t, c in watch.counts if t0 + warm <= t <= t_end]
    chunks = [
        (c1 - c0) / (t1 - t0_) for (t0_, c0), (t1, c1) in zip(steady[::5], steady[5::5], strict=False) if t1 > t0_
    ]
    phase_filter = f"resource_attributes['bench.phase'] = '{name}'"
    row = ch.query(
        "SELECT count(), uniqExact(trace_id, span_id), uniqExact(trace_id),"
        " quantilesExactIf(0.5, 0.99)(d, root), maxIf(d, root), countIf(root),"
        " quantilesExact(0.5, 0.99)(d), max(d),"
        " quantilesExactIf(0.5, 0.99)(d, root AND otlp), quantilesExactIf(0.5, 0.99)(d, root AND NOT otlp)"
        " FROM (SELECT trace_id, span_id, parent_span_id = '' AS root, mapContains(attributes, 'otel.scope.name')"
        " AS otlp, (toUnixTimestamp64Milli(ingested_at) - intDiv(toUnixTimestamp64Nano(end_time), 1000000))"
        f" / 1000 AS d FROM spans WHERE {phase_filter})",
        timeout=300,
    )[0]

    def qs(text: str) -> list[float]:
        return [float(x) for x in text.strip("[]").split(",") if x] or [float("nan"), float("nan")]

    count, distinct, traces = int(row[0]), int(row[1]), int(row[2])
    root_q, root_max, roots = qs(row[3]), float(row[4]), int(row[5])
    all_q, all_max = qs(row[6]), float(row[7])
    otlp_q, sdk_q = qs(row[8]), qs(row[9])
    usage = monitor.usage(t0, t_end)
    busy = monitor.system_busy(t0, t_end)
    ours = sum(u["cpu_cores"] for u in usage.values())
    # CPU per span: each process's CPU from the phase's start until every span of it was stored (the
    # backlog's processing included), over the spans sent; the load generators measure their own.
    wall, cpu = monitor.cpu_seconds(t0, drained_at or time.time())
    per_span = {n: c / max(sent, 1) * 1e6 for n, c in cpu.items() if not n.startswith("loadgen") and n != "bench"}
    if "receiver" in cpu:  # it handles only the OTLP share
        per_span["receiver"] = cpu["receiver"] / max(results.get("otlp", {}).get("sent", 0), 1) * 1e6
    for load_name, r in results.items():
        per_span[f"loadgen-{load_name}"] = r["cpu_s"] / max(r["produced"], 1) * 1e6
    threads = {proc: monitor.busiest_threads(t0, t_end, proc) for proc, u in usage.items() if u["cpu_cores"] >= 0.25}
    sdk, otlp = results.get("sdk", {}), results.get("otlp", {})
    out = {
        "name": name,
        "offered_rate": offered,
        "duration_s": duration,
        "t0": t0,
        "t_end": t_end,
        "load": results,
        "sent": sent,
        "sent_rate": sent / duration,
        "sdk_dropped": sdk.get("dropped", 0),
        "sdk_failed": sdk.get("failed", 0),
        "otlp_throttled_requests": otlp.get("throttled", 0),
        "otlp_unsent": otlp.get("unsent", 0),
        "produced_rate": sum(r["produced"] for r in results.values()) / duration,
        "stored_rate": stored_rate,
        "stored_rate_5s_median": statistics.median(chunks) if chunks else float("nan"),
        "stored_rate_5s_range": [min(chunks), max(chunks)] if chunks else [],
        "stored_at_end": stored_at_end,
        "backlog_at_end": sent - stored_at_end,
        "drain_s": (drained_at - t_end) if drained_at else None,
        "drain_rate": (sent - stored_at_end) / (drained_at - t_end) if drained_at and drained_at > t_end else None,
        "rss_timeline_mb": monitor.rss_timeline(t0, drained_at or time.time()),
        "stored": count,
        "stored_distinct": distinct,
        "missing": sent - distinct,
        "duplicates": count - distinct,
        "roots": roots,
        "traces_distinct": traces,  # == roots when every trace id is new (one root per trace)
        "delay_root_p50_s": root_q[0],
        "delay_root_p99_s": root_q[1],
        "delay_root_max_s": root_max,
        "delay_all_p50_s": all_q[0],
        "delay_all_p99_s": all_q[1],
        "delay_all_max_s": all_max,
        "delay_root_p99_sdk_s": sdk_q[1],
        "delay_root_p99_otlp_s": otlp_q[1],
        "processes": usage,
        "system_busy_cores": busy,
        "others_cores": busy - ours,
        "busiest_others": monitor.busiest_others(t0, t_end),
        **monitor.system_parts(t0, t_end),
        "cpu_us_per_span": per_span,
        "cpu_window_s": wall,
        "busiest_threads": threads,
    }
    h.note(phase_line(out))
    return out


def stored_overall(p: dict[str, Any]) -> float:
    """Spans/s from the phase's start until its last span was stored (Phoenix's `stored_rate_overall`)."""
    return p["sent"] / (p["duration_s"] + (p["drain_s"] or 0))


def phase_line(p: dict[str, Any]) -> str:
    """One line per phase as it ends: the rates, the delay, whether every span arrived once, and CPU µs per
    span of each process (so a long run shows its figures before the tables at the end)."""
    cpu = ", ".join(f"{n} {us:.0f}" for n, us in sorted(p["cpu_us_per_span"].items(), key=lambda kv: -kv[1]))
    once = "every span once" if p["missing"] == 0 and p["duplicates"] == 0 else (
        f"{p['missing']:,} missing, {p['duplicates']:,} doubled"
    )  # fmt: skip
    if p["traces_distinct"] != p["roots"]:
        once += f"; {p['roots'] - p['traces_distinct']:,} trace ids reused"
    return (
        f"phase {p['name']}: offered {rate(p['offered_rate'])}/s, sent {rate(p['sent_rate'])}/s, stored "
        f"{rate(p['stored_rate'])}/s; end to queryable p50 {secs(p['delay_root_p50_s'])} p99 "
        f"{secs(p['delay_root_p99_s'])}; {once}; CPU µs/span: {cpu}"
    )


def alert_figures(ch: CH, watch: Watch, phases: list[dict[str, Any]]) -> dict[str, Any]:
    rows = ch.query(
        "SELECT service, state, toUnixTimestamp(window_start), window_seconds, toUnixTimestamp64Milli(fired_at)"
        f" FROM alerts FINAL WHERE rule = '{ALERT_RULE}' ORDER BY fired_at"
    )
    out: dict[str, Any] = {"rows": rows}
    taken: set[int] = set()
    for phase in phases:
        fired, seen, states = [], [], {"firing": 0, "resolved": 0}
        for i, (service, state, window_start, window_seconds, fired_ms) in enumerate(rows):
            start, end = int(window_start), int(window_start) + int(window_seconds)
            # the windows that saw the phase's traffic: ending after its start, starting before its end
            if i in taken or not (phase["t0"] < end and start < phase["t_end"]):
                continue
            taken.add(i)
            states[state] = states.get(state, 0) + 1
            fired.append(int(fired_ms) / 1000 - end)
            first_seen = watch.alerts_seen.get((service, state, start))
            if first_seen is not None:
                seen.append(first_seen - end)
        out[phase["name"]] = {
            "records": len(fired),
            "firing": states.get("firing", 0),
            "resolved": states.get("resolved", 0),
            "windows": math.ceil(phase["t_end"] / 10) - math.floor(phase["t0"] / 10),
            "fired_after_window_p50_s": statistics.median(fired) if fired else float("nan"),
            "fired_after_window_max_s": max(fired) if fired else float("nan"),
            "queryable_after_window_p50_s": statistics.median(seen) if seen else float("nan"),
            "queryable_after_window_max_s": max(seen) if seen else float("nan"),
        }
    return out


def storage_figures(ch: CH) -> dict[str, Any]:
    spans = ch.query(
        "SELECT sum(bytes_on_disk), sum(data_uncompressed_bytes), sum(rows), count() FROM system.parts"
        " WHERE database = 'tracehouse' AND table = 'spans' AND active"
    )[0]
    everything = ch.scalar("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'tracehouse' AND active")
    on_disk, raw, rows, parts = (int(x) for x in spans)
    return {
        "spans_rows": rows,
        "spans_parts": parts,
        "bytes_per_span": on_disk / rows if rows else float("nan"),
        "uncompressed_bytes_per_span": raw / rows if rows else float("nan"),
        "all_tables_bytes_per_span": int(everything) / rows if rows else float("nan"),
    }


# ---- Phoenix -----------------------------------------------------------------------------------------


def run_phoenix(
    args: argparse.Namespace, tmp: Path, monitor: Monitor, offered: float, duration: float
) -> dict[str, Any]:
    from e2e_phoenix import PhoenixServer, SpanWatcher, ensure_phoenix

    executable = ensure_phoenix(log=h.note)
    server = PhoenixServer(executable, tmp / "phoenix", free_port(), free_port())
    h.note("starting phoenix serve (SQLite)...")
    started = time.monotonic()
    server.start()
    h.note(f"phoenix up in {time.monotonic() - started:.0f}s at {server.url}")
    try:
        monitor.watch("phoenix", server.pid)
        watcher = SpanWatcher(server.db_path).start()
        load = start_load("load-phoenix", [
            "otlp", "--url", f"{server.url}/v1/traces", "--rate", str(offered), "--duration", str(duration),
            "--phase", "phoenix", "--seed", str(args.seed), "--pool-bodies", str(args.pool_bodies),
            "--pool-cache", str(pool_cache(tmp, args)),
        ], tmp / "logs")  # fmt: skip
        h.note(f"phase phoenix: {offered:,.0f} spans/s offered for {duration:.0f}s over OTLP/HTTP")
        t0, results = run_load({"otlp": load}, duration, monitor)
        t_end = t0 + duration
        result = results["otlp"]
        accepted = result["ok_spans"]
        # Wait for what it accepted to be stored: until it stops growing for 15 s, or the drain timeout.
        deadline = time.time() + args.phoenix_drain_timeout
        last, last_change = -1, time.time()
        while time.time() < deadline and watcher.rows < accepted:
            if watcher.rows != last:
                last, last_change = watcher.rows, time.time()
            elif time.time() - last_change > 15:
                break
            if server.proc is None or server.proc.poll() is not None:
                break
            time.sleep(1)
        waited = time.time() - t_end
        usage = monitor.usage(t0, time.time())
        _, cpu = monitor.cpu_seconds(t0, time.time())
        watcher.stop()
        # CPU per span as for tracehouse: from the start until it stopped storing, over the spans it
        # stored (Phoenix's spans accepted but never stored would flatter it if counted).
        cpu_us_per_span = {
            "phoenix": cpu.get("phoenix", float("nan")) / max(watcher.rows, 1) * 1e6,
            "loadgen-otlp": result["cpu_s"] / max(result["produced"], 1) * 1e6,
        }
        stored_in_window = watcher.stored_at(t_end)
        growth = [t for (t, c), (_, c0) in zip(watcher.counts[1:], watcher.counts, strict=False) if c > c0]
        busy_until = growth[-1] if growth else time.time()
        return {
            "version": _phoenix_version(),
            "offered_rate": offered,
            "duration_s": duration,
            "load": result,
            "accepted": accepted,
            "accepted_rate": accepted / duration,
            "throttled_requests": result["throttled"],
            "error_requests": result["errors"],
            "unsent": result["unsent"],
            "request_p50_s": result["request_p50_s"],
            "request_p99_s": result["request_p99_s"],
            "stored_in_window": stored_in_window,
            "stored_rate": stored_in_window / duration,
            "stored_after_wait": watcher.rows,
            "stored_rate_overall": watcher.rows / max(busy_until - t0, 1e-9),
            "waited_after_s": waited,
            "delay_root_p50_s": pct(watcher.root_delays, 0.5),
            "delay_root_p99_s": pct(watcher.root_delays, 0.99),
            "delay_root_max_s": max(watcher.root_delays, default=float("nan")),
            "not_stored_after_wait": accepted - watcher.rows,
            "rss_max": usage.get("phoenix", {}).get("rss_max", float("nan")),
            "rss_end": usage.get("phoenix", {}).get("rss_end", float("nan")),
            "cpu_cores": usage.get("phoenix", {}).get("cpu_cores", float("nan")),
            "cpu_us_per_span": cpu_us_per_span,
            "processes": usage,
            "errors": watcher.errors,
        }
    finally:
        server.stop()
        monitor.forget("phoenix")
        h.note("phoenix stopped")


def _phoenix_version() -> str:
    from e2e_phoenix import installed_version

    return installed_version() or "?"


# ---- the report ------------------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> None:
    phases = [p for p in res["phases"] if p["name"] != "warmup"]
    h.table(
        "End to end: throughput (spans/s)",
        ["phase", "offered", "sent", "stored", "stored: 5-s median (min-max)", "backlog at end", "drained after",
         "drain rate", "stored once / sent", "SDK dropped", "503s"],
        [
            [p["name"], rate(p["offered_rate"]), rate(p["sent_rate"]), rate(p["stored_rate"]),
             f"{rate(p['stored_rate_5s_median'])} ({'-'.join(rate(x) for x in p['stored_rate_5s_range'])})",
             f"{p['backlog_at_end']:,}", secs(p["drain_s"]) if p["drain_s"] is not None else "timeout",
             rate(p["drain_rate"]) if p["drain_rate"] else "-",
             f"{p['stored_distinct']:,} / {p['sent']:,}" + (f" ({p['duplicates']} dup)" if p["duplicates"] else ""),
             f"{p['sdk_dropped'] + p['sdk_failed']:,}", f"{p['otlp_throttled_requests']:,}"]
            for p in phases
        ],
        caption="sent: SDK spans acknowledged by Kafka + spans the receiver answered 200 for, per second of the "
        "phase; stored: slope of count() in ClickHouse over the phase after its first 20 %; drain rate: spans/s "
        "stored after the load generators stopped (the backlog over the time to store it); SDK dropped: dropped + "
        "failed in the SDK transport; 503s: OTLP requests the receiver refused (retried)",
    )  # fmt: skip
    h.table(
        "End to end: delay from span end to queryable in ClickHouse (ingested_at - end_time)",
        ["phase", "roots p50", "roots p99", "roots max", "p99 SDK path", "p99 OTLP path", "all p50", "all p99"],
        [
            [p["name"], secs(p["delay_root_p50_s"]), secs(p["delay_root_p99_s"]), secs(p["delay_root_max_s"]),
             secs(p["delay_root_p99_sdk_s"]), secs(p["delay_root_p99_otlp_s"]),
             secs(p["delay_all_p50_s"]), secs(p["delay_all_p99_s"])]
            for p in phases
        ],
        caption="roots: every root span of the phase (it ends when its trace is handed over); all spans include the "
        "time children waited in the application for their trace to end",
    )  # fmt: skip
    alerts = {k: v for k, v in res.get("alerts", {}).items() if k != "rows"}
    h.table(
        f"Alerts: rule {ALERT_RULE} (rate_limit_count > 0 over 10 s, per service)",
        ["phase", "10-s windows with traffic", "records (firing/resolved)", "fired_at - window end p50", "max",
         "queryable - window end p50", "max"],
        [
            [name, a["windows"], f"{a['records']} ({a['firing']}/{a['resolved']})",
             secs(a["fired_after_window_p50_s"]), secs(a["fired_after_window_max_s"]),
             secs(a["queryable_after_window_p50_s"]), secs(a["queryable_after_window_max_s"])]
            for name, a in alerts.items()
        ],
        caption="a record is a state change of one service: firing in even 10-s windows (rate-limited calls sent), "
        "resolved in odd ones; at most 3 per window, fewer when a state equals the one before (after an idle gap)",
    )  # fmt: skip
    names = sorted({n for p in phases for n in p["processes"]})
    h.table(
        "Processes: CPU (cores; 1.00 = one core fully busy) and memory",
        ["process", *[f"{p['name']} CPU" for p in phases], *[f"{p['name']} RSS max" for p in phases],
         "RSS growth, 2nd half of max", "max: waiting for a CPU"],
        [
            [n, *[f"{p['processes'].get(n, {}).get('cpu_cores', float('nan')):.2f}" for p in phases],
             *[mb(p["processes"].get(n, {}).get("rss_max", float("nan"))) for p in phases],
             mb(phases[0]["processes"].get(n, {}).get("rss_growth_2nd_half", float("nan"))) if phases else "-",
             f"{phases[0]['processes'].get(n, {}).get('runq_wait_cores', float('nan')):.2f}" if phases else "-"]
            for n in names
        ]
        + [["others (not this run's)", *[f"{p['others_cores']:.2f}" for p in phases], *["" for _ in phases], "", ""]]
        + [["machine (all CPUs)", *[f"{p['system_busy_cores']:.2f}" for p in phases], *["" for _ in phases], "", ""]],
        caption=f"{h.python_info()}; CPU and RSS of each process with its children, sampled each second from /proc; "
        "waiting for a CPU: time its threads were runnable but not running (/proc/PID/task/*/schedstat), in cores",
    )  # fmt: skip
    names = sorted({n for p in phases for n in p["cpu_us_per_span"]})
    h.table(
        "CPU per span (µs), from each phase's start until all its spans were stored",
        ["process", *[p["name"] for p in phases], f"cores needed at {TARGET_RATE:,}/s (from max)"],
        [
            [n, *[f"{p['cpu_us_per_span'].get(n, float('nan')):.1f}" for p in phases],
             f"{cores_at(n, phases[0]['cpu_us_per_span'].get(n, float('nan')), res):.2f}" if phases else "-"]
            for n in names
        ],
        caption="receiver: per span it received (the OTLP share); load generators: their own CPU per span they made",
    )  # fmt: skip
    rows = []
    for p in phases:
        for proc, threads in p["busiest_threads"].items():
            rows.append([p["name"], proc, ", ".join(f"{t} {c:.2f}" for t, c in threads)])
    if rows:
        h.table("Busiest threads (cores) of processes above 0.25 cores", ["phase", "process", "threads"], rows)
    st = res.get("storage", {})
    if st:
        h.table(
            "On disk (active parts of `spans`, after the run, without OPTIMIZE)",
            ["rows", "parts", "bytes/span", "uncompressed bytes/span", "all tables, bytes per span"],
            [[f"{st['spans_rows']:,}", st["spans_parts"], f"{st['bytes_per_span']:,.0f}",
              f"{st['uncompressed_bytes_per_span']:,.0f}", f"{st['all_tables_bytes_per_span']:,.0f}"]],
        )  # fmt: skip
    phx = res.get("phoenix")
    mx = next((p for p in phases if p["name"] == "max"), None)
    if phx and "error" not in phx and mx:
        th_rss = sum(v["rss_max"] for k, v in mx["processes"].items() if not k.startswith("loadgen"))
        th_cpu = sum(v["cpu_cores"] for k, v in mx["processes"].items() if not k.startswith("loadgen"))
        th_overall = stored_overall(mx)
        th_us = sum(us for n, us in mx["cpu_us_per_span"].items() if not n.startswith("loadgen"))
        h.table(
            f"tracehouse vs Arize Phoenix {phx['version']} (SQLite): same traces and offered rate, in turn",
            ["figure", "tracehouse (max phase)", "Phoenix", "ratio"],
            [
                ["offered spans/s", rate(mx["offered_rate"]), rate(phx["offered_rate"]), ""],
                ["accepted spans/s (Kafka ack / HTTP 200)", rate(mx["sent_rate"]), rate(phx["accepted_rate"]),
                 h.ratio(mx["sent_rate"], phx["accepted_rate"])],
                ["stored (queryable) spans/s during the run", rate(mx["stored_rate"]), rate(phx["stored_rate"]),
                 h.ratio(mx["stored_rate"], phx["stored_rate"])],
                ["stored spans/s, run start to last row stored", rate(th_overall), rate(phx["stored_rate_overall"]),
                 h.ratio(th_overall, phx["stored_rate_overall"])],
                ["503 answers (requests)", f"{mx['otlp_throttled_requests']:,}", f"{phx['throttled_requests']:,}", ""],
                ["stored after the run / accepted", f"{mx['stored_distinct']:,} / {mx['sent']:,}",
                 f"{phx['stored_after_wait']:,} / {phx['accepted']:,} (waited {phx['waited_after_s']:.0f}s)", ""],
                ["delay to queryable, roots p50 (ratio: Phoenix / tracehouse)", secs(mx["delay_root_p50_s"]),
                 secs(phx["delay_root_p50_s"]), h.ratio(phx["delay_root_p50_s"], mx["delay_root_p50_s"])],
                ["delay to queryable, roots p99", secs(mx["delay_root_p99_s"]), secs(phx["delay_root_p99_s"]),
                 h.ratio(phx["delay_root_p99_s"], mx["delay_root_p99_s"])],
                ["RSS max (tracehouse: all its processes but the load generators)", mb(th_rss), mb(phx["rss_max"]),
                 h.ratio(th_rss, phx["rss_max"])],
                ["CPU (cores)", f"{th_cpu:.2f}", f"{phx['cpu_cores']:.2f}", ""],
                ["CPU µs per span stored (tracehouse: all its processes but the load generator)", f"{th_us:.0f}",
                 f"{phx['cpu_us_per_span']['phoenix']:.0f}", h.ratio(phx["cpu_us_per_span"]["phoenix"], th_us)],
                ["load generator CPU µs per span", f"{mx['cpu_us_per_span'].get('loadgen-otlp', float('nan')):.1f}",
                 f"{phx['cpu_us_per_span']['loadgen-otlp']:.1f}", ""],
            ],
            caption="Phoenix's delay counts only spans it stored; spans it accepted but had not stored when the wait "
            "ended are not in it",
        )  # fmt: skip
    elif phx:
        h.console.print(f"[yellow]Phoenix not measured:[/] {phx.get('error', 'skipped')}")
    h.table("Targets (issue)", ["target", "figure", "met"], res["targets"])
    for line in res["findings"]:
        h.console.print(f"- {line}", soft_wrap=True)


def cores_at(name: str, us_per_span: float, res: dict[str, Any], target: float = TARGET_RATE) -> float:
    """Cores a process would need at `target` spans/s at the measured CPU per span."""
    share = res["config"]["otlp_share"]
    if name == "receiver" or name == "loadgen-otlp":
        return us_per_span * target * share / 1e6
    if name == "loadgen-sdk":
        return us_per_span * target * (1 - share) / 1e6
    return us_per_span * target / 1e6


def targets_and_findings(res: dict[str, Any]) -> None:
    phases = {p["name"]: p for p in res["phases"]}
    mx, half = phases.get("max"), phases.get("fixed")
    rows = []
    findings: list[str] = []
    if mx:
        kept = mx["stored_rate"]
        rows.append([f">= {TARGET_RATE:,} spans/s sustained, every process on this machine",
                     f"{rate(kept)} stored/s ({rate(mx['sent_rate'])} sent/s) at {rate(mx['offered_rate'])} offered",
                     "yes" if kept >= TARGET_RATE * 0.97 and mx["offered_rate"] >= TARGET_RATE else "NO"])  # fmt: skip
    if half:
        ok = half["delay_root_p99_s"] < TARGET_P99_S
        rows.append([f"p99 end to queryable < {TARGET_P99_S:.0f} s at a fixed rate ({rate(half['offered_rate'])}/s; "
                     "the target is at half the top rate)",
                     secs(half["delay_root_p99_s"]), "yes" if ok else "NO"])  # fmt: skip
    if mx:
        growth = {k: v["rss_growth_2nd_half"] for k, v in mx["processes"].items() if not k.startswith("loadgen")}
        worst = max(growth.items(), key=lambda kv: kv[1], default=("-", 0.0))
        bounded = worst[1] < 100e6
        rows.append(["bounded memory (RSS growth over the max phase's second half < 100 MB)",
                     f"largest: {worst[0]} {mb(worst[1])}", "yes" if bounded else "NO"])  # fmt: skip
    if res.get("sustainable_rate") is not None:
        top = res["sustainable_rate"]
        rows.append([f"sustainable rate (stored >= {STORED_SHARE_OK:.0%} of offered, backlog < {BACKLOG_OK_S:.0f} s)",
                     f"{rate(top)} spans/s", "yes" if top >= TARGET_RATE else "NO"])  # fmt: skip
    phx = res.get("phoenix")
    if phx and "error" not in phx and mx:
        rows.append(
            [
                "ratio to Phoenix (stored spans/s: during the send window; from the start to the last row stored)",
                f"{h.ratio(mx['stored_rate'], phx['stored_rate'])}; "
                f"{h.ratio(stored_overall(mx), phx['stored_rate_overall'])}",
                "printed",
            ]
        )
    res["targets"] = rows
    # Where the time goes: the busiest process in the max phase, and whether the machine was saturated.
    for name in [n for n in phases if n != "warmup"]:
        p = phases.get(name)
        if not p or not p["processes"]:
            continue
        procs = sorted(p["processes"].items(), key=lambda kv: -kv[1]["cpu_cores"])
        top = ", ".join(f"{k} {v['cpu_cores']:.2f}" for k, v in procs[:5])
        findings.append(
            f"{name}: machine busy {p['system_busy_cores']:.2f} of {os.cpu_count()} cores "
            f"({p['others_cores']:.2f} of it other processes on this shared machine); top processes (cores): {top}"
        )
        if p["busiest_others"]:
            findings.append(
                f"{name}: other processes on the machine (not this run's), cores: "
                + ", ".join(f"{n} {c:.2f}" for n, c in p["busiest_others"])
                + f"; interrupts {p.get('irq_cores', float('nan')):.2f}, steal {p.get('steal_cores', float('nan')):.2f}"
            )
        starved = [(k, v["runq_wait_cores"]) for k, v in procs if v.get("runq_wait_cores", 0) >= 0.1]
        if starved:
            findings.append(
                f"{name}: runnable but waiting for a CPU (cores): " + ", ".join(f"{k} {w:.2f}" for k, w in starved)
            )
        if name == "max":
            need = {n: cores_at(n, us, res) for n, us in p["cpu_us_per_span"].items()}
            total = sum(need.values())
            biggest = sorted(need.items(), key=lambda kv: -kv[1])[:4]
            findings.append(
                f"max: at the CPU each process spent per span, {TARGET_RATE:,} spans/s would need {total:.1f} cores "
                f"for all of them ({', '.join(f'{n} {c:.2f}' for n, c in biggest)}); this machine has "
                f"{os.cpu_count()}"
            )
        for proc, threads in p["busiest_threads"].items():
            if threads and threads[0][1] >= 0.85:
                findings.append(
                    f"{name}: {proc} has a thread at {threads[0][1]:.2f} of a core ({threads[0][0]}): CPU-bound on one "
                    "thread"
                )
        if p["backlog_at_end"] > 0.02 * max(p["sent"], 1):
            findings.append(
                f"{name}: stored {rate(p['stored_rate'])}/s vs sent {rate(p['sent_rate'])}/s: consumers fell behind "
                f"by {p['backlog_at_end']:,} spans (Kafka held them; drained after "
                f"{secs(p['drain_s']) if p['drain_s'] is not None else 'the timeout'})"
            )
        if p["produced_rate"] < 0.97 * p["offered_rate"]:
            findings.append(
                f"{name}: load generators produced only {rate(p['produced_rate'])}/s of {rate(p['offered_rate'])}/s "
                "offered: over OTLP, every request slot (4 in flight) was waiting for the receiver's answer; or "
                "the generators were starved of CPU (see 'waiting for a CPU')"
            )
    res["findings"] = findings


# ---- main ----------------------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The commit measured, and which product files differ from it (the figures are for the working tree)."""
    root = HERE.parent.parent

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("tests/")]
    return {"commit": git("rev-parse", "HEAD").strip() or "?", "uncommitted": dirty}


def run_phases(pipe: Pipeline, watch: Watch, monitor: Monitor, res: dict[str, Any], args: argparse.Namespace) -> None:
    """The measured phases of the chosen mode, each after the previous one drained, into res["phases"]."""
    duration = args.phase_s
    res["phases"].append(run_phase(pipe, watch, monitor, "warmup", min(2000.0, args.rate / 4), 5.0, args))
    if args.mode == "latency":
        res["phases"].append(run_phase(pipe, watch, monitor, "fixed", args.rate, duration, args))
        return
    if args.mode == "find":
        res["sustainable_rate"] = 0.0
        offered = args.start_rate
        while offered <= args.rate:
            p = run_phase(pipe, watch, monitor, f"step-{offered:.0f}", offered, duration, args)
            res["phases"].append(p)
            held = p["stored_rate"] >= STORED_SHARE_OK * offered and p["backlog_at_end"] < BACKLOG_OK_S * offered
            h.note(f"{offered:,.0f} spans/s: " + ("held" if held else "NOT held; stopping"))
            if not held:
                break
            res["sustainable_rate"] = offered
            offered += args.step
        return
    mx = run_phase(pipe, watch, monitor, "max", args.rate, duration, args)
    res["phases"].append(mx)
    behind = mx["stored_rate"] < 0.97 * args.rate or mx["backlog_at_end"] > 0.02 * mx["sent"]
    if args.diag == "on" or (args.diag == "auto" and behind):
        diag_rate = max(500.0, round(mx["stored_rate"] / 2, -2))
        res["phases"].append(run_phase(pipe, watch, monitor, "diag", diag_rate, duration, args))


def run_once(args: argparse.Namespace, run_no: int) -> dict[str, Any]:
    """One full run: a fresh stack in a fresh directory, its phases, then (headline mode) Phoenix with the
    same bodies at the same offered rate, after the stack is stopped."""
    tmp = Path(tempfile.mkdtemp(prefix="tracehouse-e2e-"))
    monitor = Monitor(interval=1.0)
    monitor.watch("bench", os.getpid())
    res: dict[str, Any] = {
        "run": run_no,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_at_start": h.host_load()},
        "config": {
            "mode": args.mode,
            "rate": args.rate,
            "duration_s": args.phase_s,
            "quick": args.quick,
            "workers": args.workers,
            "receiver_processes": args.receiver_processes,
            "kafka": "noida-db" if args.embedded else "Apache Kafka (KRaft)",
            "otlp_share": args.otlp_share,
            "partitions": PARTITIONS,
            "pool_bodies": args.pool_bodies,
            "pool_spans": args.pool_spans,
        },
        "phases": [],
    }
    res["code"] = code_version()
    h.note(f"run {run_no}: temporary directory {tmp}; {h.host_load()}; code {res['code']['commit'][:10]}")
    if res["code"]["uncommitted"]:
        h.note(f"uncommitted changes in the product code: {', '.join(res['code']['uncommitted'])}")
    with ExitStack() as cleanup:
        cleanup.callback(lambda: None if args.keep else shutil.rmtree(tmp, ignore_errors=True))
        monitor.start()
        cleanup.callback(monitor.stop)
        pipe = Pipeline(args, tmp, monitor)
        cleanup.callback(pipe.stop)
        try:
            pipe.start()
            assert pipe.ch is not None
            watch = Watch(pipe.ch)
            monitor.extra.append(watch)
            run_phases(pipe, watch, monitor, res, args)
            time.sleep(3)  # the last alert records
            watch.enabled = False
            res["alerts"] = alert_figures(pipe.ch, watch, [p for p in res["phases"] if p["name"] != "warmup"])
            res["storage"] = storage_figures(pipe.ch)
            res["watch_errors"] = watch.errors
        except Exception as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            h.err.print(f"[red]tracehouse run failed:[/] {res['error']}")
        finally:
            h.note("stopping the tracehouse stack...")
            pipe.stop()
        if args.mode == "headline" and not args.skip_phoenix and "error" not in res:
            try:
                res["phoenix"] = run_phoenix(args, tmp, monitor, args.rate, args.phase_s)
            except Exception as exc:
                res["phoenix"] = {"error": f"{type(exc).__name__}: {exc}"}
                h.err.print(f"[yellow]Phoenix not measured:[/] {res['phoenix']['error']}")
        elif args.mode == "headline" and args.skip_phoenix:
            res["phoenix"] = {"error": "skipped (--skip-phoenix)"}
        res["monitor_errors"] = monitor.errors
        res["machine"]["load_at_end"] = h.host_load()
    if res["phases"]:
        targets_and_findings(res)
        report(res)
    return res


def main_phase(res: dict[str, Any]) -> dict[str, Any] | None:
    """The phase a run's headline figures come from: max, the fixed-rate phase, or the last step held."""
    phases = {p["name"]: p for p in res["phases"]}
    if "sustainable_rate" in res:
        return phases.get(f"step-{res['sustainable_rate']:.0f}")
    return phases.get("max") or phases.get("fixed")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, each run's value and the median over the runs (the machine is noisy: CPU µs per span is
    steadier than spans/s)."""
    rows: dict[str, list[float]] = {}

    def put(name: str, i: int, value: float | None) -> None:
        rows.setdefault(name, [float("nan")] * len(runs))[i] = float("nan") if value is None else float(value)

    for i, res in enumerate(runs):
        if "sustainable_rate" in res:
            put("sustainable rate (spans/s)", i, res["sustainable_rate"])
        p = main_phase(res)
        if p is not None:
            put(f"tracehouse {p['name'].split('-')[0]}: offered spans/s", i, p["offered_rate"])
            put("tracehouse: sent (accepted) spans/s", i, p["sent_rate"])
            put("tracehouse: stored spans/s", i, p["stored_rate"])
            put("tracehouse: missing + doubled spans", i, p["missing"] + p["duplicates"])
            put("tracehouse: trace ids reused (roots - distinct trace ids)", i, p["roots"] - p["traces_distinct"])
            put("tracehouse: end to queryable p50 (s)", i, p["delay_root_p50_s"])
            put("tracehouse: end to queryable p99 (s)", i, p["delay_root_p99_s"])
            for name, us in p["cpu_us_per_span"].items():
                put(f"CPU µs/span: {name}", i, us)
            put(
                "CPU µs/span: tracehouse total (no load generator)",
                i,
                sum(us for n, us in p["cpu_us_per_span"].items() if not n.startswith("loadgen")),
            )
        phx = res.get("phoenix")
        if phx and "error" not in phx:
            put("Phoenix: accepted spans/s", i, phx["accepted_rate"])
            put("Phoenix: stored spans/s (in the send window)", i, phx["stored_rate"])
            put("Phoenix: stored spans/s (start to last row)", i, phx["stored_rate_overall"])
            put("Phoenix: end to queryable p50 (s)", i, phx["delay_root_p50_s"])
            put("Phoenix: end to queryable p99 (s)", i, phx["delay_root_p99_s"])
            put("CPU µs/span: Phoenix", i, phx["cpu_us_per_span"]["phoenix"])
            put("CPU µs/span: Phoenix's load generator", i, phx["cpu_us_per_span"]["loadgen-otlp"])
            if p is not None and phx["stored_rate"]:
                put(
                    "ratio stored spans/s in the send window, tracehouse / Phoenix",
                    i,
                    p["stored_rate"] / phx["stored_rate"],
                )
            if p is not None and phx["stored_rate_overall"]:
                overall = stored_overall(p)
                put("tracehouse: stored spans/s (start to last row)", i, overall)
                put(
                    "ratio stored spans/s start to last row, tracehouse / Phoenix",
                    i,
                    overall / phx["stored_rate_overall"],
                )
    medians = {
        name: statistics.median([v for v in values if not math.isnan(v)] or [float("nan")])
        for name, values in rows.items()
    }
    return {"per_run": rows, "median": medians}


def print_summary(summ: dict[str, Any], runs: int) -> None:
    def fmt(name: str, v: float) -> str:
        if math.isnan(v):
            return "-"
        if "(s)" in name:
            return secs(v)
        if "ratio" in name:
            return f"{v:.1f}x"
        return f"{v:,.1f}" if "µs" in name else f"{v:,.0f}"

    h.table(
        f"Summary of {runs} run(s): medians (the README figures)",
        ["figure", *[f"run {i + 1}" for i in range(runs)], "median"],
        [[n, *[fmt(n, v) for v in vals], fmt(n, summ["median"][n])] for n, vals in summ["per_run"].items()],
        caption="CPU µs/span: each process's CPU (from /proc, with its children) from the phase's start until all "
        "its spans were stored, over the spans sent; the load generators' own CPU over the spans they made; "
        "Phoenix's over the spans it stored",
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("headline", "latency", "find"), default="headline",
                        help="headline: a phase at --rate, then Phoenix at the same rate; latency: one phase at "
                        "--rate (give half the top rate) for the delay figure; find: rates from --start-rate up "
                        "by --step to --rate until one does not hold")  # fmt: skip
    parser.add_argument("--runs", type=int, default=1, help="full runs (a fresh stack each); medians at the end")
    parser.add_argument("--quick", action="store_true", help="15 s phases and shorter waits")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase (default 60, 15 with --quick)")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="offered spans/s (find: the highest step)")
    parser.add_argument("--start-rate", type=float, default=5000.0, help="find: the first step")
    parser.add_argument("--step", type=float, default=2500.0, help="find: spans/s added per step")
    parser.add_argument("--skip-phoenix", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here as JSON")
    parser.add_argument("--embedded", action="store_true", help="noida-db instead of Apache Kafka")
    parser.add_argument("--workers", type=int, default=1, choices=(1, 2))
    parser.add_argument("--receiver-processes", type=int, default=1, help="`tracehouse receiver --processes N`")
    parser.add_argument(
        "--otlp-share",
        type=float,
        default=1.0,
        help="share of spans through the OTLP receiver (default 1: the path most users take; the rest go "
        "from the SDK straight to Kafka)",
    )
    parser.add_argument("--pool-bodies", type=int, default=100,
                        help="distinct OTLP bodies of 200 spans the generators re-send with new ids")  # fmt: skip
    parser.add_argument("--pool-spans", type=int, default=60_000, help="distinct SDK spans (--otlp-share < 1)")
    parser.add_argument("--diag", choices=("auto", "on", "off"), default="auto",
                        help="headline: a phase at half what max stored (auto: when max did not keep up)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories (logs, data)")
    args = parser.parse_args()
    args.phase_s = args.duration or (15.0 if args.quick else 60.0)
    args.drain_timeout = 180.0 if args.quick else 420.0
    args.phoenix_drain_timeout = 45.0 if args.quick else 120.0

    runs = []
    for run_no in range(1, args.runs + 1):
        runs.append(run_once(args, run_no))
        if args.json:  # after each run, so a long series that is stopped keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"runs": runs, "summary": summary(runs)}, indent=2, default=str))
    summ = summary(runs)
    print_summary(summ, len(runs))
    if args.json:
        h.note(f"figures written to {args.json}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
