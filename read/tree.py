"""A trace's spans as a tree in display order: what the terminal (`tracehouse trace`) and the web explorer
both draw, built once here so the two cannot disagree about depth, order or which spans are orphans.

Spans are linked to their parents and ordered depth first, children by start time. The walk is
iterative, so a trace of thousands of spans or a deep chain of agent steps builds without recursion
limits. Spans whose parent is not in the trace are kept at the root level and marked `orphan`: late and
orphan spans are data, not noise (a lesson from the tools that drop them). A parent loop, which only a
broken producer makes, is cut at its earliest span and shown the same way. No dependency beyond the
standard library, so readers without the CLI extra (the web server) can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_GUIDE_DEPTH = 24  # deeper than this, the indent shows the depth as a number instead of guides


@dataclass
class SpanNode:
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    duration_ns: int
    status: str
    status_message: str
    error_type: str
    model: str
    total_tokens: int
    cost_usd: float
    depth: int = 0
    orphan: bool = False
    children: list[SpanNode] = field(default_factory=list)
    details: dict[str, Any] | None = None

    @property
    def end_ns(self) -> int:
        return self.start_ns + max(self.duration_ns, 0)

    @property
    def is_error(self) -> bool:
        return self.status == "ERROR"


@dataclass
class TraceTree:
    trace_id: str
    spans: list[SpanNode]  # display order: depth first, children by start time; roots and orphans first level

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def roots(self) -> list[SpanNode]:
        return [s for s in self.spans if s.depth == 0]

    @property
    def error_count(self) -> int:
        return sum(s.is_error for s in self.spans)

    @property
    def orphan_count(self) -> int:
        return sum(s.orphan for s in self.spans)

    @property
    def total_tokens(self) -> int:
        return sum(s.total_tokens for s in self.spans)

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.spans)


def node_from_row(row: dict[str, Any]) -> SpanNode:
    return SpanNode(
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        name=row["name"],
        kind=row["kind"],
        service=row["service"],
        start_ns=int(row["start_ns"]),
        duration_ns=int(row["duration_ns"]),
        status=row["status"],
        status_message=row["status_message"],
        error_type=row["error_type"],
        model=row["model"],
        total_tokens=int(row["total_tokens"]),
        cost_usd=float(row["cost_usd"]),
    )


def build_tree(trace_id: str, nodes: Sequence[SpanNode]) -> TraceTree:
    """Link spans to their parents and order them for display; orphans and loops become roots."""
    ordered = sorted(nodes, key=lambda n: (n.start_ns, n.span_id))
    by_id = {n.span_id: n for n in ordered}
    tops: list[SpanNode] = []
    for node in ordered:
        node.children = []
    for node in ordered:
        parent = by_id.get(node.parent_span_id) if node.parent_span_id else None
        if parent is None or parent is node:
            node.orphan = bool(node.parent_span_id)
            tops.append(node)
        else:
            parent.children.append(node)
    display: list[SpanNode] = []
    seen: set[str] = set()

    def walk(top: SpanNode) -> None:
        # iterative depth-first walk: (node, depth)
        stack: list[tuple[SpanNode, int]] = [(top, 0)]
        while stack:
            node, depth = stack.pop()
            if node.span_id in seen:
                continue
            seen.add(node.span_id)
            node.depth = depth
            display.append(node)
            kids = node.children
            for i in range(len(kids) - 1, -1, -1):
                stack.append((kids[i], depth + 1))

    for top in tops:
        walk(top)
    # Spans on a parent loop are reachable from no root: cut the loop at its earliest span.
    for node in ordered:
        if node.span_id not in seen:
            node.orphan = True
            walk(node)
    return TraceTree(trace_id, display)


def guides(depths: Sequence[int]) -> list[str]:
    """Each span's tree-drawing prefix for a name column ("├─ ", "│  └─ ", ...), from the depths of the
    spans in display order (a view carries depths, so any renderer can draw the tree from them).

    A span is the last of its siblings when no later span has its depth before one shallower than it;
    one backward pass finds that, one forward pass joins the ancestors' rails.
    """
    last = [True] * len(depths)
    sibling_after: list[bool] = []  # [d]: a later span at depth d shares the parent of the current one
    for i in range(len(depths) - 1, -1, -1):
        depth = depths[i]
        if len(sibling_after) <= depth:
            sibling_after.extend([False] * (depth + 1 - len(sibling_after)))
        last[i] = not sibling_after[depth]
        sibling_after[depth] = True
        del sibling_after[depth + 1 :]
    found: list[str] = []
    below: list[str] = []  # [d]: the rails a child of the current span at depth d starts with
    for depth, is_last in zip(depths, last, strict=True):
        branch = "└─ " if is_last else "├─ "
        above = below[depth - 1] if depth else ""
        if depth == 0:
            found.append("")
        elif depth > MAX_GUIDE_DEPTH:
            found.append(f"┆{depth} {branch}")
        else:
            found.append(above + branch)
        del below[depth:]
        below.append("" if depth == 0 else above + ("   " if is_last else "│  "))
    return found
