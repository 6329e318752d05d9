"""`tracehouse query NAME`: run one named query from tracehouse.read.queries and print its answer.

The SQL lives in files users can read and copy (`--list` shows where, `--sql` prints one); the command only
binds parameters, so nothing typed on the command line is ever formatted into SQL text. Everything is
checked before ClickHouse is reached, so a typo gets a clear message instead of starting the embedded
server. `--json` / `--jsonl` give scripts the rows as objects, one array or one object per line.

The output helpers here (`print_table`, `emit_json`, `UsageError`, `clickhouse_errors`) are shared by
the other reading commands (`trace`, `alerts`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tracehouse.core.config import Settings
from tracehouse.read import queries as named
from tracehouse.read.queries import QUERIES, NamedQuery
from tracehouse.read.times import duration_text, parse_duration

# Flags that map onto the parameters queries commonly take; anything else goes through `-p NAME=VALUE`.
FLAG_PARAMS = {"since": "since_seconds", "limit": "limit", "trace": "trace_id", "by": "by"}
BY_CHOICES = ("model", "service", "kind", "name")
ID_COLUMNS = ("trace_id", "span_id")
PIPE_WIDTH = 200


class UsageError(Exception):
    """A mistake on the command line: printed as it is, exit status 2, no traceback."""


class ReadError(Exception):
    """ClickHouse could not answer (down, no schema, bad value): printed as it is, exit status 1."""


# ---- the queries and their files ------------------------------------------------------------------


def query_files() -> dict[str, Path]:
    """Query name -> the .sql file it comes from (the file users copy, e.g. into Grafana)."""
    return {name: Path(str(entry)) for name, entry in named.query_files().items()}


def resolve(name: str) -> NamedQuery:
    query = QUERIES.get(name)
    if query is None:
        valid = ", ".join(sorted(QUERIES))
        raise UsageError(f"no query named {name!r}; valid names: {valid} (details: tracehouse query --list)")
    return query


def describe_params(query: NamedQuery) -> str:
    """How to set each parameter from the command line, with its default."""
    parts = []
    for param in query.params:
        default = param.default
        if param.name == "since_seconds":
            parts.append(f"--since DURATION (default {duration_text(int(default))})")
        elif param.name == "limit":
            parts.append(f"--limit N (default {default})")
        elif param.name == "trace_id":
            parts.append("--trace ID" + ("" if default in ("''", "") else f" (default {default})"))
        elif param.name == "by":
            parts.append(f"--by {'|'.join(BY_CHOICES)} (default {default.strip(chr(39))})")
        else:
            parts.append(f"-p {param.name}={param.type} (default {default})")
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class QueryRequest:
    """What to run: a query and its parameter values as given (validated, not yet bound)."""

    query: NamedQuery
    values: dict[str, Any]


def build_request(
    name: str,
    *,
    since: str | None = None,
    limit: int | None = None,
    trace: str | None = None,
    by: str | None = None,
    params: Sequence[str] = (),
) -> QueryRequest:
    """Check the flags against what the query takes and parse their values; raises UsageError."""
    query = resolve(name)
    takes = {p.name: p for p in query.params}
    values: dict[str, Any] = {}
    for flag, value in (("since", since), ("limit", limit), ("trace", trace), ("by", by)):
        if value is None:
            continue
        param = FLAG_PARAMS[flag]
        if param not in takes:
            raise UsageError(f"query {name!r} does not take --{flag}; it takes: {describe_params(query)}")
        values[param] = value
    for item in params:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"-p wants NAME=VALUE, got {item!r}")
        if key == "since":
            key = "since_seconds"
        if key not in takes:
            raise UsageError(f"query {name!r} has no parameter {key!r}; it takes: {describe_params(query)}")
        values[key] = value
    if "since_seconds" in values:
        try:
            values["since_seconds"] = parse_duration(str(values["since_seconds"]))
        except ValueError as exc:
            raise UsageError(f"bad --since: {exc}") from None
    for key, value in values.items():
        param = takes[key]
        try:
            converted = param.convert(value)
        except ValueError:
            raise UsageError(f"bad value for {key}: {value!r} is not a {param.type}") from None
        if param.type.startswith("UInt") and converted < 0:
            raise UsageError(f"bad value for {key}: {value!r} must not be negative")
        values[key] = converted
    return QueryRequest(query, values)


# ---- output -----------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A value from clickhouse-connect as JSON: naive datetimes are UTC, NaN is null, tuples are lists."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return str(value)


def records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{c: jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def emit_json(data: Any, *, lines: bool = False, out: Any = None) -> None:
    """Print JSON for scripts: one document, or (lines=True, for a list) one object per line."""
    out = out or sys.stdout
    if lines and isinstance(data, list):
        for item in data:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    else:
        out.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def cell(value: Any, max_chars: int = 200) -> str:
    """One value as table text: compact, with long payloads cut (the JSON output has them whole)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(jsonable(value), ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _numeric(rows: Sequence[Sequence[Any]], index: int) -> bool:
    seen = [row[index] for row in rows if row[index] is not None]
    return bool(seen) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen)


def _datetimes(rows: Sequence[Sequence[Any]], index: int) -> bool:
    seen = [row[index] for row in rows if row[index] is not None]
    return bool(seen) and all(isinstance(v, dt.datetime) for v in seen)


ID_PREFIX = 12  # hex digits of an id shown in a table: unique in practice, and `tracehouse trace` takes it


def short_id(value: str) -> str:
    """An id as a table shows it: a prefix (`tracehouse trace PREFIX` finds the trace; `--json` has it whole)."""
    return value if len(value) <= ID_PREFIX + 1 else value[:ID_PREFIX] + "…"


def print_table(
    console: Console,
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    caption: str | None = None,
) -> None:
    """Rows as a table that fits the terminal: one line per row, ids cut to a prefix, numbers whole, text
    cells cut with an ellipsis (never folded mid-word); `--json` has every value whole."""
    narrow = console.width < 120
    ids = [column.endswith(ID_COLUMNS) for column in columns]
    texts = [[_table_text(v, ids[i], narrow) for i, v in enumerate(row)] for row in rows]
    fixed = [ids[i] or _numeric(rows, i) or _datetimes(rows, i) for i in range(len(columns))]
    widths = _fit_widths(console.width, columns, texts, fixed)
    table = Table(
        title=title, title_justify="left", title_style="bold", caption=caption, caption_justify="left",
        box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold",
    )  # fmt: skip
    for i, column in enumerate(columns):
        justify = "right" if _numeric(rows, i) else "left"
        table.add_column(column, justify=justify, no_wrap=True, overflow="ellipsis", width=widths[i])
    for row in texts:
        table.add_row(*row)
    console.print(table)


def _table_text(value: Any, is_id: bool, narrow: bool) -> str:
    if is_id and isinstance(value, str) and value:
        return short_id(value)
    if narrow and isinstance(value, dt.datetime):
        return value.strftime("%m-%d %H:%M:%S")
    return " ".join(cell(value).split())


def _fit_widths(width: int, columns: Sequence[str], texts: list[list[str]], fixed: list[bool]) -> list[int]:
    """Column widths that fit `width`: ids, numbers and times keep their content's width; text columns
    share what is left (at least 6 cells each); headers longer than their content are cut first."""
    n = len(columns)
    content = [max((len(row[i]) for row in texts), default=0) for i in range(n)]
    natural = [min(max(len(columns[i]), content[i], 1), 60) for i in range(n)]
    room = width - 2 * (n - 1)
    if sum(natural) <= room:
        return natural
    widths = [max(content[i], 4) if fixed[i] else natural[i] for i in range(n)]
    flexible = [i for i in range(n) if not fixed[i]]
    excess = sum(widths) - room
    while excess > 0 and flexible:
        widest = max(flexible, key=lambda i: widths[i])
        if widths[widest] <= 6:
            break
        cut = min(
            excess, max(1, widths[widest] - max(6, sorted(widths[i] for i in flexible)[-2] if len(flexible) > 1 else 6))
        )
        widths[widest] -= cut
        excess -= cut
    return widths


def make_console() -> Console:
    """The terminal's console; when output goes to a pipe or file, a wide one (rich would assume 80
    columns and fold every cell), unless COLUMNS says otherwise."""
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPE_WIDTH)
    return console


@contextlib.contextmanager
def clickhouse_errors(settings: Settings) -> Iterator[None]:
    """Turn driver exceptions into one readable line (with the likely fix) instead of a traceback."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        yield
    except ClickHouseError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        server_said = re.search(r"DB::Exception: (.*?)(?: \(version [^)]*\))?(?: \(for url [^)]*\))?$", text)
        if server_said:  # the server's own sentence, without the driver's wrapping around it
            text = server_said.group(1)
        target = settings.clickhouse
        hint = ""
        if "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc) or "doesn't exist" in str(exc):
            hint = " (is the schema there? run: tracehouse migrate)"
        raise ReadError(f"ClickHouse at {target.url}, database {target.database}: {text}{hint}") from None


# ---- the command ------------------------------------------------------------------------------------


def print_list(console: Console) -> None:
    files = query_files()
    table = Table(title="Named queries (tracehouse query NAME)", title_justify="left", title_style="bold")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("description", overflow="fold", ratio=3)
    table.add_column("parameters", overflow="fold", ratio=2)
    table.add_column("SQL file", overflow="fold", ratio=2)
    for name in sorted(QUERIES):
        query = QUERIES[name]
        table.add_row(name, query.description, describe_params(query), str(files.get(name, "")))
    console.print(table)


def print_sql(name: str) -> None:
    """The query's file as it is (header comments included), ready to paste into any ClickHouse client."""
    resolve(name)
    sys.stdout.write(query_files()[name].read_text(encoding="utf-8"))


def run(client: Any, request: QueryRequest) -> tuple[list[str], list[Sequence[Any]]]:
    result = named.run_query(client, request.query, request.values)
    return list(result.column_names), list(result.result_rows)


def run_query_command(settings: Settings, request: QueryRequest, *, output: str = "table") -> int:
    """Run a checked request and print its answer as a table, a JSON array ("json") or JSON lines."""
    from tracehouse.cli.reading import clickhouse_for_reading

    with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:
        columns, rows = run(client, request)
    if output == "table":
        caption = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
        print_table(make_console(), request.query.name, columns, rows, caption=caption)
    else:
        emit_json(records(columns, rows), lines=output == "jsonl")
    return 0


def output_of(args: Any) -> str:
    return "jsonl" if getattr(args, "jsonl", False) else "json" if getattr(args, "json", False) else "table"


def guarded(func: Any, *args: Any, **kwargs: Any) -> int:
    """Run a reading command: usage mistakes exit 2 and ClickHouse failures exit 1, each with one line
    on stderr (stdout stays clean for `--json` consumers)."""
    try:
        return int(func(*args, **kwargs) or 0)
    except BrokenPipeError:  # `tracehouse query ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        print(f"tracehouse: {exc}", file=sys.stderr)
        return 2
    except ReadError as exc:
        print(f"tracehouse: {exc}", file=sys.stderr)
        return 1


def main_query(settings: Settings, args: Any) -> int:
    """`tracehouse query` from its parsed arguments."""

    def go() -> int:
        if args.list or not args.name:
            print_list(make_console())
            return 0 if args.list else 2
        if args.sql:
            print_sql(args.name)
            return 0
        request = build_request(
            args.name, since=args.since, limit=args.limit, trace=args.trace, by=args.by, params=args.param or ()
        )
        return run_query_command(settings, request, output=output_of(args))

    return guarded(go)
