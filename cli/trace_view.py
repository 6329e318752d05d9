"""`tracehouse trace ID`: one trace as a span tree with a timeline, then what the six questions need.

This module only renders: the trace is the read side's `TraceView` (tracehouse.read.traces, the same
queries and the same Struct as the web API's `GET /api/traces/{id}`), so `--json` prints exactly the API's
answer and the terminal and the browser cannot disagree about depth, order, orphans, totals or scores.
Spans whose parent is not in the trace are shown at the root level marked "(orphan)": late and orphan
spans are data, not noise. A parent loop, which only a broken producer makes, is cut and shown the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import msgspec
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
    make_console,
)
from tracehouse.core.config import Settings
from tracehouse.core.prompt_identity import PREFIX, first_line
from tracehouse.read.models import LatestScore, TraceView, TreeSpan
from tracehouse.read.traces import load_trace, trace_ids_starting
from tracehouse.read.tree import guides

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


def resolve_prefix(client: Any, prefix: str) -> str:
    """The one trace id starting with `prefix` (tables show ids cut to a prefix), else the prefix itself."""
    found = trace_ids_starting(client, prefix)
    if len(found) > 1:
        raise UsageError(f"trace id prefix {prefix} is ambiguous: give more digits")
    return found[0] if found else prefix


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


def is_error(span: TreeSpan) -> bool:
    return span.status == "ERROR"


def end_offset(span: TreeSpan) -> int:
    return span.offset_ns + max(span.duration_ns, 0)


def fmt_score(score: LatestScore) -> str:
    """`name=value (label)`, or `name=label`: compact, as in the web's score column."""
    value = "" if score.value is None else f"{score.value:g}"
    shown = f"{value} ({score.label})" if value and score.label else value or score.label
    return f"{score.name}={shown}"


def _name_cell(span: TreeSpan, guide: str) -> Text:
    text = Text(guide, style="grey50")
    text.append(span.name, style="bold red" if is_error(span) else "bold" if span.depth == 0 else "")
    if span.orphan:
        text.append(" (orphan)", style="yellow")
    return text


def _status_cell(span: TreeSpan) -> Text:
    """The error's class (the Exceptions table below has the message and stack)."""
    if not is_error(span):
        return Text("")
    return Text(span.error_type or span.status_message or "error", style="red")


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


def waterfall(view: TraceView, width: int) -> list[Text]:
    """The span tree as one line per span, its columns sized to the content and the screen width.

    Lines of Text rather than a rich Table: a table measures and wraps every cell, which takes seconds
    for a trace of a thousand spans; these lines cost one pass. A line never wraps: what does not fit is
    cut with an ellipsis (the JSON output has everything).
    """
    total = view.duration_ns
    rows = []
    for node, guide in zip(view.spans, guides([s.depth for s in view.spans]), strict=True):
        color = "red" if is_error(node) else KIND_COLORS.get(node.kind, "white")
        rows.append(
            (
                node,
                color,
                [
                    _name_cell(node, guide),
                    Text(node.kind, style=color),
                    None,  # the bar, drawn once its width is known
                    Text(f"+{fmt_duration(node.offset_ns)}" if node.offset_ns > 0 else "0"),
                    Text(fmt_duration(node.duration_ns), style="red" if is_error(node) else ""),
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
        cells[2] = time_bar(node.offset_ns, end_offset(node), 0, total, widths[2], color)
        lines.append(line(cells))
    return lines


def _summary(view: TraceView) -> Text:
    text = Text()
    text.append("trace ", style="bold")
    text.append(view.trace_id, style="bold cyan")
    parts = [
        f"{view.root_name} · {view.service}",
        fmt_time(int(view.start_ns)),
        fmt_duration(view.duration_ns),
        f"{view.span_count} spans",
    ]
    text.append("  " + "  ·  ".join(parts))
    errors = view.error_count
    text.append("  ·  ")
    text.append(f"{errors} error{'s' if errors != 1 else ''}", style="bold red" if errors else "green")
    if view.total_tokens:
        text.append(f"  ·  {view.total_tokens:,} tokens")
    if view.cost_usd:
        text.append(f"  ·  {fmt_cost(view.cost_usd)}")
    if view.scores:
        text.append("\nscores: ", style="grey50")
        text.append("  ".join(fmt_score(s) for s in view.scores))
    if view.spans_truncated:
        text.append(f"\nshowing the first {view.span_count} spans", style="yellow")
    if view.orphan_count:
        text.append(
            f"\n{view.orphan_count} orphan span(s): their parent is not in this trace (yet); shown at the root level",
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


def _no_exception(node: TreeSpan) -> str:
    return node.status_message or "status ERROR, no exception recorded (often: a child failed)"


def _error_row(table: DetailTable, node: TreeSpan, offset_ns: int, kind: str, message: str, stack: str) -> None:
    table.add_row(Text(node.name, style="red"), f"+{fmt_duration(offset_ns)}", kind, Text(message, style="red"), stack)


def _template_label(template: str, text: str) -> str:
    """A nameless template is known by the hash of its text (`#` and hex digits): shown with its first line."""
    return f"{template} {first_line(text)}" if template.startswith(PREFIX) and text else template


def detail_tables(view: TraceView) -> list[DetailTable]:
    """LLM parameters, prompt templates, retrieved documents and exceptions, each only when present."""
    system_prompts = {s.llm.system_prompt for s in view.spans if s.kind == "LLM" and s.llm is not None}
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
    for node in view.spans:
        call = node.llm
        if node.kind == "LLM" and call is not None:
            model = call.model + (f" ({call.provider})" if call.provider else "")
            tokens = (
                f"{node.input_tokens:,} ({node.cached_tokens:,}) / {node.output_tokens:,} ({node.reasoning_tokens:,})"
            )
            llm.add_row(
                node.name, model, _opt(call.temperature), _opt(call.max_tokens), _opt(call.top_p), tokens,
                fmt_cost(node.cost_usd), call.finish_reason,
                *([] if shared_prompt else [_short(call.system_prompt, 80)]),
            )  # fmt: skip
        if (template := node.prompt) is not None and (template.template or template.text):
            variables = "; ".join(f"{k}={_short(v, 60)}" for k, v in template.variables.items())
            prompts.add_row(node.name, _template_label(template.template, template.text), template.version, variables)
        for doc in node.documents:
            score = "" if doc.score is None else f"{doc.score:.4f}"
            docs.add_row(node.name, node.kind, str(doc.position), score, doc.id, _short(doc.content, 60))
        for exc in node.exceptions:
            stack = "\n".join(exc.stacktrace.splitlines()[:STACK_LINES])
            _error_row(errors, node, exc.offset_ns, exc.type, exc.message, stack)
        if is_error(node) and not node.exceptions:
            _error_row(errors, node, end_offset(node), node.error_type, _no_exception(node), "")
    return [t for t in (llm, prompts, docs, errors) if t.row_count]


def render_trace(view: TraceView, console: Console) -> None:
    console.print(_summary(view))
    for line in waterfall(view, console.width):
        console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
    for table in detail_tables(view):
        console.print()
        console.print(table.build(console.width))


# ---- the command ------------------------------------------------------------------------------------


def show_trace(settings: Settings, trace_id: str, *, as_json: bool = False, console: Console | None = None) -> int:
    from tracehouse.cli.reading import clickhouse_for_reading

    trace_id = trace_id.strip().rstrip("…").lower()
    if not trace_id:
        raise UsageError("give a trace id")
    with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:
        if _PREFIX.match(trace_id):  # the prefix a table shows
            trace_id = resolve_prefix(client, trace_id)
        view = load_trace(client, trace_id)
    if view is None:
        target = settings.clickhouse
        hint = "" if _TRACE_ID.match(trace_id) else " (trace ids are 32 hex digits)"
        raise ReadError(
            f"trace {trace_id} not found in database {target.database} at {target.url}{hint}; "
            "recent trace ids: tracehouse query slowest-calls"
        )
    if as_json:
        emit_json(msgspec.to_builtins(view))  # exactly the body of GET /api/traces/{trace_id}
    else:
        render_trace(view, console or make_console())
    return 0


def main_trace(settings: Settings, args: Any) -> int:
    """`tracehouse trace ID` from its parsed arguments: exit 1 when the trace is not there."""
    return guarded(show_trace, settings, args.trace_id, as_json=args.json)
