"""What the reading commands print fits the terminal: at 80 and at 160 columns every row is one line, no
line is wider than the terminal, and no id wraps (a table shows an id's prefix; `--json` has it whole).

Rendered in process with rich's Console(width=...) from the same functions the commands use, on rows
shaped like the named queries' answers (ids of 32 and 16 hex digits, long messages and stack traces).
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from rich.console import Console

from tracehouse.cli.query import ID_PREFIX, print_table
from tracehouse.cli.top import GroupRow, Snapshot, TopOptions, render
from tracehouse.cli.trace_view import render_trace
from tracehouse.sinks.trace_tree import SpanNode, build_tree

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


@pytest.mark.parametrize("width", WIDTHS)
def test_trace_waterfall_and_details_fit(width: int) -> None:
    trace_id, t0 = hex_id(32), 1_796_600_000_000_000_000
    root = SpanNode(hex_id(16), "", "research_agent", "AGENT", "research-agent", t0, 9_000_000_000, "ERROR",
                    "rate limited", "", "", 0, 0.0)  # fmt: skip
    nodes = [root]
    for i in range(4):
        nodes.append(
            SpanNode(
                hex_id(16),
                root.span_id,
                f"plan_step_{i}",
                "LLM",
                "research-agent",
                t0 + i * 2_000_000_000,
                1_500_000_000,
                "OK",
                "",
                "",
                "claude-sonnet-4-20250514",
                1200,
                0.0123,
            )
        )
    failed = nodes[-1]
    failed.status, failed.error_type = "ERROR", "rate_limit"
    nodes.append(SpanNode(hex_id(16), root.span_id, "ChatPromptTemplate", "PROMPT", "research-agent",
                          t0 + 8_000_000_000, 800_000, "OK", "", "", "", 0, 0.0))  # fmt: skip
    tree = build_tree(trace_id, nodes)
    failed.details = {
        "model": "claude-sonnet-4-20250514", "provider": "anthropic", "temperature": 0.2, "max_tokens": 1024,
        "top_p": 1.0, "input_tokens": 1000, "cached_tokens": 0, "output_tokens": 200, "reasoning_tokens": 0,
        "cost_usd": 0.0123, "finish_reason": "", "system_prompt": "You are the support assistant of ACME Cloud.",
        "prompt_template": "", "prompt_key": "#0123456789", "prompt_text": "You are a research agent.\nMore.",
        "prompt_version": "3", "prompt_variables": {"question": "How do I rotate my API key without downtime?"},
        "documents": [],
        "exceptions": [{"time_ns": t0 + 7_600_000_000, "type": "anthropic.RateLimitError", "message": MESSAGE,
                        "stacktrace": "Traceback (most recent call last):\n  File \"/app/llm.py\", line 88"}],
    }  # fmt: skip
    console = Console(width=width, record=True, color_system=None)
    render_trace(tree, console)
    lines = lines_of(console)
    assert_fits(lines, width, [trace_id])
    text = "\n".join(lines)
    assert "#0123456789 You are a" in text  # a nameless template: its derived identity and first line
    assert "PROMPT" in text


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
