"""Trace assembly for one Kafka partition: spans in any order -> one trace record per trace (and revisions).

A trace is emitted when its root span has arrived and no span of it has arrived for a quiet period, or when
it has been open for a maximum age (a root that never comes must not hold a trace forever). A span that
arrives after its trace was emitted reopens it, and a revised record follows: the record's `version` is
its span count, so ClickHouse keeps the most complete record. Spans whose parent never arrives are kept and
counted (`orphan_spans`), and the trace is marked incomplete. A span seen twice (producer retry, replay)
counts once. Each new (not duplicate) span is also shown to the partition's trace rules, if any
(pipeline/guards.py: in-flight guards), with its trace's running totals already updated.

Memory is bounded: open traces are capped (the oldest are emitted early when the cap is hit), and emitted
traces are remembered only for `revision_window_s`, without their span tree, so late spans can revise
them and duplicates are still recognised.

Recovery contract (see pipeline/checkpoint.py): `safe_offset()` is the lowest Kafka offset the worker
must replay from after a crash to rebuild every open trace.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracehouse.core.pricing import CostSource, PriceTable, price_span
from tracehouse.core.schema import TraceRecord
from tracehouse.pipeline.guards import GuardState, TraceGuards
from tracehouse.pipeline.span_view import AnySpan, usage_total

_NODE = 5  # entries per span in _Trace.nodes
_opened = operator.attrgetter("seq")


@dataclass
class AssemblyStats:
    spans: int = 0
    duplicates: int = 0
    traces_emitted: int = 0
    revisions: int = 0
    forced_by_age: int = 0
    forced_by_capacity: int = 0


class _Trace:
    """Running aggregate of one trace; the span tree (`nodes`) is kept only while the trace is open."""

    __slots__ = (
        "cached_tokens",
        "children_waiting",
        "cost",
        "emitted_at",
        "emitted_version",
        "end",
        "error_count",
        "first_arrival",
        "first_offset",
        "guard",
        "input_tokens",
        "last_arrival",
        "model",
        "nodes",
        "orphans",
        "output_tokens",
        "reasoning_tokens",
        "root",
        "seq",
        "services",
        "session_id",
        "slowest",
        "span_count",
        "span_ids",
        "start",
        "total_tokens",
        "trace_id",
        "unpriced",
        "user_id",
    )

    def __init__(self, trace_id: str, offset: int, now: float) -> None:
        self.trace_id = trace_id
        self.first_offset = offset
        self.first_arrival = now
        self.last_arrival = now
        self.span_ids: set[int] = set()
        self.children_waiting: dict[int, int] = {}
        self.orphans = 0
        # The span tree while open, flat (id, parent, end, duration, name for each span in turn): a tuple per
        # span would be one more object per span for the garbage collector to chase while the trace is open.
        self.nodes: list[Any] | None = []
        self.root: tuple[str, str, str, str] | None = None  # name, span_id, service, status
        self.services: dict[str, None] = {}
        self.start = 0
        self.end = 0
        self.span_count = 0
        self.error_count = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.total_tokens = 0
        self.cost = 0.0
        self.unpriced: dict[str, None] = {}
        self.session_id = ""
        self.user_id = ""
        self.model = ""  # the first priced LLM span's model: a score's group (pipeline/score_windows.py)
        self.slowest: tuple[int, str, str] = (-1, "", "")  # duration, span_id, name
        self.emitted_version = 0
        self.emitted_at = 0.0
        self.seq = 0  # when it was (re)opened, in the assembler's count: `_open`'s order
        self.guard: GuardState | None = None  # the trace rules' running values (pipeline/guards.py)


class TraceAssembler:
    """Assembles the traces of one partition. Not thread-safe; one per partition, driven by one task."""

    def __init__(
        self,
        prices: PriceTable | None = None,
        *,
        quiet_s: float = 3.0,
        max_age_s: float = 60.0,
        revision_window_s: float = 30.0,
        max_open_traces: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        guards: TraceGuards | None = None,
    ) -> None:
        self.prices = prices or PriceTable()
        self.guards = guards  # in-flight trace rules, evaluated as each span is folded in (None: none)
        self.quiet_s = quiet_s
        self.max_age_s = max_age_s
        self.revision_window_s = revision_window_s
        self.max_open_traces = max_open_traces
        self.clock = clock
        self.stats = AssemblyStats()
        self._open: dict[str, _Trace] = {}  # insertion order = (re)opening order = first_arrival order
        # The same traces in last_arrival order (a trace moves to the end when a span arrives), so that
        # `due` reads only the quiet ones instead of every open trace at every tick (the tick runs four
        # times a second, and at 20,000 spans/s some 15,000 traces are open: that scan cost the worker
        # more than a microsecond per span). Both orders hold while `now` never goes back; if it does
        # (only a caller's own clock can), `due` scans everything as before.
        self._by_last_arrival: dict[str, _Trace] = {}
        self._latest_now = -math.inf
        self._ordered = True
        self._seq = 0
        self._emitted: dict[str, _Trace] = {}  # insertion order = emission order
        self._forced: list[TraceRecord] = []

    @property
    def open_traces(self) -> int:
        return len(self._open)

    def add(self, span: AnySpan, offset: int, now: float | None = None) -> bool:
        """Fold one span into its trace; False when it is a duplicate."""
        llm = span.llm
        model = llm.model if llm is not None else ""
        cost, source = price_span(self.prices, model, span.usage, span.cost_usd, span.start_time_ns)
        return self.add_priced(span, offset, self.clock() if now is None else now, cost, source)

    def add_priced(self, span: AnySpan, offset: int, now: float, cost: float, cost_source: CostSource) -> bool:
        """`add` with the span already priced (`price_span`): the worker prices each span once, for its
        trace and its windows."""
        if now != self._latest_now:
            if now < self._latest_now:
                self._ordered = False
            self._latest_now = now
        trace_id = span.trace_id
        span_key = int(span.span_id, 16)
        trace = self._open.get(trace_id)
        if trace is None:
            trace = self._emitted.pop(trace_id, None)
            if trace is not None:
                if span_key in trace.span_ids:
                    self._emitted[trace_id] = trace  # still emitted; put it back
                    self.stats.duplicates += 1
                    return False
                trace.first_offset = offset
                trace.first_arrival = now
                self._open[trace_id] = trace  # reopened: a revision will follow
            else:
                if len(self._open) >= self.max_open_traces:
                    self._force_oldest()
                trace = _Trace(trace_id, offset, now)
                self._open[trace_id] = trace
            self._seq += 1
            trace.seq = self._seq
            self._by_last_arrival[trace_id] = trace
        elif span_key in trace.span_ids:
            self.stats.duplicates += 1
            return False
        elif trace.last_arrival != now:  # to the end of the last_arrival order (once per message)
            by_last_arrival = self._by_last_arrival
            del by_last_arrival[trace_id]
            by_last_arrival[trace_id] = trace
        self._fold(trace, span, span_key, now, cost, cost_source)
        self.stats.spans += 1
        if self.guards is not None:
            self.guards.observe(trace, span, offset)
        return True

    @staticmethod
    def _fold(trace: _Trace, span: AnySpan, span_key: int, now: float, cost: float, cost_source: CostSource) -> None:
        span_ids = trace.span_ids
        span_ids.add(span_key)
        trace.last_arrival = now
        waiting = trace.children_waiting
        if waiting:
            trace.orphans -= waiting.pop(span_key, 0)
        parent = span.parent_span_id
        parent_key = int(parent, 16) if parent else 0
        if parent_key and parent_key not in span_ids:
            waiting[parent_key] = waiting.get(parent_key, 0) + 1
            trace.orphans += 1
        start = span.start_time_ns
        end = span.end_time_ns
        duration = end - start
        if trace.span_count == 0 or start < trace.start:
            trace.start = start
        if end > trace.end:
            trace.end = end
        trace.span_count += 1
        trace.services[span.service] = None
        if span.status == "ERROR":
            trace.error_count += 1
        if not parent_key:
            if trace.root is None:
                trace.root = (span.name, span.span_id, span.service, span.status)
        elif duration > trace.slowest[0]:
            trace.slowest = (duration, span.span_id, span.name)
        nodes = trace.nodes
        if nodes is not None:
            nodes += (span_key, parent_key, end, duration, span.name)
        usage = span.usage
        if usage is not None:
            trace.input_tokens += usage.input
            trace.output_tokens += usage.output
            trace.cached_tokens += usage.cached
            trace.reasoning_tokens += usage.reasoning
            trace.total_tokens += usage_total(usage)
        if cost_source != "none":
            trace.cost += cost
            if not trace.model:
                llm = span.llm
                trace.model = llm.model if llm is not None else ""
            if cost_source == "unknown_model":
                llm = span.llm
                trace.unpriced[(llm.model if llm is not None else "") or "(none)"] = None
        if span.session_id and not trace.session_id:
            trace.session_id = span.session_id
        if span.user_id and not trace.user_id:
            trace.user_id = span.user_id

    # ---- emission ---------------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[TraceRecord]:
        """Records of the traces ready now: root seen and quiet, or older than the maximum age."""
        now = self.clock() if now is None else now
        ready: list[_Trace] = []
        quiet_before = now - self.quiet_s
        old_before = now - self.max_age_s
        if self._ordered:
            for trace in self._by_last_arrival.values():
                if trace.last_arrival > quiet_before:
                    break
                if trace.root is not None:
                    ready.append(trace)
            for trace in self._open.values():
                if trace.first_arrival > old_before:
                    break
                if trace.root is None or trace.last_arrival > quiet_before:
                    self.stats.forced_by_age += 1
                    ready.append(trace)
            ready.sort(key=_opened)  # emitted in `_open`'s order, as the scan below does
        else:
            for trace in self._open.values():
                if trace.root is not None and trace.last_arrival <= quiet_before:
                    ready.append(trace)
                elif trace.first_arrival <= old_before:
                    self.stats.forced_by_age += 1
                    ready.append(trace)
        records = [self._emit(trace, now) for trace in ready]
        self._expire(now)
        return records

    def flush_all(self, now: float | None = None) -> list[TraceRecord]:
        """Emit every open trace as it stands (shutdown, partition revoked with a clean handover)."""
        now = self.clock() if now is None else now
        return [self._emit(trace, now) for trace in list(self._open.values())]

    def trace_group(self, trace_id: str) -> tuple[str, str] | None:
        """(service, model) of an open or recently emitted trace, as its record names the service (the
        root's, else the first seen); None when this assembler does not hold it. For scores' windows."""
        trace = self._open.get(trace_id) or self._emitted.get(trace_id)
        if trace is None:
            return None
        root = trace.root
        service = (root[2] if root else "") or next(iter(trace.services), "")
        return service, trace.model

    def trace_identity(self, trace_id: str) -> tuple[str, str]:
        """(user_id, session_id) of an open trace as far as its spans told them ("" when not yet known):
        the budgets (pipeline/budgets.py) key a span without its own by its trace's."""
        trace = self._open.get(trace_id)
        return (trace.user_id, trace.session_id) if trace is not None else ("", "")

    def guard_fired(self, trace_id: str) -> bool:
        """Whether a trace rule fired on this open or recently emitted trace (a tail-sampling keep rule)."""
        trace = self._open.get(trace_id) or self._emitted.get(trace_id)
        return trace is not None and trace.guard is not None and trace.guard.fired != 0

    def safe_offset(self, next_offset: int) -> int:
        """The offset to replay from to rebuild every open trace (= next_offset when none is open)."""
        lowest = next_offset
        for trace in self._open.values():
            if trace.first_offset < lowest:
                lowest = trace.first_offset
        return lowest

    def _force_oldest(self) -> None:
        oldest = next(iter(self._open.values()))
        self.stats.forced_by_capacity += 1
        self._forced.append(self._emit(oldest, self.clock()))

    def take_forced(self) -> list[TraceRecord]:
        """Records emitted early because the open-trace cap was reached."""
        forced, self._forced = self._forced, []
        return forced

    def _emit(self, trace: _Trace, now: float) -> TraceRecord:
        del self._open[trace.trace_id]
        del self._by_last_arrival[trace.trace_id]
        slowest = self._critical_slowest(trace)
        trace.nodes = None  # the tree is not kept after emission: bounded memory
        if trace.guard is not None:
            trace.guard.trim()
        if trace.emitted_version:
            self.stats.revisions += 1
        trace.emitted_version = trace.span_count
        trace.emitted_at = now
        self._emitted[trace.trace_id] = trace
        self.stats.traces_emitted += 1
        root = trace.root
        root_name, root_span_id, root_service, root_status = root if root else ("", "", "", "")
        services = list(trace.services)
        status = root_status if root else ("ERROR" if trace.error_count else "UNSET")
        if status != "ERROR" and trace.error_count and root_status == "UNSET":
            status = "ERROR"
        return TraceRecord(
            trace_id=trace.trace_id,
            version=trace.span_count,
            root_name=root_name,
            root_span_id=root_span_id,
            service=root_service or (services[0] if services else ""),
            services=services,
            start_time_ns=trace.start,
            end_time_ns=trace.end,
            duration_ns=trace.end - trace.start,
            span_count=trace.span_count,
            error_count=trace.error_count,
            input_tokens=trace.input_tokens,
            output_tokens=trace.output_tokens,
            cached_tokens=trace.cached_tokens,
            reasoning_tokens=trace.reasoning_tokens,
            total_tokens=trace.total_tokens,
            cost_usd=trace.cost,
            unpriced_models=list(trace.unpriced),
            session_id=trace.session_id,
            user_id=trace.user_id,
            status=status,
            complete=root is not None and trace.orphans == 0,
            orphan_spans=trace.orphans,
            slowest_span_id=slowest[1],
            slowest_span_name=slowest[2],
            slowest_span_duration_ns=max(slowest[0], 0),
            price_version=self.prices.version,
        )

    @staticmethod
    def _critical_slowest(trace: _Trace) -> tuple[int, str, str]:
        """The slowest span on the critical path: from the root, follow the child that ends last."""
        nodes = trace.nodes
        if not nodes or trace.root is None:
            return trace.slowest
        # parent -> index in `nodes` of its child that ends last (the first of equals, in arrival order)
        last_child: dict[int, int] = {}
        for i in range(0, len(nodes), _NODE):
            parent = nodes[i + 1]
            if parent:
                seen = last_child.get(parent)
                if seen is None or nodes[i + 2] > nodes[seen + 2]:
                    last_child[parent] = i
        current = int(trace.root[1], 16)
        best: tuple[int, int, str] = (-1, 0, "")
        for _ in range(len(nodes) // _NODE):
            i = last_child.get(current)
            if i is None:
                break
            duration = nodes[i + 3]
            if duration > best[0]:
                best = (duration, nodes[i], nodes[i + 4])
            current = nodes[i]
        if best[0] < 0:
            return trace.slowest
        return (best[0], f"{best[1]:016x}", best[2])

    def _expire(self, now: float) -> None:
        horizon = now - self.revision_window_s
        emitted = self._emitted
        while emitted:
            trace_id, trace = next(iter(emitted.items()))
            if trace.emitted_at > horizon:
                break
            del emitted[trace_id]
