"""`tracehouse top`: live rollups per service and/or model, refreshed every few seconds.

What it reads, and why: the `rollups` table (the named query `top`, over `rollups FINAL` so a revised
window counts once). The worker writes one row per closed window and group a few seconds after the
window ends (grace, merge delay, sink flush), which makes the 10-second windows the freshest data that is
both aggregated and complete. `spans_minutely` has spans as soon as the sink stores them, but per minute
only: its newest minute is always partly filled (a rate over it dips and jumps) and its t-digest p95 is
looser than the sketch's 1 %; scanning `spans` every two seconds would cost what the aggregates exist
to save. The range shown is the `--window` (rounded up to whole windows) that ends
at the newest window written, not at the wall clock: a window still open has no row yet, and ending the
range at "now" would show a dip that is only the pipeline's delay. How old that newest window is comes
with every snapshot (`age_seconds`), so a stopped pipeline reads as stale rather than as live zeros.
Windows of 10 minutes or more use the 60-second rollups (six times fewer rows per refresh).

The figures per group, over the range:
- spans/s: the group's spans divided by the range's seconds (windows without spans count as zero);
- error rate: errors / spans; errors, rate limits, tokens and cost are exact sums of the windows;
- p95: each window row carries its mergeable latency sketch (tracehouse.core.sketch, 1 % relative
  accuracy, merged by adding bucket counts), so the windows' sketches are merged here into one sketch
  per group and its p95 is that of all the group's spans, within 1 % (`p95_source: "sketch"`). A
  count-weighted mean of the windows' p95s has no such guarantee, so it is never used: if a row's
  sketch is missing or unreadable, the group shows the largest p95 among its windows instead
  (`p95_source: "worst-window"`, shown as "≤"), in effect an upper bound: about 5 % of each window's
  spans exceed it, so about 5 % of all of them at most (off by no more than a rank per window). Decoding
  and merging is cheap (~15 µs a sketch, measured; the worker caps the groups per window, so a refresh
  handles at most a few thousand).

`--once` prints one table and `--json` one snapshot, then exit (for scripts and tests); otherwise a
rich Live view refreshes until Ctrl-C, which exits with status 0. A failed refresh (ClickHouse restarting)
is shown in the view and retried at the next interval; only the first read's failure ends the command.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from rich.bar import Bar
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tracehouse.cli.query import (
    QueryRequest,
    ReadError,
    UsageError,
    build_request,
    clickhouse_errors,
    emit_json,
    guarded,
    jsonable,
    make_console,
    run,
)
from tracehouse.core.config import Settings
from tracehouse.core.rollups import COARSE_WINDOW_SECONDS, FINE_WINDOW_SECONDS
from tracehouse.core.sketch import LatencySketch
from tracehouse.read.times import parse_duration

BY_CHOICES = ("service", "model", "service,model")
FINE_STEP = FINE_WINDOW_SECONDS  # the worker's rollup window sizes (core.rollups.WINDOW_SIZES)
COARSE_STEP = COARSE_WINDOW_SECONDS
COARSE_FROM_SECONDS = 600  # windows this long or longer read the 60 s rollups
QUIET_WHILE_LIVE = ("clickhouse_connect", "urllib3")  # their retry warnings: the view reports failures itself
SUM_FIELDS = ("calls", "errors", "rate_limits", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
NO_ROLLUPS = (
    f"No rollups yet in database {{database}}: the worker writes one row per group when each {FINE_STEP}-second "
    "window closes. Start the stack (tracehouse up) and send traffic (tracehouse loadgen) for at least "
    f"{2 * FINE_STEP} seconds."
)


# ---- what to read -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopOptions:
    """The command line, checked: which range, which grouping, how often."""

    window_seconds: int
    by: tuple[str, ...]  # ("service",), ("model",) or ("service", "model")
    interval: float = 2.0

    @property
    def step_seconds(self) -> int:
        return COARSE_STEP if self.window_seconds >= COARSE_FROM_SECONDS else FINE_STEP


def parse_options(window: str, by: str, interval: float) -> TopOptions:
    """Check the flags before anything is started; raises UsageError with the fix."""
    try:
        window_seconds = parse_duration(window)
    except ValueError as exc:
        raise UsageError(f"bad --window: {exc}") from None
    if window_seconds <= 0:
        raise UsageError("bad --window: it must be at least one second")
    if by not in BY_CHOICES:
        raise UsageError(f"bad --by {by!r}: use one of {', '.join(BY_CHOICES)}")
    if not (interval > 0 and math.isfinite(interval)):
        raise UsageError("bad --interval: it must be a positive number of seconds")
    return TopOptions(window_seconds, tuple(by.split(",")), interval)


def top_request(options: TopOptions) -> QueryRequest:
    """The named query `top` with its parameters bound from the options (sketches on: we merge them)."""
    params = {
        "window_seconds": options.window_seconds,
        "step_seconds": options.step_seconds,
        "by_service": int("service" in options.by),
        "by_model": int("model" in options.by),
        "sketches": 1,
    }
    return build_request("top", params=[f"{k}={v}" for k, v in params.items()])


# ---- one snapshot -----------------------------------------------------------------------------------


@dataclass
class GroupRow:
    """One service/model group over the range; `sketch` is None when p95 had to fall back."""

    keys: dict[str, str]
    calls: int
    errors: int
    rate_limits: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    max_ms: float
    worst_p95_ms: float
    windows: int
    seconds: int
    sketch: LatencySketch | None = field(default=None, repr=False)

    @property
    def spans_per_second(self) -> float:
        return round(self.calls / self.seconds, 3) if self.seconds else 0.0

    @property
    def error_rate(self) -> float:
        return round(self.errors / self.calls, 4) if self.calls else 0.0

    @property
    def p95_source(self) -> str:
        return "sketch" if self.sketch is not None else "worst-window"

    @property
    def p95_ms(self) -> float:
        return round(self.sketch.quantile(0.95), 1) if self.sketch is not None else self.worst_p95_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.keys,
            "spans_per_second": self.spans_per_second,
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "rate_limits": self.rate_limits,
            "p95_ms": self.p95_ms,
            "p95_source": self.p95_source,
            "max_ms": self.max_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "windows": self.windows,
        }


@dataclass
class Snapshot:
    """What one refresh shows: the range, its age, the groups (busiest first) and their total."""

    database: str
    options: TopOptions
    groups: list[GroupRow]
    window_to: dt.datetime | None = None
    seconds: int = 0
    age_seconds: int | None = None
    # Tail sampling over the range's traces (the named query `sampling`): verdict -> fraction of traces,
    # e.g. {"dropped": 0.815, "error": 0.1, "rate": 0.085}; {"all": 1.0} with sampling off.
    sampling: dict[str, float] = field(default_factory=dict)

    @property
    def window_from(self) -> dt.datetime | None:
        return self.window_to - dt.timedelta(seconds=self.seconds) if self.window_to is not None else None

    @property
    def empty(self) -> bool:
        return not self.groups

    @functools.cached_property
    def total(self) -> GroupRow | None:
        return total_of(self.groups) if self.groups else None

    def as_dict(self) -> dict[str, Any]:
        total = self.total
        return {
            "database": self.database,
            "by": list(self.options.by),
            "window_seconds": self.options.window_seconds,
            "step_seconds": self.options.step_seconds,
            "from": jsonable(self.window_from),
            "to": jsonable(self.window_to),
            "seconds": self.seconds,
            "age_seconds": self.age_seconds,
            "groups": [g.as_dict() for g in self.groups],
            # without "windows": how many windows had any span is not the most any group had
            "total": {k: v for k, v in total.as_dict().items() if k != "windows"} if total else None,
            "message": NO_ROLLUPS.format(database=self.database) if self.empty else None,
            "sampling": self.sampling,
        }


def merged_sketch(encoded: Sequence[str]) -> LatencySketch | None:
    """The windows' sketches merged into one, or None when any is missing or unreadable (so that the
    group's p95 is never computed from part of its spans)."""
    merged = LatencySketch()
    try:
        for text in encoded:
            if not text:
                return None
            merged.merge(LatencySketch.from_bytes(base64.b64decode(text, validate=True)))
    except ValueError:  # binascii.Error is a ValueError; so is a foreign sketch version
        return None
    return merged


def group_row(row: dict[str, Any], by: Sequence[str]) -> GroupRow:
    """One row of the `top` query as a group, its sketches merged."""
    sketch = merged_sketch(row["latency_sketches"])
    if sketch is not None and sketch.count != row["calls"]:
        sketch = None  # a sketch that does not describe exactly the counted spans: do not trust its p95
    measures = {f.name: row[f.name] for f in fields(GroupRow) if f.name not in ("keys", "sketch")}
    return GroupRow(keys={key: row[key] for key in by}, sketch=sketch, **measures)


def total_of(groups: Sequence[GroupRow]) -> GroupRow:
    """All groups together: sums, the largest max, and the merged sketch when every group has one."""
    sketch: LatencySketch | None = LatencySketch()
    for group in groups:
        if group.sketch is None or sketch is None:
            sketch = None
        else:
            sketch.merge(group.sketch)
    sums = {name: sum(getattr(g, name) for g in groups) for name in SUM_FIELDS}
    return GroupRow(
        keys={},
        **sums,
        cost_usd=sum(g.cost_usd for g in groups),
        max_ms=max(g.max_ms for g in groups),
        worst_p95_ms=max(g.worst_p95_ms for g in groups),
        windows=max(g.windows for g in groups),  # at least this many; the JSON total leaves it out
        seconds=groups[0].seconds,
        sketch=sketch,
    )


def read_snapshot(client: Any, request: QueryRequest, options: TopOptions, database: str) -> Snapshot:
    """Run the `top` query once and shape its rows."""
    columns, rows = run(client, request)
    dicts = [dict(zip(columns, row, strict=True)) for row in rows]
    if not dicts:
        return Snapshot(database, options, [])
    first = dicts[0]
    return Snapshot(
        database,
        options,
        [group_row(row, options.by) for row in dicts],
        window_to=first["window_to"],
        seconds=first["seconds"],
        age_seconds=first["age_seconds"],
        sampling=read_sampling(client, options),
    )


def read_sampling(client: Any, options: TopOptions) -> dict[str, float]:
    """The fraction of the range's traces per sampling verdict (the named query `sampling`)."""
    request = build_request("sampling", params=[f"since_seconds={options.window_seconds}"])
    columns, rows = run(client, request)
    return {row["verdict"]: row["fraction"] for row in (dict(zip(columns, r, strict=True)) for r in rows)}


def sampling_line(sampling: dict[str, float]) -> str:
    """`sampling: kept 18.5 % (error 10.0 %, rate 8.5 %), dropped 81.5 %`; "" with sampling off."""
    if not sampling or set(sampling) == {"all"}:
        return ""
    kept = {verdict: f for verdict, f in sampling.items() if verdict != "dropped"}
    rules = ", ".join(f"{verdict} {f:.1%}" for verdict, f in kept.items())
    return f"sampling: kept {sum(kept.values()):.1%} ({rules}), dropped {sampling.get('dropped', 0.0):.1%} of traces"


# ---- the view --------------------------------------------------------------------------------------------


def ago(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit == "min" else 1):
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def utc_clock(value: dt.datetime | None) -> str:
    if value is None:
        return "?"
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.strftime("%H:%M:%S UTC")


def stale(snapshot: Snapshot) -> bool:
    """Older than three windows (plus the pipeline's few seconds): nothing new is arriving."""
    step = snapshot.options.step_seconds
    return snapshot.age_seconds is not None and snapshot.age_seconds > 3 * step + 10


def _error_style(rate: float) -> str:
    return "bold red" if rate >= 0.05 else "yellow" if rate >= 0.01 else ""


def _model_text(model: str) -> str:
    return model if model else "(none)"


def render(
    snapshot: Snapshot, *, interval: float | None = None, note: str = "", width: int | None = None
) -> RenderableType:
    """The table (busiest groups first, a total row last) under a header that says what range it is;
    `width` (the terminal's) drops the bar, then max latency and token columns, so a row stays one line."""
    options = snapshot.options
    parts: list[RenderableType] = []
    if snapshot.empty:
        parts.append(Text(NO_ROLLUPS.format(database=snapshot.database), style="yellow"))
    else:
        header = (
            f"tracehouse top · {snapshot.database} · last {snapshot.seconds} s "
            f"({snapshot.seconds // options.step_seconds} × {options.step_seconds} s windows) "
            f"to {utc_clock(snapshot.window_to)}, {ago(snapshot.age_seconds)} ago"
        )
        if interval is not None:
            header += f" · refresh {interval:g} s · Ctrl-C quits"
        parts.append(Text(header, style="bold"))
        if stale(snapshot):
            parts.append(
                Text(
                    f"No newer rollups for {ago(snapshot.age_seconds)}: no spans since then, or no worker running.",
                    style="yellow",
                )
            )
        parts.append(group_table(snapshot, width))
        line = sampling_line(snapshot.sampling)
        if line:
            parts.append(Text(line, style="dim"))
    if note:
        parts.append(Text(note, style="red" if note.startswith("refresh failed") else "dim"))
    return Group(*parts)


NARROW_COLUMNS = 120  # below this many terminal columns, the bar, max ms and token columns are left out


def group_table(snapshot: Snapshot, width: int | None = None) -> Table:
    """Busiest groups first, the total last; numbers are never cut, names give way with an ellipsis."""
    options = snapshot.options
    wide = width is None or width >= NARROW_COLUMNS
    busiest = max(g.spans_per_second for g in snapshot.groups) or 1.0
    groups = [*snapshot.groups]
    total = snapshot.total
    shown = [*groups, total] if total is not None and len(groups) > 1 else groups
    extra = ("max ms", "tokens in", "tokens out") if wide else ()
    headers = ["spans/s", "spans", "errors", "err %", "p95 ms", *extra, "cost $"]
    rows: list[tuple[list[str], list[Text | str], RenderableType, bool]] = []
    for i, group in enumerate(shown):
        is_total = i == len(groups)
        keys = (
            ["total", *([""] * (len(options.by) - 1))]
            if is_total
            else [_model_text(group.keys[k]) if k == "model" else group.keys[k] for k in options.by]
        )
        bar: RenderableType = "" if is_total else Bar(busiest, 0, group.spans_per_second, width=12, color="cyan")
        p95 = ("" if group.sketch is not None else "≤") + f"{group.p95_ms:,.{1 if wide else 0}f}"  # ≤: upper bound
        numbers: list[Text | str] = [
            f"{group.spans_per_second:,.2f}",
            f"{group.calls:,}",
            f"{group.errors:,}",
            Text(f"{group.error_rate * 100:.1f}", style=_error_style(group.error_rate)),
            p95,
            *([f"{group.max_ms:,.1f}", f"{group.input_tokens:,}", f"{group.output_tokens:,}"] if wide else []),
            f"{group.cost_usd:,.4f}",
        ]
        rows.append((keys, numbers, bar, is_total))
    naturals = [
        max([len(header)] + [len(str(numbers[j])) for _, numbers, _, _ in rows]) for j, header in enumerate(headers)
    ]
    # the names get what the numbers leave (2 cells between columns), each at most 40, at least 6
    room = (
        (width or 10_000)
        - sum(naturals)
        - (12 if wide else 0)
        - 2 * (len(headers) + len(options.by) - (0 if wide else 1))
    )
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for k, key in enumerate(options.by):
        natural = max([len(key)] + [len(keys[k]) for keys, _, _, _ in rows])
        share = max(6, min(natural, 40, room // len(options.by)))
        table.add_column(key, no_wrap=True, overflow="ellipsis", width=share)
    for j, header in enumerate(headers):
        table.add_column(header, no_wrap=True, justify="right", min_width=naturals[j])
        if j == 0 and wide:
            table.add_column("", width=12, no_wrap=True)  # the share of the busiest group, as a bar
    for i, (keys, numbers, bar, is_total) in enumerate(rows):
        cells = [*keys, numbers[0], *([bar] if wide else []), *numbers[1:]]
        table.add_row(*cells, style="bold" if is_total else None, end_section=i == len(groups) - 1)
    return table


# ---- the command ------------------------------------------------------------------------------------


def failure_line(exc: Exception, url: str, max_chars: int = 240) -> str:
    """A failed refresh in one short line: the driver's text for a refused connection is a URL with
    every setting in it, which says less than "does not answer"."""
    text = str(exc)
    if "Connection refused" in text or "Failed to establish a new connection" in text:
        return f"ClickHouse at {url} does not answer"
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def live(
    console: Console,
    fetch: Callable[[], Snapshot],
    first: Snapshot,
    interval: float,
    *,
    url: str = "",
    note: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Refresh the view every `interval` seconds (measured from the previous start, so a slow read does
    not drift the cadence) until Ctrl-C; a failed read keeps the last table and says why. The driver's
    own warnings are held back meanwhile: the view reports each failure, and log lines written past
    rich would tear the table."""
    from rich.live import Live

    loggers = [logging.getLogger(name) for name in QUIET_WHILE_LIVE]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(log.level, logging.ERROR))
    snapshot = first
    try:
        with Live(
            render(snapshot, interval=interval, note=note, width=console.width), console=console, auto_refresh=False
        ) as view:
            next_at = clock() + interval
            while True:
                time.sleep(max(next_at - clock(), 0.0))
                next_at = max(next_at + interval, clock())
                try:
                    snapshot = fetch()
                    shown = note
                except ReadError as exc:
                    shown = f"refresh failed (retrying every {interval:g} s): {failure_line(exc, url)}"
                view.update(render(snapshot, interval=interval, note=shown, width=console.width), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return 0


def show_top(
    settings: Settings,
    options: TopOptions,
    *,
    once: bool = False,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Read the rollups once (`--once`, `--json`) or until Ctrl-C, with the embedded server started for
    this command when nothing answers at the URL."""
    from tracehouse.cli.reading import clickhouse_for_reading
    from tracehouse.infra.clickhouse.launcher import clickhouse_answers

    request = top_request(options)
    database = settings.clickhouse.database
    note = ""
    if not (once or as_json) and not clickhouse_answers(settings.clickhouse_url):
        note = (
            f"ClickHouse was not running: serving the local data ({settings.clickhouse_data_dir}) for this view "
            "only, and no pipeline is writing to it."
        )
    try:
        with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:

            def fetch() -> Snapshot:
                with clickhouse_errors(settings):
                    return read_snapshot(client, request, options, database)

            first = fetch()
            if as_json:
                emit_json(first.as_dict())
                return 0
            console = console or make_console()
            if once:
                console.print(render(first, width=console.width))
                return 0
            return live(console, fetch, first, options.interval, url=settings.clickhouse.url, note=note)
    except KeyboardInterrupt:  # Ctrl-C while starting or stopping: the user is done, not failing
        return 0


def main_top(settings: Settings, args: Any) -> int:
    """`tracehouse top` from its parsed arguments."""

    def go() -> int:
        options = parse_options(args.window, args.by, args.interval)
        return show_top(settings, options, once=args.once, as_json=args.json)

    return guarded(go)
