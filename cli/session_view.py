"""`tracehouse session ID`: one conversation as the turns it was, each with its time, input, output,
tokens, cost and latest scores; `--json` prints the web API's `GET /api/sessions/{id}` answer.

This module only renders: the conversation is the read side's `SessionView` (tracehouse.read.sessions: the
named query `session` and the same Struct the web API answers with; plain msgspec, no web server needed),
so the terminal and the browser cannot disagree about a conversation.
"""

from __future__ import annotations

import textwrap
from typing import Any

import msgspec
from rich.console import Console
from rich.text import Text

from tracehouse.cli.query import ReadError, UsageError, clickhouse_errors, emit_json, guarded, make_console
from tracehouse.cli.trace_view import fmt_cost, fmt_duration, fmt_score
from tracehouse.core.config import Settings
from tracehouse.read.models import SessionTurn, SessionView
from tracehouse.read.sessions import SESSION_CHARS, load_session

TEXT_LINES = 3  # lines of input and of output per turn; --json has them whole (to --max-chars)


def _clock(iso_time: str) -> str:
    return iso_time[11:19]  # HH:MM:SS of the ISO-8601 UTC time


def _block(marker: str, text: str, width: int, style: str) -> list[Text]:
    """`text` (whitespace folded) wrapped to the width after a two-cell marker, at most TEXT_LINES lines."""
    flat = " ".join(text.split())
    if not flat:
        return [Text(f"  {marker} ", style="grey50") + Text("(none)", style="grey50")]
    lines = textwrap.wrap(flat, max(width - 4, 10)) or [""]
    if len(lines) > TEXT_LINES:
        lines = lines[:TEXT_LINES]
        last = lines[-1]
        lines[-1] = (last[: max(width - 5, 9)] if len(last) >= width - 4 else last) + "…"
    found = []
    for i, line in enumerate(lines):
        head = Text(f"  {marker} " if i == 0 else "    ", style="bold " + style)
        found.append(head + Text(line, style=style if marker == "<" else ""))
    return found


def _turn_line(turn: SessionTurn) -> Text:
    text = Text()
    text.append(f"#{turn.turn} ", style="bold")
    text.append(_clock(turn.start_time) + "  ")
    text.append(turn.root_name or "(no root span)", style="bold red" if turn.status == "ERROR" else "bold")
    text.append(f"  {turn.trace_id[:12]}", style="cyan")
    parts = [fmt_duration(turn.duration_ns)]
    if turn.total_tokens:
        parts.append(f"{turn.total_tokens:,} tok")
    if turn.cost_usd:
        parts.append(fmt_cost(turn.cost_usd))
    text.append("  " + "  ".join(parts))
    if turn.error_count:
        text.append(f"  {turn.error_count} err", style="red")
    return text


def render_session(detail: SessionView, console: Console) -> None:
    width = console.width
    head = Text()
    head.append("session ", style="bold")
    head.append(detail.session_id, style="bold cyan")
    head.append(f"  ·  {detail.user_id or '(no user)'}  ·  {detail.turn_count} turns")
    console.print(head, no_wrap=True, overflow="ellipsis", crop=True)
    head = Text()
    parts = [f"{detail.first_time[:19].replace('T', ' ')} UTC", fmt_duration(detail.duration_ns)]
    if detail.total_tokens:
        parts.append(f"{detail.total_tokens:,} tokens")
    if detail.cost_usd:
        parts.append(fmt_cost(detail.cost_usd))
    head.append("  ·  ".join(parts))
    head.append("  ·  ")
    head.append(
        f"{detail.errors} error{'s' if detail.errors != 1 else ''}", style="bold red" if detail.errors else "green"
    )
    console.print(head, no_wrap=True, overflow="ellipsis", crop=True)
    if detail.turns_truncated:
        console.print(Text(f"showing the first {detail.turn_count} turns", style="yellow"))
    for turn in detail.turns:
        console.print()
        console.print(_turn_line(turn), no_wrap=True, overflow="ellipsis", crop=True)
        for line in _block(">", turn.input, width, "") + _block("<", turn.output, width, "green"):
            console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
        if turn.scores:
            scores = Text("    scores: ", style="grey50") + Text("  ".join(fmt_score(s) for s in turn.scores))
            console.print(scores, no_wrap=True, overflow="ellipsis", crop=True)


def show_session(
    settings: Settings,
    session_id: str,
    *,
    as_json: bool = False,
    max_chars: int = SESSION_CHARS,
    console: Console | None = None,
) -> int:
    from tracehouse.cli.reading import clickhouse_for_reading

    session_id = session_id.strip()
    if not session_id:
        raise UsageError("give a session id")
    if max_chars < 0:
        raise UsageError("--max-chars must be 0 or more")
    with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:
        detail = load_session(client, session_id, max_chars)
    if detail is None:
        target = settings.clickhouse
        raise ReadError(
            f"session {session_id} not found in database {target.database} at {target.url} (no trace has this "
            "session id); recent sessions: the web explorer's Sessions page, or "
            "tracehouse sql \"SELECT session_id, max(start_time) FROM traces WHERE session_id != '' GROUP BY 1\""
        )
    if as_json:
        emit_json(msgspec.to_builtins(detail))
    else:
        render_session(detail, console or make_console())
    return 0


def main_session(settings: Settings, args: Any) -> int:
    """`tracehouse session ID` from its parsed arguments: exit 1 when no trace has this session id."""
    return guarded(show_session, settings, args.session_id, as_json=args.json, max_chars=args.max_chars)
