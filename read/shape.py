"""Named queries' rows -> the read model (tracehouse.read.models). Pure functions (no I/O), so they are cheap
to test and reason about, and the same for the terminal and the web API: a trace's depth, display order,
orphans, totals and scores are computed here once (its tree by tracehouse.read.tree).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from tracehouse.read.models import (
    AlertChange,
    DocumentView,
    EventView,
    ExceptionView,
    FiringAlert,
    LatestScore,
    LLMView,
    MessageView,
    NamedCount,
    PromptView,
    RollupPoint,
    RollupSeries,
    ScoreView,
    SessionSummary,
    SessionTurn,
    SessionView,
    SpanView,
    ToolCallView,
    TraceSummary,
    TraceView,
    TreeSpan,
)
from tracehouse.read.times import iso, iso_of
from tracehouse.read.tree import SpanNode, TraceTree, build_tree, node_from_row

Row = dict[str, Any]


def _usage(row: dict[str, Any]) -> dict[str, Any]:
    """The token counts and cost every row shape (trace, span, chart point) carries under the same names."""
    return {
        "input_tokens": int(row["input_tokens"]),
        "output_tokens": int(row["output_tokens"]),
        "cached_tokens": int(row["cached_tokens"]),
        "reasoning_tokens": int(row["reasoning_tokens"]),
        "total_tokens": int(row["total_tokens"]),
        "cost_usd": float(row["cost_usd"]),
    }


def finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# ---- scores -----------------------------------------------------------------------------------------


def latest_scores(items: Iterable[Row]) -> list[LatestScore]:
    """The `latest` tuples the queries give (one per name: the newest value, when, how many) by name."""
    found = [
        LatestScore(
            name=item["name"],
            value=finite(item["value"]),
            label=item["label"],
            source=item["source"],
            comment=item["comment"],
            author=item["author"],
            created_at=iso(int(item["created_ns"])),
            count=int(item["count"]),
        )
        for item in items or ()
    ]
    return sorted(found, key=lambda s: s.name)


def trace_scores(rows: Sequence[Row]) -> tuple[list[LatestScore], list[LatestScore]]:
    """Rows of sql/trace-scores.sql (the latest per span and name) as the trace header's list (the latest
    per name over the whole trace) and the span panels' (those on a span)."""
    per_span = [
        LatestScore(
            name=r["score_name"],
            value=finite(r["score_value"]),
            label=r["score_label"],
            source=r["score_source"],
            comment=r["score_comment"],
            author=r["score_author"],
            created_at=iso(int(r["created_ns"])),
            count=int(r["how_many"]),
            span_id=r["score_span"],
        )
        for r in rows
    ]
    newest: dict[str, tuple[int, LatestScore]] = {}
    counts: dict[str, int] = {}
    for row, score in zip(rows, per_span, strict=True):
        counts[score.name] = counts.get(score.name, 0) + score.count
        at = int(row["created_ns"])
        if score.name not in newest or at > newest[score.name][0]:
            newest[score.name] = (at, score)
    overall = [
        LatestScore(**{f: getattr(score, f) for f in LatestScore.__struct_fields__} | {"count": counts[name]})
        for name, (_, score) in sorted(newest.items())
    ]
    return overall, [s for s in per_span if s.span_id]


# ---- traces list ------------------------------------------------------------------------------------


def trace_summary(row: Row) -> TraceSummary:
    start_ns = int(row["start_ns"])
    return TraceSummary(
        trace_id=row["trace_id"],
        root_name=row["root_name"],
        root_span_id=row["root_span_id"],
        service=row["service"],
        services=list(row["services"]),
        start_time=iso(start_ns),
        start_ms=start_ns // 1_000_000,
        duration_ns=int(row["duration_ns"]),
        span_count=int(row["span_count"]),
        error_count=int(row["error_count"]),
        **_usage(row),
        unpriced_models=list(row["unpriced_models"]),
        session_id=row["session_id"],
        user_id=row["user_id"],
        status=row["status"],
        complete=bool(row["complete"]),
        orphan_spans=int(row["orphan_spans"]),
        slowest_span_id=row["slowest_span_id"],
        slowest_span_name=row["slowest_span_name"],
        slowest_span_duration_ns=int(row["slowest_span_duration_ns"]),
        scores=latest_scores(row.get("scores") or ()),
    )


# ---- one span, one trace ----------------------------------------------------------------------------


def _messages(items: Iterable[Row]) -> list[MessageView]:
    return [
        MessageView(
            m["role"], m["content"], m["name"], m["tool_call_id"],
            [ToolCallView(t["id"], t["name"], t["arguments"]) for t in m["tool_calls"]],
        )
        for m in items
    ]  # fmt: skip


def _llm(row: Row) -> LLMView | None:
    if row["kind"] != "LLM" and not row["model"]:
        return None
    return LLMView(
        provider=row["provider"],
        model=row["model"],
        temperature=finite(row["temperature"]),
        max_tokens=row["max_tokens"],
        top_p=finite(row["top_p"]),
        stop=list(row["stop"]),
        system_prompt=row["system_prompt_cut"],
        invocation_parameters=row["invocation_parameters_cut"],
        finish_reason=row["finish_reason"],
        input_messages=_messages(row["input_message_list"]),
        output_messages=_messages(row["output_message_list"]),
    )


def _prompt(row: Row) -> PromptView | None:
    if not (row["prompt_template"] or row["prompt_text_cut"] or row["prompt_variables"]):
        return None
    variables = dict(row["prompt_variables"])
    return PromptView(row["prompt_template"], row["prompt_version"], row["prompt_text_cut"], variables)


def span_out(row: Row, trace_start_ns: int, cls: type[SpanView] = SpanView, **tree: Any) -> SpanView:
    """One span row (from sql/trace-spans.sql) as the API's span; `tree` adds TreeSpan's fields."""
    start_ns = int(row["start_ns"])
    exceptions: list[ExceptionView] = []
    events: list[EventView] = []
    for event in row["event_list"]:
        attributes = event["attributes"]
        offset = int(event["time_ns"]) - trace_start_ns
        if event["name"] == "exception":
            exceptions.append(
                ExceptionView(
                    offset,
                    attributes.get("exception.type", ""),
                    attributes.get("exception.message", ""),
                    attributes.get("exception.stacktrace", ""),
                )
            )
        else:
            events.append(EventView(event["name"], offset, dict(attributes)))
    documents = sorted(
        (DocumentView(int(d["position"]), d["id"], d["content"], finite(d["score"]), dict(d["metadata"]))
         for d in row["document_list"]),
        key=lambda d: d.position,
    )  # fmt: skip
    return cls(
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        name=row["name"],
        kind=row["kind"],
        service=row["service"],
        start_ns=str(start_ns),
        offset_ns=start_ns - trace_start_ns,
        duration_ns=int(row["duration_ns"]),
        status=row["status"],
        status_message=row["status_message"],
        error_type=row["error_type"],
        model=row["model"],
        **_usage(row),
        cost_source=row["cost_source"],
        input=row["input_cut"],
        input_chars=int(row["input_chars"]),
        output=row["output_cut"],
        output_chars=int(row["output_chars"]),
        llm=_llm(row),
        prompt=_prompt(row),
        documents=documents,
        exceptions=exceptions,
        events=events,
        scores=[ScoreView(s["name"], finite(s["value"]), s["label"], s["source"], s["comment"]) for s in row["scores"]],
        attributes=dict(row["attributes"]),
        resource_attributes=dict(row["resource_attributes"]),
        session_id=row["session_id"],
        user_id=row["user_id"],
        tags=list(row["tags"]),
        **tree,
    )


def _first(values: Iterable[str]) -> str:
    return next((v for v in values if v), "")


def trace_detail(
    trace_id: str, rows: Sequence[Row], *, max_chars: int, truncated: bool, score_rows: Sequence[Row] = ()
) -> TraceView | None:
    """The trace as its tree in display order, each span with its details, and its latest scores (rows of
    sql/trace-scores.sql); None when there are no spans."""
    nodes: list[SpanNode] = []
    for row in rows:
        node = node_from_row(row)
        node.details = row
        nodes.append(node)
    if not nodes:
        return None
    tree: TraceTree = build_tree(trace_id, nodes)
    t0 = tree.start_ns
    spans = [
        span_out(node.details or {}, t0, TreeSpan, depth=node.depth, orphan=node.orphan,
                 child_count=len(node.children))
        for node in tree.spans
    ]  # fmt: skip
    root = next((s for s in tree.spans if s.depth == 0 and not s.orphan), tree.spans[0])
    ordered = [root, *tree.spans]
    overall, on_spans = trace_scores(score_rows)
    return TraceView(
        trace_id=trace_id,
        root_name=root.name,
        root_span_id=root.span_id,
        service=root.service,
        services=list(dict.fromkeys(s.service for s in ordered)),
        start_time=iso(t0),
        start_ns=str(t0),
        duration_ns=tree.duration_ns,
        span_count=len(spans),
        error_count=tree.error_count,
        orphan_count=tree.orphan_count,
        input_tokens=sum(s.input_tokens for s in spans),
        output_tokens=sum(s.output_tokens for s in spans),
        cached_tokens=sum(s.cached_tokens for s in spans),
        reasoning_tokens=sum(s.reasoning_tokens for s in spans),
        total_tokens=tree.total_tokens,
        cost_usd=tree.cost_usd,
        session_id=_first((n.details or {}).get("session_id", "") for n in ordered),
        user_id=_first((n.details or {}).get("user_id", "") for n in ordered),
        max_chars=max_chars,
        spans_truncated=truncated,
        spans=spans,
        scores=overall,
        span_scores=on_spans,
    )


# ---- sessions ---------------------------------------------------------------------------------------


def session_summary(row: Row) -> SessionSummary:
    """A row of the named query `sessions`."""
    users = list(row["user_ids"])
    first_ns, end_ns = int(row["first_ns"]), int(row["end_ns"])
    return SessionSummary(
        session_id=row["session_id"],
        turns=int(row["turns"]),
        user_id=users[0] if users else "",
        user_ids=users,
        services=list(row["services"]),
        first_name=row["first_name"],
        first_time=iso(first_ns),
        last_time=iso(int(row["last_ns"])),
        duration_ns=max(end_ns - first_ns, 0),
        **_usage(row),
        errors=int(row["errors"]),
        error_turns=int(row["error_turns"]),
        scores=latest_scores(row["scores"]),
    )


def session_turn(index: int, row: Row) -> SessionTurn:
    """A row of the named query `session` as the conversation's turn number `index` (from 1)."""
    start_ns = int(row["start_ns"])
    return SessionTurn(
        turn=index,
        trace_id=row["trace_id"],
        root_name=row["root_name"],
        root_span_id=row["root_span_id"],
        service=row["service"],
        start_time=iso(start_ns),
        start_ms=start_ns // 1_000_000,
        duration_ns=int(row["duration_ns"]),
        span_count=int(row["span_count"]),
        error_count=int(row["error_count"]),
        **_usage(row),
        user_id=row["user_id"],
        status=row["status"],
        input=row["input_cut"] or "",
        input_chars=int(row["input_chars"] or 0),
        output=row["output_cut"] or "",
        output_chars=int(row["output_chars"] or 0),
        scores=latest_scores(row["scores"]),
    )


def session_detail(session_id: str, rows: Sequence[Row], *, max_chars: int, truncated: bool) -> SessionView | None:
    """The conversation in order (rows of the named query `session`); None when no trace has this session id.
    The terminal's `tracehouse session ID --json` prints this same Struct."""
    turns = [session_turn(i, row) for i, row in enumerate(rows, start=1)]
    if not turns:
        return None
    first_ns = int(rows[0]["start_ns"])
    end_ns = max(int(r["start_ns"]) + int(r["duration_ns"]) for r in rows)
    return SessionView(
        session_id=session_id,
        user_id=_first(t.user_id for t in turns),
        turn_count=len(turns),
        first_time=iso(first_ns),
        last_time=turns[-1].start_time,
        duration_ns=max(end_ns - first_ns, 0),
        total_tokens=sum(t.total_tokens for t in turns),
        cost_usd=sum(t.cost_usd for t in turns),
        errors=sum(t.error_count for t in turns),
        max_chars=max_chars,
        turns_truncated=truncated,
        turns=turns,
    )


# ---- rollups ----------------------------------------------------------------------------------------


def _ms(ns: Any) -> float | None:
    value = finite(ns)
    return None if value is None else round(value / 1e6, 3)


def rollup_series(rows: Sequence[Row], max_groups: int) -> tuple[list[RollupSeries], int]:
    """Rows of sql/rollups.sql as one series per group, the busiest `max_groups` first; and how many
    groups were left out (a chart with fifty lines says nothing)."""
    series: dict[str, RollupSeries] = {}
    for row in rows:
        group = row["group"]
        entry = series.get(group)
        if entry is None:
            entry = series[group] = RollupSeries(group, 0, 0, 0, 0.0, [])
        latency = list(row["latency_ns"]) or [None, None, None]
        point = RollupPoint(
            t=int(row["t"]),
            calls=int(row["calls"]),
            errors=int(row["errors"]),
            p50_ms=_ms(latency[0]),
            p95_ms=_ms(latency[1]),
            p99_ms=_ms(latency[2]),
            max_ms=_ms(row["max_ns"]),
            **_usage(row),
        )
        entry.points.append(point)
        entry.calls += point.calls
        entry.errors += point.errors
        entry.total_tokens += point.total_tokens
        entry.cost_usd += point.cost_usd
    ranked = sorted(series.values(), key=lambda s: (-s.calls, s.group))
    for entry in ranked:
        entry.points.sort(key=lambda p: p.t)
    return ranked[:max_groups], max(len(ranked) - max_groups, 0)


# ---- alerts and filters -----------------------------------------------------------------------------


def firing_alert(row: Row) -> FiringAlert:
    return FiringAlert(
        rule=row["rule"],
        service=row["service"],
        group=row["group"],
        severity=row["severity"],
        firing_since=iso_of(row["firing_since"]),
        value=finite(row["value"]),
        threshold=finite(row["threshold"]),
        message=row["message"],
    )


def alert_change(row: Row) -> AlertChange:
    return AlertChange(
        fired_at=iso_of(row["fired_at"]),
        state=row["state"],
        severity=row["severity"],
        rule=row["rule"],
        service=row["service"],
        group=row["group"],
        value=finite(row["value"]),
        threshold=finite(row["threshold"]),
        message=row["message"],
        window_start=iso_of(row["window_start"]),
        window_seconds=int(row["window_seconds"]),
    )


def named_counts(rows: Sequence[Row], what: str) -> list[NamedCount]:
    """Distinct values of one kind, busiest first; a name seen twice (two sources) counts once, summed."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["what"] == what and row["value"]:
            counts[row["value"]] = counts.get(row["value"], 0) + int(row["calls"])
    return [NamedCount(name, calls) for name, calls in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
