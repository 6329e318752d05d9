"""Tail sampling: which traces keep their spans in storage, decided by the worker on the whole trace.

Public API:
    SamplingRules                          msgspec Struct, the `[sampling]` table of the rules' TOML
    SamplingError                          ValueError naming the field at fault
    parse_sampling(text_or_dict, source) -> SamplingRules
    load_sampling(path=None) -> SamplingRules | None   None when TRACEHOUSE_SAMPLING is off
    keep_by_rate(trace_id, rate) -> bool   the same answer in every process
    PartitionSampler                       one partition's held spans and decisions
    GroupLatencies                         one partition's latency quantile per root group (service, name)
    SamplingStats                          traces decided and kept per rule (the worker's stats, `top`)
    encode_kept(spans) -> list[bytes]      `tracehouse.spans.kept` messages (the `tracehouse.spans` format)

The rules live beside the alert rules (TRACEHOUSE_ALERT_RULES):

    [sampling]
    keep_errors = true          # a span in error
    keep_rate_limits = true     # a rate-limited call (core/error_types.py, as `rate_limit_count`)
    keep_guarded = true         # a trace rule (in-flight guard, pipeline/guards.py) fired on the trace
    latency_ms = 30000          # the trace lasted longer (unset: no such rule)
    latency_above_quantile = 0.95  # longer than its group's p95 (unset: no such rule; see below)
    latency_min_count = 100     # ... once the group's window holds this many spans
    cost_usd = 0.50             # the trace cost more (unset: no such rule)
    score_below = 0.5           # a score carried by one of its spans is lower (unset: no such rule)
    rate = 0.10                 # the fraction of all other traces kept

A trace is kept by the first rule that holds, in that order, and its record says which (`sampled_by`);
`sampled` is false and `sampled_by` "" when none does. Rules see the trace as the worker emits it: the
scores that come later on `tracehouse.scores` are not in it (keeping a trace for them would mean holding
its spans until a score may come: no bound).

The group's quantile (`latency_above_quantile`, rule "latency_quantile"): the group is the root span's
service and name (the trace record's `service`, `root_name`): one kind of request (an endpoint, an agent),
whose latencies are comparable; a group by service alone would keep every trace of its slowest endpoint,
and the root's model or kind add nothing (a root is rarely an LLM call). Its quantile comes from what the
partition already holds, at no cost per span: the sketches of the partition's longest windows (60 s,
pipeline/windows.py) for the root's (service, name), merged over the kinds and models. A trace is measured
against the newest closed window that *starts before its own* (by its end time) and holds at least
`latency_min_count` spans of the group; without one, the rule says nothing (no verdict from 3 samples). The
window's sketch counts every span of that (service, name), roots or not: a name used for roots is rarely
used for other spans. Partition-local is enough: every partition sees a random share of the traces (they
are keyed by trace id). Memory: the quantiles of the two newest closed windows, at most `max_groups` (1,000)
groups each. Replay gives the same verdicts: at each tick the worker closes windows before it emits
traces, and the window before a trace's own has closed by its emission (by event time, once a span of the
trace's window was read, while a backlog is replayed; `grace_s` after its end when live, before the quiet
period has passed), and the closed windows are in the windows' checkpoint, so a restarted worker measures
each replayed trace against the same window. Exceptions, both at the margin: late spans of that window that
arrived between the first decision and the replay (a revision moves the quantile by their share), and a
producer clock far ahead of the worker's (the window may not have closed yet: no verdict).

Why the rate is read from the trace id and not drawn at random: every process (two workers after a
rebalance, a replay, a restarted worker) must reach the same verdict on the same trace, or a trace could
be stored in part. The rule is OpenTelemetry's TraceIdRatioBased sampler's: the id's low 64 bits below
`rate` x 2^64 (W3C trace ids are random there), so a head sampler at the same ratio keeps the same traces.
Not Python's `hash` (salted per process), nor a cryptographic hash (blake2b cost 3 µs a trace here).

Why spans are held here and not re-read later: the decision needs the whole trace, which only exists in
the worker. So the worker holds the bytes of every open trace's spans (copied out of their message, so a
message is not kept alive by one slow trace; bytes, so the garbage collector has nothing to scan), with two
facts the rules need from them (a rate-limited span, a low score), and on emission publishes the bytes of
kept traces to `tracehouse.spans.kept`, co-partitioned with `tracehouse.spans`, in the same message format;
the sink stores that topic instead. A late span reopens its trace in the
assembler, and at the revision it follows the decision taken at first emission (remembered as long as the
assembler remembers the trace: `revision_window_s`). Memory: the held spans are the open traces' spans,
which `max_open_traces` bounds (see the README for the bytes per span measured). A restarted worker
replays from its checkpoint's safe offset (the oldest open trace's first message), so it re-holds and
re-decides every trace that was still open, with the same verdict; spans it publishes twice are the same
rows, which `spans` (ReplacingMergeTree on the span's key) collapses.
"""

from __future__ import annotations

import operator
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import msgspec

from tracehouse.core import settings
from tracehouse.core.rollups import OTHER_KEY, RollupPartialRecord
from tracehouse.core.schema import SCHEMA_VERSION, TraceRecord
from tracehouse.core.sketch import LatencySketch
from tracehouse.pipeline.span_view import AnySpan
from tracehouse.pipeline.windows import is_rate_limited

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The keep rules, in the order they are tried; "rate" is the share of the rest.
RULES = ("error", "rate_limit", "guard", "latency", "latency_quantile", "cost", "score", "rate")
SPANS_PER_MESSAGE = 500  # kept spans per `tracehouse.spans.kept` message (~1 MB of the anchor span shape)
_HASH_SPACE = 1 << 64
_QUANTILE_WINDOWS = 2  # closed windows whose group quantiles are kept (the one before a trace's own, and one more)
_NS = 1_000_000_000
_events = operator.attrgetter("events")
_attributes = operator.attrgetter("attributes")
_status = operator.attrgetter("status")
_scores = operator.attrgetter("scores")


class SamplingError(ValueError):
    """The `[sampling]` table is wrong; the message names the file and the field."""


class SamplingRules(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    keep_errors: bool = True
    keep_rate_limits: bool = True
    keep_guarded: bool = True
    latency_ms: float | None = None
    latency_above_quantile: float | None = None
    latency_min_count: int = 100
    cost_usd: float | None = None
    score_below: float | None = None
    rate: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {self.rate}")
        q = self.latency_above_quantile
        if q is not None and not 0.0 < q < 1.0:
            raise ValueError(f"latency_above_quantile must be between 0 and 1 (exclusive), got {q}")
        if self.latency_min_count < 1:
            raise ValueError(f"latency_min_count must be at least 1, got {self.latency_min_count}")
        for name in ("latency_ms", "cost_usd"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")

    def decide(
        self,
        record: TraceRecord,
        *,
        rate_limited: bool,
        low_score: bool,
        guard_fired: bool,
        group_quantile_ms: float | None = None,
    ) -> str:
        """The rule that keeps this trace, or "" to drop its spans. `rate_limited` and `low_score` say what
        its spans showed as they were held (`PartitionSampler.hold`); `group_quantile_ms` is its group's
        latency quantile (`GroupLatencies.quantile_ms`), None when not known."""
        if self.keep_errors and record.error_count:
            return "error"
        if self.keep_rate_limits and rate_limited:
            return "rate_limit"
        if self.keep_guarded and guard_fired:
            return "guard"
        if self.latency_ms is not None and record.duration_ns > self.latency_ms * 1e6:
            return "latency"
        if group_quantile_ms is not None and record.duration_ns > group_quantile_ms * 1e6:
            return "latency_quantile"
        if self.cost_usd is not None and record.cost_usd > self.cost_usd:
            return "cost"
        if low_score:
            return "score"
        if keep_by_rate(record.trace_id, self.rate):
            return "rate"
        return ""


def _may_be_rate_limited(spans: list[AnySpan]) -> bool:
    """Cheap first look at a message (C loops): a rate limit is an ERROR span, an exception event or an
    `error.type` attribute (core/error_types.py), so a message with none of these needs no closer look."""
    if any(map(operator.eq, map(_status, spans), repeat("ERROR"))) or any(map(_events, spans)):
        return True
    return any(map(operator.contains, map(_attributes, spans), repeat("error.type")))


class _RawSpans(msgspec.Struct):
    """A `tracehouse.spans` message with each span left as its own bytes."""

    spans: list[msgspec.Raw]
    v: int = SCHEMA_VERSION


_raw_decoder = msgspec.msgpack.Decoder(_RawSpans)
_encoder = msgspec.msgpack.Encoder()


def raw_spans(value: bytes | None, spans: list[AnySpan]) -> list[msgspec.Raw]:
    """Each span's own bytes, in `spans`' order: copied out of the message when it holds exactly these
    spans (the usual case), else each span encoded again (a message with rejected, refused or duplicate
    spans). Bytes, not the decoded span: a third less memory, and nothing for the garbage collector."""
    if value is not None:
        try:
            raws = _raw_decoder.decode(value).spans
        except (msgspec.DecodeError, msgspec.ValidationError):
            raws = []
        if len(raws) == len(spans):
            return [raw.copy() for raw in raws]
    return [msgspec.Raw(_encoder.encode(span)) for span in spans]


def keep_by_rate(trace_id: str, rate: float) -> bool:
    """Whether a trace falls in the kept `rate` of all traces, from its id alone (every process agrees)."""
    if rate >= 1.0:
        return True
    return int(trace_id[16:], 16) < rate * _HASH_SPACE


def parse_sampling(document: str | Mapping[str, Any], source: str = "<string>") -> SamplingRules:
    """The `[sampling]` table of a rules document (TOML text or its parsed dict); defaults when absent."""
    if isinstance(document, str):
        try:
            document = tomllib.loads(document)
        except tomllib.TOMLDecodeError as exc:
            raise SamplingError(f"{source}: not valid TOML: {exc}") from None
    table = document.get("sampling", {})
    if not isinstance(table, Mapping):
        raise SamplingError(f"{source}: 'sampling' must be a table ([sampling])")
    try:
        return msgspec.convert(table, SamplingRules)
    except (msgspec.ValidationError, ValueError) as exc:
        raise SamplingError(f"{source}: [sampling]: {exc}") from None


def load_sampling(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> SamplingRules | None:
    """The rules when TRACEHOUSE_SAMPLING is on: the `[sampling]` table of the file TRACEHOUSE_ALERT_RULES
    names (defaults without a file or a table); None when sampling is off."""
    if not settings.get(settings.SAMPLING, env):
        return None
    path = path or settings.get(settings.ALERT_RULES, env)
    if not path:
        return SamplingRules()
    path = Path(path)
    return parse_sampling(path.read_text(encoding="utf-8"), source=str(path))


@dataclass
class SamplingStats:
    """Traces decided (first emission only) and kept per rule, for every partition of a worker."""

    decided: int = 0
    kept: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    kept_spans: int = 0
    dropped_spans: int = 0
    held_spans: int = 0  # spans held now, for the open traces (the memory sampling costs)

    @property
    def kept_traces(self) -> int:
        return sum(self.kept.values())

    def fractions(self) -> dict[str, float]:
        """Kept fraction per rule (of all traces decided), and in all ("kept")."""
        decided = max(self.decided, 1)
        out = {rule: count / decided for rule, count in self.kept.items()}
        out["kept"] = self.kept_traces / decided
        return out

    def summary(self) -> str:
        parts = ", ".join(f"{rule} {f:.1%}" for rule, f in self.fractions().items() if f or rule == "kept")
        return f"sampling: {self.decided} traces decided; kept {parts}; {self.held_spans} spans held"


class GroupLatencies:
    """One partition's latency quantile per group (root service, root name) in its newest closed windows,
    read from the windows' sketches when windows close (see the module's docstring)."""

    def __init__(self, quantile: float, min_count: int) -> None:
        self.quantile = quantile
        self.min_count = min_count
        self.window_seconds = 0
        # window start -> group -> quantile (groups with min_count spans only), the newest closed windows
        self._windows: dict[int, dict[tuple[str, str], float]] = {}
        self._newest_first: list[tuple[int, dict[tuple[str, str], float]]] = []  # the same, for lookups

    def refresh(
        self,
        window_seconds: int,
        closed: list[tuple[int, list[RollupPartialRecord]]],
        partials: list[RollupPartialRecord] | None = None,
    ) -> None:
        """Follow the newest closed windows (oldest first) after windows closed or were revised (`partials`:
        what the windows emitted; None: everything, as from a restored checkpoint). A newly closed window is
        read whole (one sketch per group, once a minute: ~25 ms at 1,000 groups); a revision re-reads only
        the groups its late spans touched, so late spans trickling in cost little."""
        self.window_seconds = window_seconds
        windows: dict[int, dict[tuple[str, str], float]] = {}
        for start, records in closed[-_QUANTILE_WINDOWS:]:
            known = self._windows.get(start)
            if known is None or partials is None:
                known = self._read(records, None)
            else:
                touched = {
                    (p.service, p.name)
                    for p in partials
                    if p.window_start == start and p.window_seconds == window_seconds
                }
                if touched:  # counts only grow: a group past min_count stays past it
                    known.update(self._read(records, touched))
            windows[start] = known
        self._windows = windows
        self._newest_first = sorted(windows.items(), reverse=True)

    def _read(
        self, records: list[RollupPartialRecord], groups: set[tuple[str, str]] | None
    ) -> dict[tuple[str, str], float]:
        """The quantile of each group (of `groups`; None: all) with `min_count` spans in a window's records,
        merged over the kinds and models."""
        merged: dict[tuple[str, str], LatencySketch] = {}
        for record in records:
            group = (record.service, record.name)
            if record.service == OTHER_KEY[0] or (groups is not None and group not in groups):
                continue  # the overflow group mixes every name
            sketch = LatencySketch.from_bytes(record.latency_sketch)
            held = merged.get(group)
            if held is None:
                merged[group] = sketch
            else:
                held.merge(sketch)
        return {
            group: sketch.quantile(self.quantile) for group, sketch in merged.items() if sketch.count >= self.min_count
        }

    def quantile_ms(self, record: TraceRecord) -> float | None:
        """The quantile of the trace's group in the newest window that starts before the trace's own (by
        its end time) and held `min_count` spans of the group; None without one."""
        if not self._newest_first:
            return None
        group = (record.service, record.root_name)
        own_start = record.end_time_ns // (self.window_seconds * _NS) * self.window_seconds
        for start, quantiles in self._newest_first:
            if start < own_start:
                value = quantiles.get(group)
                if value is not None:
                    return value
        return None


class PartitionSampler:
    """One partition's spans held until their trace is decided, and the decisions still needed for late
    spans. Driven by the partition's one task, like its assembler."""

    def __init__(self, rules: SamplingRules, revision_window_s: float, stats: SamplingStats) -> None:
        self.rules = rules
        self.revision_window_s = revision_window_s
        self.stats = stats
        self._held: defaultdict[str, list[msgspec.Raw]] = defaultdict(list)  # trace id -> its spans' bytes
        self._rate_limited: set[str] = set()  # open traces with a rate-limited span
        self._low_scored: set[str] = set()  # open traces with a span's score below `score_below`
        self._decided: dict[str, tuple[str, float]] = {}  # trace id -> (rule, when); insertion = time order
        q = rules.latency_above_quantile
        self.latencies = GroupLatencies(q, rules.latency_min_count) if q is not None else None

    def windows_closed(self, windows: Any, partials: list[RollupPartialRecord] | None = None) -> None:
        """The partition's windows emitted `partials` (closed or revised windows; None: restored from a
        checkpoint): re-read the groups' quantiles when the rule is on and a window of the size it reads
        changed. `windows` is a PartitionWindows (pipeline/partition_windows.py)."""
        latencies = self.latencies
        if latencies is None:
            return
        if partials is not None and latencies.window_seconds:
            size = latencies.window_seconds
            if not any(p.window_seconds == size for p in partials):
                return
        latencies.refresh(*windows.newest_closed(_QUANTILE_WINDOWS), partials)

    def hold(self, spans: list[AnySpan], value: bytes | None = None) -> None:
        """Keep the bytes of a message's new (not duplicate) spans until their traces are decided, and
        note what the rules will ask of them. `value` is the message, when `spans` came from it."""
        held = self._held
        for span, raw in zip(spans, raw_spans(value, spans), strict=True):
            held[span.trace_id].append(raw)
        self.stats.held_spans += len(spans)
        rules = self.rules
        if rules.keep_rate_limits and _may_be_rate_limited(spans):
            self._rate_limited.update(s.trace_id for s in spans if is_rate_limited(s))
        below = rules.score_below
        if below is not None and any(map(_scores, spans)):
            self._low_scored.update(
                s.trace_id for s in spans if any(c.value is not None and c.value < below for c in s.scores)
            )

    def decide(self, records: list[TraceRecord], guard_fired: Callable[[str], bool], now: float) -> list[msgspec.Raw]:
        """Mark each emitted record `sampled` (or not) and return the held span bytes of the kept ones. A
        revision follows the first emission's decision while it is remembered."""
        stats = self.stats
        decided = self._decided
        rate_limited, low_scored = self._rate_limited, self._low_scored
        latencies = self.latencies
        kept: list[msgspec.Raw] = []
        for record in records:
            trace_id = record.trace_id
            spans = self._held.pop(trace_id, [])
            stats.held_spans -= len(spans)
            previous = decided.pop(trace_id, None)
            if previous is not None:
                rule = previous[0]
                rate_limited.discard(trace_id)
                low_scored.discard(trace_id)
            else:
                rule = self.rules.decide(
                    record,
                    rate_limited=trace_id in rate_limited,
                    low_score=trace_id in low_scored,
                    guard_fired=guard_fired(trace_id),
                    group_quantile_ms=latencies.quantile_ms(record) if latencies is not None else None,
                )
                rate_limited.discard(trace_id)
                low_scored.discard(trace_id)
                stats.decided += 1
                if rule:
                    stats.kept[rule] += 1
            decided[trace_id] = (rule, now)
            record.sampled = bool(rule)
            record.sampled_by = rule
            if rule:
                kept += spans
                stats.kept_spans += len(spans)
            else:
                stats.dropped_spans += len(spans)
        self._expire(now)
        return kept

    def _expire(self, now: float) -> None:
        horizon = now - self.revision_window_s
        decided = self._decided
        while decided:
            trace_id, (_, when) = next(iter(decided.items()))
            if when > horizon:
                break
            del decided[trace_id]

    def forget(self) -> None:
        """The partition was revoked: its next owner replays and re-holds its open traces."""
        self.stats.held_spans -= sum(map(len, self._held.values()))
        self._held.clear()
        self._rate_limited.clear()
        self._low_scored.clear()
        self._decided.clear()


def encode_kept(spans: list[msgspec.Raw]) -> list[bytes]:
    """Kept spans' bytes as `tracehouse.spans` messages (a `SpanBatch`: the sink decodes them the same way)."""
    return [
        _encoder.encode({"spans": spans[i : i + SPANS_PER_MESSAGE], "v": SCHEMA_VERSION})
        for i in range(0, len(spans), SPANS_PER_MESSAGE)
    ]
