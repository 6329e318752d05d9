"""Per-process CPU and memory for the end-to-end benchmark (e2e.py), read from /proc (psutil when
installed is not needed: everything here is two files per process).

Not a benchmark itself and not a test. A process is watched with its descendants (a server that forks
workers counts as one); CPU is user + system time, RSS is VmRSS summed over the tree. Threads of the
busiest processes are sampled too, so a report can say which thread of which process is CPU-bound.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str] | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _comm(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def cpu_s(pid: int) -> float:
    fields = _stat_fields(f"/proc/{pid}/stat")
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(f"/proc/{entry}/stat")
        if fields is None:
            continue
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def tree(pid: int, kids: dict[int, list[int]] | None = None, stop: set[int] | None = None) -> list[int]:
    """`pid` and its descendants, not descending into the pids in `stop` (watched on their own)."""
    kids = kids if kids is not None else children_map()
    stop = stop or set()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(k for k in kids.get(p, []) if k not in stop)
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread: by thread name where the thread has one of its own (the JVM's, ClickHouse's;
    same names summed), else `main` or `thread-TID` (Python 3.11 does not name its threads)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    main_name = _comm(f"/proc/{pid}/comm")
    for tid in tids:
        fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if fields is None:
            continue
        name = _comm(f"/proc/{pid}/task/{tid}/comm")
        if int(tid) == pid:
            name = "main"
        elif name == main_name:
            name = f"thread-{tid}"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def sched_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def all_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(f"/proc/{entry}/stat")
            if fields is not None:
                out[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def short_cmdline(pid: int) -> str:
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [p.decode(errors="replace") for p in parts if p]
    if not words:
        return _comm(f"/proc/{pid}/comm")
    shown = [os.path.basename(words[0]), *[w for w in words[1:4] if not w.startswith("-")]]
    return " ".join(shown)[:60]


def system_cpu() -> tuple[float, float, float, float]:
    """(busy, total, softirq + irq, steal) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total, fields[5] + fields[6], fields[7]


@dataclass
class Sample:
    t: float
    cpu: dict[str, float]  # name -> CPU seconds (tree)
    rss: dict[str, int]  # name -> bytes (tree)
    threads: dict[str, dict[str, float]]  # name -> thread name -> CPU seconds (main pid only)
    system: tuple[float, float, float, float]
    wait: dict[str, float] = field(default_factory=dict)  # name -> seconds runnable but not running (tree)
    others: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds, processes not watched


@dataclass
class Monitor:
    """Samples every `interval` seconds the processes registered by name, plus `extra` callbacks."""

    interval: float = 1.0
    procs: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    extra: list[Callable[[float], None]] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # pid -> short command line (other processes)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            with self._lock:
                self.procs[name] = pid

    def forget(self, name: str) -> None:
        with self._lock:
            self.procs.pop(name, None)

    def sample(self) -> Sample:
        kids = children_map()
        with self._lock:
            procs = dict(self.procs)
        cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        wait: dict[str, float] = {}
        threads: dict[str, dict[str, float]] = {}
        watched = set(procs.values())
        ours: set[int] = set()
        for name, pid in procs.items():
            pids = tree(pid, kids, watched)
            ours.update(pids)
            cpu[name] = sum(cpu_s(p) for p in pids)
            rss[name] = sum(rss_bytes(p) for p in pids)
            wait[name] = sum(sched_wait_s(p) for p in pids)
            threads[name] = thread_cpu(pid)
        others = {p: c for p, c in all_cpu().items() if p not in ours}
        for pid in others:
            if pid not in self.names:
                self.names[pid] = short_cmdline(pid)
        s = Sample(time.time(), cpu, rss, threads, system_cpu(), wait, others)
        self.samples.append(s)
        return s

    def start(self) -> Monitor:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                now = self.sample().t
                for callback in self.extra:
                    callback(now)
            except Exception as exc:  # keep sampling; say what went wrong at the end
                if len(self.errors) < 10:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- summaries --------------------------------------------------------------------------------

    def window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]

    def usage(self, t0: float, t1: float) -> dict[str, dict[str, float]]:
        """Per process over [t0, t1]: CPU as a share of one core, RSS at start/max/end and its growth in
        the second half of the window (bytes), from the samples inside it."""
        window = self.window(t0, t1)
        if len(window) < 2:
            return {}
        first, last = window[0], window[-1]
        mid = window[len(window) // 2]
        wall = last.t - first.t
        out: dict[str, dict[str, float]] = {}
        for name in last.cpu:
            if name not in first.cpu:
                continue
            rss = [s.rss.get(name, 0) for s in window if name in s.rss]
            out[name] = {
                "cpu_cores": (last.cpu[name] - first.cpu[name]) / wall,
                "runq_wait_cores": (last.wait.get(name, 0.0) - first.wait.get(name, 0.0)) / wall,
                "rss_start": float(first.rss.get(name, 0)),
                "rss_max": float(max(rss)),
                "rss_end": float(last.rss.get(name, 0)),
                "rss_growth_2nd_half": float(last.rss.get(name, 0) - mid.rss.get(name, 0)),
            }
        return out

    def cpu_seconds(self, t0: float, t1: float) -> tuple[float, dict[str, float]]:
        """(wall seconds covered, CPU seconds per process) between the first and last sample in [t0, t1]."""
        window = self.window(t0, t1)
        if len(window) < 2:
            return 0.0, {}
        first, last = window[0], window[-1]
        return last.t - first.t, {n: last.cpu[n] - first.cpu[n] for n in last.cpu if n in first.cpu}

    def rss_timeline(self, t0: float, t1: float, step: float = 5.0) -> dict[str, list[tuple[float, float]]]:
        """(seconds since t0, RSS MB) every `step` seconds, per process."""
        out: dict[str, list[tuple[float, float]]] = {}
        next_t = t0
        for s in self.window(t0, t1):
            if s.t < next_t:
                continue
            next_t = s.t + step
            for name, rss in s.rss.items():
                out.setdefault(name, []).append((round(s.t - t0, 1), round(rss / 1e6, 1)))
        return out

    def system_busy(self, t0: float, t1: float) -> float:
        """Busy share of all CPUs over [t0, t1], in cores."""
        window = self.window(t0, t1)
        if len(window) < 2:
            return float("nan")
        (b0, a0, _, _), (b1, a1, _, _) = window[0].system, window[-1].system
        return (b1 - b0) / max(a1 - a0, 1) * (os.cpu_count() or 1)

    def system_parts(self, t0: float, t1: float) -> dict[str, float]:
        """Interrupt handling (irq + softirq: loopback networking) and steal (the hypervisor), in cores."""
        window = self.window(t0, t1)
        if len(window) < 2:
            return {}
        (_, a0, i0, s0), (_, a1, i1, s1) = window[0].system, window[-1].system
        cores = os.cpu_count() or 1
        return {"irq_cores": (i1 - i0) / max(a1 - a0, 1) * cores, "steal_cores": (s1 - s0) / max(a1 - a0, 1) * cores}

    def busiest_others(self, t0: float, t1: float, top: int = 4) -> list[tuple[str, float]]:
        """The processes not watched here that used the most CPU in [t0, t1] (cores), by command line."""
        window = self.window(t0, t1)
        if len(window) < 2:
            return []
        wall = window[-1].t - window[0].t
        by_name: dict[str, float] = {}
        for before, after in itertools.pairwise(window):  # short-lived processes count too
            for pid, c in after.others.items():
                used = c - before.others.get(pid, 0.0)
                if used > 0:
                    name = self.names.get(pid, str(pid))
                    by_name[name] = by_name.get(name, 0.0) + used / wall
        return sorted(by_name.items(), key=lambda kv: -kv[1])[:top]

    def busiest_threads(self, t0: float, t1: float, name: str, top: int = 3) -> list[tuple[str, float]]:
        window = [s for s in self.window(t0, t1) if name in s.threads]
        if len(window) < 2:
            return []
        first, last = window[0], window[-1]
        wall = last.t - first.t
        shares = {
            thread: (cpu - first.threads[name].get(thread, 0.0)) / wall for thread, cpu in last.threads[name].items()
        }
        return sorted(shares.items(), key=lambda kv: -kv[1])[:top]
