"""What the reading commands print fits the terminal: at 80 and at 160 columns every row is one line, no
line is wider than the terminal, and no id wraps (a table shows an id's prefix; `--json` has it whole).

Rendered in process with rich's Console(width=...) from the same functions the commands use, on rows
shaped like the named queries' answers (ids of 32 and 16 hex digits, long messages and stack traces).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from rich.console import Console

from tracehouse.cli.query import ID_PREFIX, print_table
from tracehouse.cli.top import GroupRow, Snapshot, TopOptions, render
from tracehouse.cli.trace_view import render_trace
from tracehouse.read.models import ExceptionView, LLMView, PromptView, TraceView, TreeSpan

RNG = random.Random(7)
WIDTHS = (80, 160)
MESSAGE = (
    "Error code: 429 - {'type': 'error', 'error': {'type': 'rate_limit_error', 'message': 'This request would "
    "exceed the rate limit for your organization of 80,000 input tokens per minute.'}}"
)


def hex_id(digits: int) -> str:
    return f"{RNG.getrandbits(digits * 4):0{digits}x}"


def lines_of(console: Console) -> list[str]:
    return console.export_text().splitlines()


def assert_fits(lines: list[str], width: int, ids: list[str]) -> None:
    for line in lines:
        assert len(line) <= width, f"{len(line)} > {width}: {line!r}"
    text = "\n".join(lines)
    for full in ids:
        prefix = full[:ID_PREFIX]
        assert prefix in text, f"{prefix} is not shown on one line"
        # no fragment of the id continues on the next line
        assert full[ID_PREFIX : ID_PREFIX + 6] not in text.replace(full, "")


@pytest.mark.parametrize("width", WIDTHS)
def test_query_tables_keep_one_line_per_row(width: int) -> None:
    console = Console(width=width, record=True, color_system=None)
    now = dt.datetime(2026, 12, 7, 2, 30, 1, 123000)
    columns = ["trace_id", "span", "model", "error_type", "exception_type", "message", "time"]
    rows = [
        (hex_id(32), "chat_completion", "claude-sonnet-4-20250514", "rate_limit", "anthropic.RateLimitError",
         MESSAGE, now)
        for _ in range(5)
    ]  # fmt: skip
    print_table(console, "3. Runtime exceptions", columns, rows)
    lines = lines_of(console)
    assert len(lines) == 2 + len(rows)  # title, header, one line per row
    assert_fits(lines, width, [r[0] for r in rows])
    assert "…" in "\n".join(lines)  # the long message is cut, not folded
    assert lines[1].split()[0] == "trace_id" and lines[1].rstrip().endswith("time")  # every column shown


def tree_span(span_id: str, parent: str, name: str, kind: str, offset_ns: int, duration_ns: int,
              depth: int, **fields: Any) -> TreeSpan:  # fmt: skip
    """A span of the read model as `tracehouse trace` gets it, with empty details unless given."""
    blank: dict[str, Any] = {
        "service": "research-agent", "status": "OK", "status_message": "", "error_type": "", "model": "",
        "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0, "total_tokens": 0,
        "cost_usd": 0.0, "cost_source": "", "input": "", "input_chars": 0, "output": "", "output_chars": 0,
        "llm": None, "prompt": None, "documents": [], "exceptions": [], "events": [], "scores": [],
        "attributes": {}, "resource_attributes": {}, "session_id": "", "user_id": "", "tags": [], "orphan": False,
        "child_count": 0,
    }  # fmt: skip
    return TreeSpan(span_id=span_id, parent_span_id=parent, name=name, kind=kind, start_ns=str(T0 + offset_ns),
                    offset_ns=offset_ns, duration_ns=duration_ns, depth=depth, **{**blank, **fields})  # fmt: skip


T0 = 1_796_600_000_000_000_000


@pytest.mark.parametrize("width", WIDTHS)
def test_trace_waterfall_and_details_fit(width: int) -> None:
    trace_id, root_id = hex_id(32), hex_id(16)
    root = tree_span(root_id, "", "research_agent", "AGENT", 0, 9_000_000_000, 0, status="ERROR",
                     status_message="rate limited")  # fmt: skip
    spans = [root]
    for i in range(4):
        step = tree_span(hex_id(16), root_id, f"plan_step_{i}", "LLM", i * 2_000_000_000, 1_500_000_000, 1,
                         model="claude-sonnet-4-20250514", total_tokens=1200, cost_usd=0.0123)  # fmt: skip
        spans.append(step)
    call = LLMView(
        provider="anthropic", model="claude-sonnet-4-20250514", temperature=0.2, max_tokens=1024, top_p=1.0,
        stop=[], system_prompt="You are the support assistant of ACME Cloud.", invocation_parameters="",
        finish_reason="", input_messages=[], output_messages=[],
    )  # fmt: skip
    spans[-1] = tree_span(
        spans[-1].span_id, root_id, "plan_step_3", "LLM", 6_000_000_000, 1_500_000_000, 1, status="ERROR",
        error_type="rate_limit", model="claude-sonnet-4-20250514", input_tokens=1000, output_tokens=200,
        total_tokens=1200, cost_usd=0.0123, llm=call,
        prompt=PromptView("#0123456789", "3", "You are a research agent.\nMore.",
                          {"question": "How do I rotate my API key without downtime?"}),
        exceptions=[ExceptionView(7_600_000_000, "anthropic.RateLimitError", MESSAGE,
                                  "Traceback (most recent call last):\n  File \"/app/llm.py\", line 88")],
    )  # fmt: skip
    spans.append(tree_span(hex_id(16), root_id, "ChatPromptTemplate", "PROMPT", 8_000_000_000, 800_000, 1))
    view = TraceView(
        trace_id=trace_id, root_name=root.name, root_span_id=root_id, service=root.service, services=[root.service],
        start_time="2026-12-07T02:30:01.123Z", start_ns=str(T0), duration_ns=9_000_000_000, span_count=len(spans),
        error_count=2, orphan_count=0, input_tokens=1000, output_tokens=200, cached_tokens=0, reasoning_tokens=0,
        total_tokens=4800, cost_usd=0.0492, session_id="", user_id="", max_chars=20_000, spans_truncated=False,
        spans=spans, scores=[], span_scores=[],
    )  # fmt: skip
    console = Console(width=width, record=True, color_system=None)
    render_trace(view, console)
    lines = lines_of(console)
    assert_fits(lines, width, [trace_id])
    text = "\n".join(lines)
    assert "#0123456789 You are a" in text  # a nameless template: its derived identity and first line
    assert "PROMPT" in text and "├─ plan_step_0" in text and "└─ ChatPromptTemplate" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_top_table_fits(width: int) -> None:
    groups = [
        GroupRow(
            {"service": service, "model": model},
            1200,
            30,
            15,
            900_000,
            120_000,
            3000,
            500,
            2.5,
            14_000.0,
            9000.0,
            6,
            60,
        )
        for service in ("research-agent", "support-bot", "search-api")
        for model in ("claude-sonnet-4-20250514", "text-embedding-3-small", "")
    ]
    snapshot = Snapshot("tracehouse", TopOptions(60, ("service", "model")), groups,
                        window_to=dt.datetime(2026, 12, 7, 2, 30), seconds=60, age_seconds=3)  # fmt: skip
    console = Console(width=width, record=True, color_system=None)
    console.print(render(snapshot, width=width))
    lines = lines_of(console)
    assert_fits(lines, width, [])
    rows = [line for line in lines if line.startswith(("research", "support", "search", "total"))]
    assert len(rows) == len(groups) + 1  # every group on one line, and the total
    header = next(line for line in lines if line.startswith("service"))
    assert "cost $" in header and "p95 ms" in header  # no column cropped away
