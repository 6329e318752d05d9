"""`tracehouse trace ID`: one trace as a span tree with a timeline, then what the six questions need.

Two named queries feed it, both bound to the trace id and both narrowed to the trace's days by the
`trace_id_ts` lookup table: `trace` (every span's tree and timing columns) and `trace-details` (LLM
parameters, prompt template and variables, retrieved documents, exception events; only for the spans
that carry any). The tree comes from tracehouse.sinks.trace_tree (shared with the web explorer, so both
agree): built iteratively, so a trace of thousands of spans or a deep chain of agent steps renders without
recursion limits. Spans whose parent is not in the trace are kept and shown at the root level marked
"(orphan)": late and orphan spans are data, not noise. A parent loop, which only a broken producer makes,
is cut and shown the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracehouse.cli.query import (
    ReadError,
    UsageError,
    _fit_widths,
    clickhouse_errors,
    emit_json,
    guarded,
    jsonable,
    make_console,
)
from tracehouse.core.config import Settings
from tracehouse.core.prompt_identity import first_line
from tracehouse.sinks.queries import QUERIES, run_query
from tracehouse.sinks.trace_tree import SpanNode, TraceTree, build_tree, node_from_row

KIND_COLORS = {
    "LLM": "magenta",
    "RETRIEVER": "cyan",
    "RERANKER": "bright_cyan",
    "EMBEDDING": "blue",
    "TOOL": "yellow",
    "AGENT": "green",
    "CHAIN": "green",
    "GUARDRAIL": "bright_yellow",
    "EVALUATOR": "bright_blue",
    "PROMPT": "bright_magenta",
}
_EIGHTHS = " ▏▎▍▌▋▊▉█"  # left-aligned partial blocks, 0/8 .. 8/8 of a cell
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_PREFIX = re.compile(r"^[0-9a-f]{6,31}$")
STACK_LINES = 4


def load_trace(client: Any, trace_id: str) -> TraceTree | None:
    """The trace's tree with each span's details attached, or None when no span has this trace id."""
    result = run_query(client, QUERIES["trace"], {"trace_id": trace_id})
    columns = result.column_names
    nodes = [node_from_row(dict(zip(columns, row, strict=True))) for row in result.result_rows]
    if not nodes:
        return None
    tree = build_tree(trace_id, nodes)
    details = run_query(client, QUERIES["trace-details"], {"trace_id": trace_id})
    by_id = {n.span_id: n for n in tree.spans}
    for row in details.result_rows:
        record = dict(zip(details.column_names, row, strict=True))
        node = by_id.get(record["span_id"])
        if node is not None:
            node.details = record
    return tree


def trace_scores(client: Any, trace_id: str) -> list[dict[str, Any]]:
    """The trace's scores per name and source (count, average, latest), from the named query `scores`."""
    result = run_query(client, QUERIES["scores"], {"trace_id": trace_id, "since": "36500d", "limit": 1000})
    return [jsonable(dict(zip(result.column_names, row, strict=True))) for row in result.result_rows]


def resolve_prefix(client: Any, prefix: str) -> str:
    """The one trace id starting with `prefix` (tables show ids cut to a prefix), else the prefix itself."""
    rows = client.query(
        "SELECT DISTINCT trace_id FROM trace_id_ts WHERE startsWith(trace_id, {p:String}) LIMIT 2",
        parameters={"p": prefix},
    ).result_rows
    if len(rows) > 1:
        raise UsageError(f"trace id prefix {prefix} is ambiguous: give more digits")
    return rows[0][0] if rows else prefix


# ---- formatting -------------------------------------------------------------------------------------


def fmt_duration(ns: int) -> str:
    if ns == 0:
        return "0"
    ms = ns / 1e6
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 60_000:.1f} min"


def fmt_cost(usd: float) -> str:
    if not usd:
        return ""
    return f"${usd:.4f}" if usd >= 0.0001 else "<$0.0001"


def fmt_time(ns: int) -> str:
    moment = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def time_bar(start_ns: int, end_ns: int, t0: int, total_ns: int, width: int, style: str) -> Text:
    """The span's place on the trace's timeline: `width` cells of full and eighth blocks on a dim track.

    The end is drawn to an eighth of a cell, so short spans late in a long trace stay visible and two
    spans that end close together can still be told apart; a span shorter than a cell is a thin mark.
    """
    total = max(total_ns, 1)
    left = min(max((start_ns - t0) / total * width, 0.0), float(width))
    right = min(max((end_ns - t0) / total * width, left), float(width))
    cells: list[tuple[str, str]] = []
    for i in range(width):
        cover = min(right, i + 1) - max(left, i)
        if cover >= 0.999:
            cells.append(("█", style))
        elif cover > 0 and left > i and right < i + 1:  # starts and ends inside this cell
            cells.append(("▏" if left - i < 0.5 else "▕", style))
        elif cover > 0 and left > i:  # starts inside this cell: its right part
            cells.append(("▐" if cover >= 0.5 else "▕", style))
        elif cover > 0:  # ends inside this cell: its left part, to the eighth
            cells.append((_EIGHTHS[max(1, round(cover * 8))], style))
        else:
            cells.append(("·", "grey30"))
    if right - left < 1 / 8:  # shorter than an eighth of a cell: a mark where it happens
        pos = min(int(left), width - 1)
        cells[pos] = ("▏" if left - pos < 0.5 else "▕", style)
    text = Text()
    for char, char_style in cells:
        text.append(char, style=char_style)
    return text


def _name_cell(node: SpanNode) -> Text:
    text = Text(node.guides, style="grey50")
    text.append(node.name, style="bold red" if node.is_error else "bold" if node.depth == 0 else "")
    if node.orphan:
        text.append(" (orphan)", style="yellow")
    return text


def _status_cell(node: SpanNode) -> Text:
    """The error's class (the Exceptions table below has the message and stack)."""
    if not node.is_error:
        return Text("")
    return Text(node.error_type or node.status_message or "error", style="red")


def _fit(text: Text, width: int, right: bool = False) -> Text:
    """`text` cut (with an ellipsis) or padded to exactly `width` cells."""
    text = text.copy()
    if text.cell_len > width:
        text.truncate(width, overflow="ellipsis")
    pad = width - text.cell_len
    if pad > 0:
        if right:
            text = Text(" " * pad) + text
        else:
            text.append(" " * pad)
    return text


def waterfall(tree: TraceTree, width: int) -> list[Text]:
    """The span tree as one line per span, its columns sized to the content and the screen width.

    Lines of Text rather than a rich Table: a table measures and wraps every cell, which takes seconds
    for a trace of a thousand spans; these lines cost one pass. A line never wraps: what does not fit is
    cut with an ellipsis (the JSON output has everything).
    """
    t0, total = tree.start_ns, tree.duration_ns
    rows = []
    for node in tree.spans:
        color = "red" if node.is_error else KIND_COLORS.get(node.kind, "white")
        rows.append(
            (
                node,
                color,
                [
                    _name_cell(node),
                    Text(node.kind, style=color),
                    None,  # the bar, drawn once its width is known
                    Text(f"+{fmt_duration(node.start_ns - t0)}" if node.start_ns > t0 else "0"),
                    Text(fmt_duration(node.duration_ns), style="red" if node.is_error else ""),
                    Text(node.model),
                    Text(f"{node.total_tokens:,}" if node.total_tokens else ""),
                    Text(fmt_cost(node.cost_usd)),
                    _status_cell(node),
                ],
            )
        )
    headers = ["span", "kind", f"0 ─ {fmt_duration(total)}", "start", "duration", "model", "tokens", "cost", "error"]
    right = {3, 4, 6, 7}
    natural = [len(h) for h in headers]
    for _, _, cells in rows:
        for i, cell in enumerate(cells):
            if cell is not None and cell.cell_len > natural[i]:
                natural[i] = cell.cell_len
    caps = {0: 64, 5: 28}
    widths = [min(n, caps.get(i, n)) for i, n in enumerate(natural)]
    widths[2] = max(16, min(60, width // 4))
    # shrink to the screen: the bar, then the name, then the model, down to their minimums
    fixed = sum(widths[:8]) + 2 * 8
    for index, minimum in ((2, 16), (0, 24), (5, 12)):
        excess = fixed + 12 - width
        if excess > 0:
            cut = min(excess, widths[index] - minimum)
            if cut > 0:
                widths[index] -= cut
                fixed -= cut
    widths[8] = max(12, width - fixed)
    sep = Text("  ")

    def line(cells: Sequence[Text]) -> Text:
        text = sep.join(_fit(cell, w, i in right) for i, (cell, w) in enumerate(zip(cells, widths, strict=True)))
        text.rstrip()
        return text

    lines = [line([Text(h, style="bold") for h in headers])]
    for node, color, cells in rows:
        cells[2] = time_bar(node.start_ns, node.end_ns, t0, total, widths[2], color)
        lines.append(line(cells))
    return lines


def _summary(tree: TraceTree) -> Text:
    root = tree.roots[0]
    text = Text()
    text.append("trace ", style="bold")
    text.append(tree.trace_id, style="bold cyan")
    parts = [
        f"{root.name} · {root.service}",
        fmt_time(tree.start_ns),
        fmt_duration(tree.duration_ns),
        f"{len(tree.spans)} spans",
    ]
    text.append("  " + "  ·  ".join(parts))
    errors = tree.error_count
    text.append("  ·  ")
    text.append(f"{errors} error{'s' if errors != 1 else ''}", style="bold red" if errors else "green")
    if tree.total_tokens:
        text.append(f"  ·  {tree.total_tokens:,} tokens")
    if tree.cost_usd:
        text.append(f"  ·  {fmt_cost(tree.cost_usd)}")
    if tree.orphan_count:
        text.append(
            f"\n{tree.orphan_count} orphan span(s): their parent is not in this trace (yet); shown at the root level",
            style="yellow",
        )
    return text


class DetailTable:
    """One of the tables under the waterfall, sized when printed: every cell one line (cut with an
    ellipsis) except a stack's first lines, short columns (times, scores, parameters) whole."""

    FIXED = frozenset({"at", "kind", "position", "score", "temperature", "max_tokens", "top_p", "cost", "version"})

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        self.title = title
        self.columns = list(columns)
        self.caption: str | None = None
        self.rows: list[tuple[Text | str, ...]] = []

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def add_row(self, *cells: Text | str) -> None:
        self.rows.append(cells)

    def build(self, width: int) -> Table:
        def widest_line(value: Text | str) -> str:
            plain = value.plain if isinstance(value, Text) else value
            return max(plain.splitlines() or [""], key=len)

        texts = [[widest_line(c) for c in row] for row in self.rows]
        fixed = [c in self.FIXED or c.startswith("in (") for c in self.columns]
        widths = _fit_widths(width, self.columns, texts, fixed)
        table = Table(
            title=self.title, title_justify="left", title_style="bold", caption=self.caption,
            caption_justify="left", box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold",
        )  # fmt: skip
        for column, column_width in zip(self.columns, widths, strict=True):
            multiline = column.startswith("stack")  # a stack's first lines; every other cell is one line
            table.add_column(
                column, overflow="ellipsis", no_wrap=True, width=column_width,
                justify="right" if column in ("at", "score", "position", "cost") else "left",
            )  # fmt: skip
            if multiline:
                table.columns[-1].no_wrap = False
        for row in self.rows:
            table.add_row(*row)
        return table


def _detail_table(title: str, columns: Sequence[str]) -> DetailTable:
    return DetailTable(title, columns)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _opt(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _no_exception(node: SpanNode) -> str:
    return node.status_message or "status ERROR, no exception recorded (often: a child failed)"


def _error_row(table: Table, node: SpanNode, offset_ns: int, kind: str, message: str, stack: str) -> None:
    table.add_row(Text(node.name, style="red"), f"+{fmt_duration(offset_ns)}", kind, Text(message, style="red"), stack)


def detail_tables(tree: TraceTree) -> list[DetailTable]:
    """LLM parameters, prompt templates, retrieved documents and exceptions, each only when present."""
    t0 = tree.start_ns
    system_prompts = {d["system_prompt"] for n in tree.spans if (d := n.details) is not None and n.kind == "LLM"}
    shared_prompt = len(system_prompts) == 1  # one prompt for every call: said once, under the table
    llm = _detail_table(
        "LLM calls: parameters and tokens",
        ["span", "model", "temperature", "max_tokens", "top_p", "in (cached) / out (reasoning)", "cost",
         "finish", *([] if shared_prompt else ["system prompt"])],
    )  # fmt: skip
    if shared_prompt and (prompt := next(iter(system_prompts))):
        llm.caption = f"system prompt of every call: {_short(prompt, 300)}"
    prompts = _detail_table("Prompt templates", ["span", "template", "version", "variables"])
    docs = _detail_table("Retrieved documents", ["span", "kind", "position", "score", "document", "content"])
    errors = _detail_table("Exceptions", ["span", "at", "type", "message", "stack (first lines)"])
    for node in tree.spans:
        d = node.details
        if d is None:
            if node.is_error:
                _error_row(errors, node, node.end_ns - t0, node.error_type, _no_exception(node), "")
            continue
        if node.kind == "LLM":
            model = d["model"] + (f" ({d['provider']})" if d["provider"] else "")
            tokens = (
                f"{d['input_tokens']:,} ({d['cached_tokens']:,}) / {d['output_tokens']:,} ({d['reasoning_tokens']:,})"
            )
            llm.add_row(
                node.name, model, _opt(d["temperature"]), _opt(d["max_tokens"]), _opt(d["top_p"]), tokens,
                fmt_cost(d["cost_usd"]), d["finish_reason"],
                *([] if shared_prompt else [_short(d["system_prompt"], 80)]),
            )  # fmt: skip
        if d["prompt_template"] or d["prompt_text"]:
            variables = "; ".join(f"{k}={_short(v, 60)}" for k, v in d["prompt_variables"].items())
            label = d["prompt_template"] or f"{d['prompt_key']} {first_line(d['prompt_text'])}"
            prompts.add_row(node.name, label, d["prompt_version"], variables)
        for doc in d["documents"]:
            score = "" if doc["score"] is None else f"{doc['score']:.4f}"
            docs.add_row(node.name, node.kind, str(doc["position"]), score, doc["id"], _short(doc["content"], 60))
        for exc in d["exceptions"]:
            stack = "\n".join(exc["stacktrace"].splitlines()[:STACK_LINES])
            _error_row(errors, node, exc["time_ns"] - t0, exc["type"], exc["message"], stack)
        if node.is_error and not d["exceptions"]:
            _error_row(errors, node, node.end_ns - t0, node.error_type, _no_exception(node), "")
    return [t for t in (llm, prompts, docs, errors) if t.row_count]


def render_trace(tree: TraceTree, console: Console) -> None:
    console.print(_summary(tree))
    for line in waterfall(tree, console.width):
        console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
    for table in detail_tables(tree):
        console.print()
        console.print(table.build(console.width))


def trace_json(tree: TraceTree) -> dict[str, Any]:
    """The trace for scripts: summary, then spans in display order with depth, orphan flag and details."""
    t0 = tree.start_ns
    spans = []
    for node in tree.spans:
        item: dict[str, Any] = {
            "span_id": node.span_id,
            "parent_span_id": node.parent_span_id,
            "depth": node.depth,
            "orphan": node.orphan,
            "name": node.name,
            "kind": node.kind,
            "service": node.service,
            "start_ns": node.start_ns,
            "offset_ns": node.start_ns - t0,
            "duration_ns": node.duration_ns,
            "status": node.status,
            "status_message": node.status_message,
            "error_type": node.error_type,
            "model": node.model,
            "total_tokens": node.total_tokens,
            "cost_usd": node.cost_usd,
            "children": [c.span_id for c in node.children],
        }
        d = node.details
        if d is not None:
            if node.kind == "LLM" or d["model"]:
                item["llm"] = {
                    k: jsonable(d[k])
                    for k in ("provider", "model", "temperature", "max_tokens", "top_p", "system_prompt",
                              "finish_reason", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
                              "cost_source")
                }  # fmt: skip
            if d["prompt_template"] or d["prompt_text"]:
                item["prompt"] = {
                    "template": d["prompt_key"],
                    "version": d["prompt_version"],
                    "variables": jsonable(d["prompt_variables"]),
                }
            if d["documents"]:
                item["documents"] = jsonable(d["documents"])
            if d["exceptions"]:
                item["exceptions"] = jsonable(d["exceptions"])
        spans.append(item)
    root = tree.roots[0]
    return {
        "trace_id": tree.trace_id,
        "root_name": root.name,
        "service": root.service,
        "start_ns": t0,
        "start_time": fmt_time(t0),
        "duration_ns": tree.duration_ns,
        "span_count": len(tree.spans),
        "error_count": tree.error_count,
        "orphan_count": tree.orphan_count,
        "total_tokens": tree.total_tokens,
        "cost_usd": tree.cost_usd,
        "spans": spans,
    }


# ---- the command ------------------------------------------------------------------------------------


def show_trace(settings: Settings, trace_id: str, *, as_json: bool = False, console: Console | None = None) -> int:
    from tracehouse.cli.reading import clickhouse_for_reading

    trace_id = trace_id.strip().rstrip("…").lower()
    if not trace_id:
        raise UsageError("give a trace id")
    with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:
        if _PREFIX.match(trace_id):  # the prefix a table shows
            trace_id = resolve_prefix(client, trace_id)
        tree = load_trace(client, trace_id)
        scores = trace_scores(client, trace_id) if as_json and tree is not None else []
    if tree is None:
        target = settings.clickhouse
        hint = "" if _TRACE_ID.match(trace_id) else " (trace ids are 32 hex digits)"
        raise ReadError(
            f"trace {trace_id} not found in database {target.database} at {target.url}{hint}; "
            "recent trace ids: tracehouse query slowest-calls"
        )
    if as_json:
        emit_json({**trace_json(tree), "scores": scores})
    else:
        render_trace(tree, console or make_console())
    return 0


def main_trace(settings: Settings, args: Any) -> int:
    """`tracehouse trace ID` from its parsed arguments: exit 1 when the trace is not there."""
    return guarded(show_trace, settings, args.trace_id, as_json=args.json)
