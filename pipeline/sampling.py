"""Tail sampling: which traces keep their spans in storage, decided by the worker on the whole trace.

Public API:
    SamplingRules                          msgspec Struct, the `[sampling]` table of the rules' TOML
    SamplingError                          ValueError naming the field at fault
    parse_sampling(text_or_dict, source) -> SamplingRules
    load_sampling(path=None) -> SamplingRules | None   None when TRACEHOUSE_SAMPLING is off
    keep_by_rate(trace_id, rate) -> bool   the same answer in every process
    PartitionSampler                       one partition's held spans and decisions
    SamplingStats                          traces decided and kept per rule (the worker's stats, `top`)
    encode_kept(spans) -> list[bytes]      `tracehouse.spans.kept` messages (the `tracehouse.spans` format)

The rules live beside the alert rules (TRACEHOUSE_ALERT_RULES):

    [sampling]
    keep_errors = true          # a span in error
    keep_rate_limits = true     # a rate-limited call (core/error_types.py, as `rate_limit_count`)
    keep_guarded = true         # a trace rule (in-flight guard, pipeline/guards.py) fired on the trace
    latency_ms = 30000          # the trace lasted longer (unset: no such rule)
    cost_usd = 0.50             # the trace cost more (unset: no such rule)
    score_below = 0.5           # a score carried by one of its spans is lower (unset: no such rule)
    rate = 0.10                 # the fraction of all other traces kept

A trace is kept by the first rule that holds, in that order, and its record says which (`sampled_by`);
`sampled` is false and `sampled_by` "" when none does. Rules see the trace as the worker emits it: the
scores that come later on `tracehouse.scores` are not in it (keeping a trace for them would mean holding
its spans until a score may come: no bound), nor is its group's p95 (see the README's cost notes).

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
from tracehouse.core.schema import SCHEMA_VERSION, TraceRecord
from tracehouse.pipeline.span_view import AnySpan
from tracehouse.pipeline.windows import is_rate_limited

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The keep rules, in the order they are tried; "rate" is the share of the rest.
RULES = ("error", "rate_limit", "guard", "latency", "cost", "score", "rate")
SPANS_PER_MESSAGE = 500  # kept spans per `tracehouse.spans.kept` message (~1 MB of the anchor span shape)
_HASH_SPACE = 1 << 64
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
    cost_usd: float | None = None
    score_below: float | None = None
    rate: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {self.rate}")
        for name in ("latency_ms", "cost_usd"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")

    def decide(self, record: TraceRecord, *, rate_limited: bool, low_score: bool, guard_fired: bool) -> str:
        """The rule that keeps this trace, or "" to drop its spans. `rate_limited` and `low_score` say what
        its spans showed as they were held (`PartitionSampler.hold`)."""
        if self.keep_errors and record.error_count:
            return "error"
        if self.keep_rate_limits and rate_limited:
            return "rate_limit"
        if self.keep_guarded and guard_fired:
            return "guard"
        if self.latency_ms is not None and record.duration_ns > self.latency_ms * 1e6:
            return "latency"
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
