"""One trace, from its queries to its view: the one path `tracehouse trace ID` (and `--json`) and
`GET /api/traces/{id}` both take, so the terminal's JSON is the API's answer.

Two named queries, both narrowed to the trace's days by the `trace_id_ts` lookup table: `web-trace-spans`
(every span with everything the span panel shows, long texts cut to `max_chars`) and `web-trace-scores`
(the latest score per span and name). tracehouse.read.shape turns their rows into a `TraceView`.
Each reader runs the queries with its own client (the CLI's is synchronous, the web server's async): the
requests and the view are built here.
"""

from __future__ import annotations

from typing import Any

from tracehouse.read import shape
from tracehouse.read.models import TraceView
from tracehouse.read.queries import QUERIES, NamedQuery, query_rows

TRACE_CHARS = 20_000  # long texts (input, output, messages, prompts) are cut to this many characters by default
DOC_CHARS = 4_000  # a retrieved document's content is cut to at most this many characters in a whole trace
MAX_SPANS = 20_000  # a trace larger than this is cut (and says so): a reader draws what it gets

Request = tuple[NamedQuery, dict[str, Any]]


def span_request(trace_id: str, max_chars: int, *, span_id: str = "", max_spans: int = MAX_SPANS + 1,
                 doc_chars: int | None = None) -> Request:  # fmt: skip
    """The spans of a trace (or only `span_id`): one more than MAX_SPANS by default, to tell a cut trace."""
    docs = min(max_chars, DOC_CHARS) if doc_chars is None else doc_chars
    params = {"trace_id": trace_id, "span_id": span_id, "max_chars": max_chars, "max_doc_chars": docs,
              "max_spans": max_spans}  # fmt: skip
    return QUERIES["web-trace-spans"], params


def trace_requests(trace_id: str, max_chars: int = TRACE_CHARS) -> tuple[Request, Request]:
    """The two queries a trace's view is built from: its spans, and its latest scores."""
    return span_request(trace_id, max_chars), (QUERIES["web-trace-scores"], {"trace_id": trace_id})


def trace_view(
    trace_id: str, span_rows: list[dict[str, Any]], score_rows: list[dict[str, Any]], *, max_chars: int
) -> TraceView | None:
    """The rows of `trace_requests` as the trace's view; None when the trace has no span."""
    return shape.trace_detail(
        trace_id, span_rows[:MAX_SPANS], max_chars=max_chars, truncated=len(span_rows) > MAX_SPANS,
        score_rows=score_rows,
    )  # fmt: skip


def load_trace(client: Any, trace_id: str, max_chars: int = TRACE_CHARS) -> TraceView | None:
    """The trace's view with a clickhouse-connect sync client (the terminal's); None when it has no span."""
    spans, scores = trace_requests(trace_id, max_chars)
    return trace_view(trace_id, query_rows(client, *spans), query_rows(client, *scores), max_chars=max_chars)


def trace_ids_starting(client: Any, prefix: str, limit: int = 2) -> list[str]:
    """Trace ids starting with `prefix` (tables show ids cut to a prefix), at most `limit`: two tell an
    ambiguous prefix. From the `trace_id_ts` lookup table, with a clickhouse-connect sync client."""
    rows = client.query(
        "SELECT DISTINCT trace_id FROM trace_id_ts WHERE startsWith(trace_id, {p:String}) LIMIT {n:UInt32}",
        parameters={"p": prefix, "n": limit},
    ).result_rows
    return [row[0] for row in rows]
