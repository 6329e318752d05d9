"""One session (a conversation), from its query to its view: the one path `tracehouse session ID` (and
`--json`) and `GET /api/sessions/{id}` both take, so the terminal's JSON is the API's answer.

The named query `session` gives the session's traces in order, each with its input and output cut to
`max_chars`; tracehouse.read.shape turns the rows into a `SessionView`.
"""

from __future__ import annotations

from typing import Any

from tracehouse.read import shape
from tracehouse.read.models import SessionView
from tracehouse.read.queries import QUERIES, NamedQuery, query_rows

SESSION_CHARS = 2_000  # each turn's input and output are cut to this many characters by default
MAX_TURNS = 1_000  # a session longer than this is cut (and says so)


def session_request(session_id: str, max_chars: int = SESSION_CHARS) -> tuple[NamedQuery, dict[str, Any]]:
    """The session's traces in order: one more than MAX_TURNS, to tell a cut session."""
    return QUERIES["session"], {"session_id": session_id, "max_chars": max_chars, "limit": MAX_TURNS + 1}


def session_view(session_id: str, rows: list[dict[str, Any]], *, max_chars: int) -> SessionView | None:
    """The rows of `session_request` as the conversation's view; None when no trace has this session id."""
    return shape.session_detail(session_id, rows[:MAX_TURNS], max_chars=max_chars, truncated=len(rows) > MAX_TURNS)


def load_session(client: Any, session_id: str, max_chars: int = SESSION_CHARS) -> SessionView | None:
    """The session's view with a clickhouse-connect sync client (the terminal's)."""
    return session_view(session_id, query_rows(client, *session_request(session_id, max_chars)), max_chars=max_chars)
