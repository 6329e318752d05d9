"""`tracehouse top` against the real engine: known rollup rows in, every figure checked against Python.

One database per module, filled the way the sink fills it (Rollup rows as JSONEachRow, each carrying the
base64 latency sketch of its window's latencies). Around the rows the view must read — the six newest
closed 10-second windows of four groups — sit rows it must not: two older windows, a window from the
future (a producer with a broken clock), a 60-second window, and the first version of a revised row
(`rollups FINAL` keeps only its replacement). Expected values are computed in Python from the raw
latencies and counts: spans per second over the 60 s range, error rates, token and cost sums, and p95
within the sketch's 1 % of the exact order statistic. The command runs in process through the CLI's
entry function, and as a subprocess for Ctrl-C in the live view.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from tracehouse.cli.main import main
from tracehouse.cli.top import merged_sketch
from tracehouse.core.config import Settings
from tracehouse.core.rollups import Rollup
from tracehouse.core.sketch import RELATIVE_ACCURACY, LatencySketch
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.rows import encode_rows

SEED = 20251128
WINDOWS_IN_RANGE = 6  # the default --window 1m over 10 s windows
# (service, kind, name, model): two models and a retriever in one service, one model in another
GROUPS = (
    ("support-bot", "LLM", "chat", "gpt-4o"),
    ("support-bot", "LLM", "chat", "gpt-4o-mini"),
    ("support-bot", "RETRIEVER", "search", ""),
    ("search-api", "LLM", "answer", "gpt-4o"),
)
REVISED = GROUPS[0]  # its newest window is inserted twice; the second version must win


@dataclass
class Window:
    """What one rollup row summarises: the latencies themselves, so the test knows the exact answers."""

    start: int
    key: tuple[str, str, str, str]
    latencies: list[float]
    errors: int
    rate_limits: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    seconds: int = 10
    sketch: LatencySketch = field(init=False)

    def __post_init__(self) -> None:
        self.sketch = LatencySketch()
        for value in self.latencies:
            self.sketch.add(value)

    def row(self, *, with_sketch: bool = True) -> Rollup:
        p50, p95, p99 = self.sketch.quantiles((0.5, 0.95, 0.99))
        service, kind, name, model = self.key
        return Rollup(
            window_start=self.start, window_seconds=self.seconds, service=service, kind=kind, name=name,
            model=model, count=len(self.latencies), error_count=self.errors, rate_limit_count=self.rate_limits,
            latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99, latency_max_ms=self.sketch.max,
            latency_sketch=base64.b64encode(self.sketch.to_bytes()).decode("ascii") if with_sketch else "",
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens, cost_usd=self.cost_usd,
        )  # fmt: skip


def make_window(rng: random.Random, start: int, key: tuple[str, str, str, str], *, seconds: int = 10) -> Window:
    count = rng.randint(5, 120)
    scale = 800.0 if key[1] == "LLM" else 40.0
    errors = rng.randint(0, count // 8)
    llm = key[1] == "LLM"
    return Window(
        start=start,
        key=key,
        latencies=[rng.lognormvariate(0, 0.8) * scale for _ in range(count)],
        errors=errors,
        rate_limits=rng.randint(0, errors),
        input_tokens=rng.randint(100, 5000) * count if llm else 0,
        output_tokens=rng.randint(10, 500) * count if llm else 0,
        cached_tokens=rng.randint(0, 50) * count if llm else 0,
        reasoning_tokens=rng.randint(0, 20) * count if llm else 0,
        cost_usd=round(rng.uniform(0.0001, 0.01) * count, 6) if llm else 0.0,
        seconds=seconds,
    )


@dataclass
class Dataset:
    settings: Settings
    client: Client
    newest: int  # start of the newest closed 10 s window
    in_range: list[Window]  # what the default view must read (with the revised row's second version)
    minute: Window  # a 60 s window: read only by long ranges

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database


def insert(client: Client, rows: list[Rollup]) -> None:
    client.raw_insert("rollups", insert_block=encode_rows(rows), fmt="JSONEachRow")


@pytest.fixture(scope="module")
def data(clickhouse_url: str) -> Iterator[Dataset]:
    settings = Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database=f"test_{uuid.uuid4().hex[:10]}")
    asyncio.run(migrate(settings.clickhouse))
    client = sync_client(settings.clickhouse)
    rng = random.Random(SEED)
    newest = int(time.time()) // 10 * 10 - 20
    windows = {
        (start, key): make_window(rng, start, key)
        for start in range(newest - 10 * (WINDOWS_IN_RANGE + 1), newest + 1, 10)  # two more than the range
        for key in GROUPS
    }
    future = make_window(rng, newest + 3600, GROUPS[3])  # a producer clock an hour ahead
    first_version = make_window(rng, newest, REVISED)
    minute = make_window(rng, (newest - 60) // 60 * 60, GROUPS[3], seconds=60)
    insert(client, [first_version.row(), future.row(), minute.row()])
    insert(client, [w.row() for w in windows.values()])  # later insert: replaces first_version under FINAL
    in_range = [w for (start, _), w in windows.items() if start > newest - 10 * WINDOWS_IN_RANGE]
    assert len(in_range) == WINDOWS_IN_RANGE * len(GROUPS)
    try:
        yield Dataset(settings, client, newest, in_range, minute)
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")
        client.close()


# ---- Python's answers ---------------------------------------------------------------------------------


def exact_quantile(values: list[float], q: float) -> float:
    """The order statistic at rank floor(q·(n-1)): what the sketch approximates within 1 %."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def expected(windows: list[Window], by: tuple[str, ...], seconds: int) -> dict[tuple[str, ...], dict[str, Any]]:
    index = {"service": 0, "model": 3}
    grouped: dict[tuple[str, ...], list[Window]] = defaultdict(list)
    for window in windows:
        grouped[tuple(window.key[index[k]] for k in by)].append(window)
    answers = {}
    for keys, members in grouped.items():
        calls = sum(len(w.latencies) for w in members)
        errors = sum(w.errors for w in members)
        answers[keys] = {
            "calls": calls,
            "spans_per_second": round(calls / seconds, 3),
            "errors": errors,
            "error_rate": round(errors / calls, 4),
            "rate_limits": sum(w.rate_limits for w in members),
            "input_tokens": sum(w.input_tokens for w in members),
            "output_tokens": sum(w.output_tokens for w in members),
            "cached_tokens": sum(w.cached_tokens for w in members),
            "reasoning_tokens": sum(w.reasoning_tokens for w in members),
            "cost_usd": sum(w.cost_usd for w in members),
            "max_ms": round(max(max(w.latencies) for w in members), 1),
            "latencies": [x for w in members for x in w.latencies],
            "windows": len({w.start for w in members}),
        }
    return answers


def top(capsys: pytest.CaptureFixture[str], data: Dataset, *args: str) -> tuple[int, str, str]:
    code = main(["top", *args, "--clickhouse", data.settings.clickhouse_url])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _database(data: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_DATABASE", data.database)


def check_group(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name in ("calls", "spans_per_second", "errors", "error_rate", "rate_limits", "input_tokens",
                 "output_tokens", "cached_tokens", "reasoning_tokens", "max_ms", "windows"):  # fmt: skip
        assert got[name] == want[name], name
    assert got["cost_usd"] == pytest.approx(want["cost_usd"], abs=2e-6)
    assert got["p95_source"] == "sketch"
    exact = exact_quantile(want["latencies"], 0.95)
    assert abs(got["p95_ms"] - exact) <= exact * RELATIVE_ACCURACY + 0.05  # 1 % sketch, 0.1 ms rounding


# ---- the snapshot as JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["service,model", "service", "model"])
def test_json_snapshot_matches_python(capsys: pytest.CaptureFixture[str], data: Dataset, by: str) -> None:
    before = time.time()
    code, out, err = top(capsys, data, "--json", "--by", by)
    after = time.time()
    assert code == 0, err
    snap = json.loads(out)
    keys = tuple(by.split(","))
    assert snap["by"] == list(keys) and snap["database"] == data.database
    assert (snap["window_seconds"], snap["step_seconds"], snap["seconds"]) == (60, 10, 60)
    end = data.newest + 10  # the newest closed window ends the range, not the wall clock or the future row
    assert snap["to"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end))
    assert snap["from"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end - 60))
    assert before - end - 1 <= snap["age_seconds"] <= after - end + 1
    assert snap["message"] is None

    want = expected(data.in_range, keys, 60)
    got = {tuple(g[k] for k in keys): g for g in snap["groups"]}
    assert set(got) == set(want)
    for group in snap["groups"]:
        assert set(group) >= set(keys) and not set(group) & ({"service", "model"} - set(keys))
    for k, answer in want.items():
        check_group(got[k], answer)
    calls = [g["calls"] for g in snap["groups"]]
    assert calls == sorted(calls, reverse=True)  # busiest first

    total = expected(data.in_range, (), 60)[()]
    assert "windows" not in snap["total"]
    check_group({**snap["total"], "windows": total["windows"]}, total)
    assert snap["total"]["spans_per_second"] == pytest.approx(
        sum(g["spans_per_second"] for g in snap["groups"]), abs=0.002
    )


def test_merged_p95_is_the_sketch_of_all_windows(capsys: pytest.CaptureFixture[str], data: Dataset) -> None:
    """Not a mean of per-window p95s: the same value as one sketch fed every latency of the group."""
    code, out, err = top(capsys, data, "--json", "--by", "model")
    assert code == 0, err
    got = {g["model"]: g for g in json.loads(out)["groups"]}
    for model in ("gpt-4o", "gpt-4o-mini", ""):
        one = LatencySketch()
        for window in data.in_range:
            if window.key[3] == model:
                for value in window.latencies:
                    one.add(value)
        assert got[model]["p95_ms"] == round(one.quantile(0.95), 1)


def test_window_rounds_up_to_whole_rollup_windows(capsys: pytest.CaptureFixture[str], data: Dataset) -> None:
    code, out, err = top(capsys, data, "--json", "--window", "25s", "--by", "service")
    assert code == 0, err
    snap = json.loads(out)
    assert (snap["window_seconds"], snap["seconds"]) == (25, 30)
    recent = [w for w in data.in_range if w.start > data.newest - 30]
    want = expected(recent, ("service",), 30)
    got = {(g["service"],): g for g in snap["groups"]}
    assert set(got) == set(want)
    for k, answer in want.items():
        check_group(got[k], answer)


def test_long_windows_read_the_minute_rollups(capsys: pytest.CaptureFixture[str], data: Dataset) -> None:
    code, out, err = top(capsys, data, "--json", "--window", "10m")
    assert code == 0, err
    snap = json.loads(out)
    assert (snap["step_seconds"], snap["seconds"]) == (60, 600)
    assert snap["to"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.minute.start + 60))
    [group] = snap["groups"]
    assert (group["service"], group["model"]) == ("search-api", "gpt-4o")
    want = expected([data.minute], ("service", "model"), 600)[("search-api", "gpt-4o")]
    check_group(group, want)


# ---- the table ------------------------------------------------------------------------------------------


def test_once_prints_the_table(capsys: pytest.CaptureFixture[str], data: Dataset) -> None:
    code, out, err = top(capsys, data, "--once")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"tracehouse top · {data.database} · last 60 s (6 × 10 s windows) to ")
    assert "Ctrl-C" not in out
    header = next(line for line in lines if "spans/s" in line)
    for column in ("service", "model", "spans/s", "spans", "errors", "err %", "p95 ms", "tokens in", "cost $"):
        assert column in header
    want = expected(data.in_range, ("service", "model"), 60)
    body = lines[lines.index(header) + 1 :]
    bar = set("█▉▊▋▌▍▎▏▐╸╺━ ")  # the spans/s share bar: not a cell to compare
    shown = [[c for c in line.split() if not set(c) <= bar] for line in body if line.strip()]
    order = sorted(want, key=lambda k: (-want[k]["calls"], k))
    assert [cells[:2] for cells in shown[: len(order)]] == [[s, m or "(none)"] for s, m in order]
    for cells, key in zip(shown, order, strict=False):
        answer = want[key]
        assert cells[2] == f"{answer['spans_per_second']:,.2f}"
        assert cells[3] == f"{answer['calls']:,}" and cells[4] == f"{answer['errors']:,}"
        assert cells[5] == f"{answer['error_rate'] * 100:.1f}"
    total = expected(data.in_range, (), 60)[()]
    assert shown[-1][0] == "total" and shown[-1][1] == f"{total['spans_per_second']:,.2f}"
    assert shown[-1][2] == f"{total['calls']:,}"


def test_live_view_exits_0_on_ctrl_c(data: Dataset) -> None:
    env = {**os.environ, "TRACEHOUSE_CLICKHOUSE_DATABASE": data.database, "COLUMNS": "160", "FORCE_COLOR": "1"}
    command = [sys.executable, "-m", "tracehouse.cli.main", "top", "--interval", "0.3",
               "--clickhouse", data.settings.clickhouse_url]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C quits" not in b"".join(chunks):  # the live view is up ...
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the live view never appeared"
            time.sleep(0.1)
        frames = b"".join(chunks).count(b"Ctrl-C quits")
        while b"".join(chunks).count(b"Ctrl-C quits") < frames + 2:  # ... and refreshes
            assert time.monotonic() < deadline, "the live view did not refresh"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"top did not exit on Ctrl-C; stderr: {err.decode()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert b"search-api" in b"".join(chunks)


# ---- when there is nothing to show, and mistakes ----------------------------------------------------------


@pytest.fixture
def empty_database(clickhouse_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    settings = Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database=f"test_{uuid.uuid4().hex[:10]}")
    asyncio.run(migrate(settings.clickhouse))
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_DATABASE", settings.clickhouse.database)
    client = sync_client(settings.clickhouse)
    try:
        yield settings
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")
        client.close()


def test_no_rollups_yet_is_a_message_not_an_error(
    capsys: pytest.CaptureFixture[str], data: Dataset, empty_database: Settings
) -> None:
    code, out, err = top(capsys, data, "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["groups"] == [] and snap["total"] is None
    assert snap["database"] == empty_database.clickhouse.database
    assert "No rollups yet" in snap["message"] and "tracehouse up" in snap["message"]
    code, out, err = top(capsys, data, "--once")
    assert code == 0, err
    assert "No rollups yet" in out and empty_database.clickhouse.database in out


def test_without_a_sketch_p95_is_the_worst_window_as_an_upper_bound(
    capsys: pytest.CaptureFixture[str], data: Dataset, empty_database: Settings
) -> None:
    rng = random.Random(SEED + 1)
    newest = int(time.time()) // 10 * 10 - 20
    key = ("legacy", "LLM", "chat", "gpt-4o")
    windows = [make_window(rng, newest - 10 * i, key) for i in range(3)]
    client = sync_client(empty_database.clickhouse)
    try:
        insert(client, [windows[0].row(with_sketch=False), *(w.row() for w in windows[1:])])
    finally:
        client.close()
    code, out, err = top(capsys, data, "--json")
    assert code == 0, err
    [group] = json.loads(out)["groups"]
    assert group["p95_source"] == "worst-window"
    worst = max(w.sketch.quantile(0.95) for w in windows)
    assert group["p95_ms"] == round(worst, 1)
    assert group["p95_ms"] >= exact_quantile([x for w in windows for x in w.latencies], 0.95) * 0.99
    code, out, err = top(capsys, data, "--once")
    assert code == 0, err
    assert f"≤{group['p95_ms']:,.1f}" in out


def test_merged_sketch_refuses_partial_input() -> None:
    sketch = LatencySketch()
    sketch.add(5.0)
    good = base64.b64encode(sketch.to_bytes()).decode()
    assert merged_sketch([good, good]).count == 2  # type: ignore[union-attr]
    assert merged_sketch([good, ""]) is None
    assert merged_sketch([good, "not base64!"]) is None
    assert merged_sketch([good, base64.b64encode(b"\x93\x01\x02\x03").decode()]) is None


def test_missing_schema_and_bad_flags(
    capsys: pytest.CaptureFixture[str], data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_DATABASE", f"absent_{uuid.uuid4().hex[:8]}")
    code, out, err = top(capsys, data, "--json")
    assert code == 1 and out == ""
    assert "tracehouse migrate" in err
    for args, message in ((["--window", "soon"], "bad --window"), (["--window", "0s"], "bad --window"),
                          (["--interval", "0"], "bad --interval")):  # fmt: skip
        code, out, err = top(capsys, data, "--once", *args)
        assert code == 2 and message in err, (args, err)
    with pytest.raises(SystemExit) as exc:
        main(["top", "--by", "kind"])
    assert exc.value.code == 2
