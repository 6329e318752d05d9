"""Rules of type `trace` (in-flight guards): what to watch in each open trace, from the same TOML file as
the window rules (pipeline/alert_rules.py), validated up front.

Public API:
    TraceRule                              msgspec Struct, one rule (fields below)
    TRACE_METRICS                          what a trace rule can watch
    is_trace_rule(table) -> bool           whether a `[[rules]]` table is of type `trace`
    parse_trace_rules(text_or_dict, source="<string>") -> list[TraceRule]
    default_trace_rules() -> list[TraceRule]
    load_trace_rules(path=None) -> list[TraceRule]   the file TRACEHOUSE_ALERT_RULES names, or the defaults

A trace rule is a `[[rules]]` table with `type = "trace"`:

    [[rules]]
    name = "tool-loop"                 # unique among all rules of the file
    type = "trace"
    metric = "tool_repeats"            # one of TRACE_METRICS
    comparison = ">="                  # ">" (default) or ">="
    threshold = 5
    severity = "critical"              # info | warning | critical (default warning)
    filters = { service = "support-*" }   # exact or glob on the service of the span that breaches it

Metrics, each a running value of one open trace, updated as its spans arrive:
    llm_calls            spans of kind LLM
    total_tokens         tokens of all its spans
    cost_usd             cost of all its spans (as the worker prices them)
    tool_repeats         the most times one tool was called with one input (spans of kind TOOL, keyed by
                         name and a hash of `input`): a loop
    depth                the longest chain of parent and child spans seen so far (the root is depth 1)
    retries_after_error  spans with the name of a span that ended in error, started after it ended: the
                         most for one name

Such a rule fires at most once per trace, when the span that breaches it is processed; it never resolves.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from tracehouse.core import settings
from tracehouse.pipeline.rule_tables import refuse_shared_names, rule_tables

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10
    pass

TRACE_RULE_TYPE = "trace"

TraceMetric = Literal["llm_calls", "total_tokens", "cost_usd", "tool_repeats", "depth", "retries_after_error"]
TRACE_METRICS: tuple[str, ...] = TraceMetric.__args__  # type: ignore[attr-defined]
_SEVERITIES = ("info", "warning", "critical")
_FIELDS = {"name", "type", "metric", "comparison", "threshold", "severity", "filters"}
_FILTER_FIELDS = ("service",)


class TraceRule(msgspec.Struct, frozen=True, kw_only=True):
    """One validated trace rule; it breaches when `value > threshold` (or `>=` with `comparison`)."""

    name: str
    metric: TraceMetric
    threshold: float
    comparison: Literal[">", ">="] = ">"
    severity: Literal["info", "warning", "critical"] = "warning"
    filters: dict[str, str] = {}

    def breached(self, value: float) -> bool:
        return value >= self.threshold if self.comparison == ">=" else value > self.threshold

    def matches(self, service: str) -> bool:
        pattern = self.filters.get("service")
        return pattern is None or fnmatch.fnmatchcase(service, pattern)


class TraceRuleError(ValueError):
    """A trace rule is invalid; the message names the file, the rule and the field (as RuleError does)."""


def is_trace_rule(table: Any) -> bool:
    return isinstance(table, Mapping) and table.get("type") == TRACE_RULE_TYPE


def _rule_from_table(table: Mapping[str, Any], source: str) -> TraceRule:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TraceRuleError(f"{source}: a rule of type 'trace': field 'name': required, a non-empty string")

    def fail(field: str, problem: str) -> TraceRuleError:
        return TraceRuleError(f"{source}: rule {name!r}: field '{field}': {problem}")

    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field for a rule of type 'trace' (known: {', '.join(sorted(_FIELDS))})")
    for required in ("metric", "threshold"):
        if required not in table:
            raise fail(required, "required")
    metric = table["metric"]
    if metric not in TRACE_METRICS:
        raise fail("metric", f"{metric!r} is not one of {', '.join(TRACE_METRICS)}")
    threshold = table["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise fail("threshold", f"must be a number >= 0, got {threshold!r}")
    comparison = table.get("comparison", ">")
    if comparison not in (">", ">="):
        raise fail("comparison", f"must be '>' or '>=' (a trace's values only grow), got {comparison!r}")
    severity = table.get("severity", "warning")
    if severity not in _SEVERITIES:
        raise fail("severity", f"must be one of {', '.join(_SEVERITIES)}, got {severity!r}")
    filters = table.get("filters", {})
    if not isinstance(filters, Mapping):
        raise fail("filters", 'must be a table such as { service = "support-bot" }')
    for field, pattern in filters.items():
        if field not in _FILTER_FIELDS:
            raise fail(f"filters.{field}", f"a trace rule can filter only on {', '.join(_FILTER_FIELDS)}")
        if not isinstance(pattern, str) or not pattern:
            raise fail(f"filters.{field}", f"must be a non-empty string (exact or glob), got {pattern!r}")
    return TraceRule(
        name=name,
        metric=metric,
        threshold=float(threshold),
        comparison=comparison,
        severity=severity,
        filters=dict(filters),
    )


def parse_trace_rules(document: str | Mapping[str, Any], source: str = "<string>") -> list[TraceRule]:
    """The `type = "trace"` rules of a rules document (TOML text or its parsed dict); the window rules in
    it are pipeline/alert_rules.py's to validate. Raises TraceRuleError on the first problem."""
    tables = rule_tables(document, source, TraceRuleError)
    rules = [_rule_from_table(t, source) for t in tables if is_trace_rule(t)]
    refuse_shared_names(rules, tables, source, TraceRuleError)
    return rules


# The built-in guard: one tool called with one input five times in a trace is an agent in a loop.
DEFAULT_TRACE_RULES: list[dict[str, Any]] = [
    {
        "name": "tool-loop",
        "type": TRACE_RULE_TYPE,
        "metric": "tool_repeats",
        "comparison": ">=",
        "threshold": 5,
        "severity": "critical",
    }
]


def default_trace_rules() -> list[TraceRule]:
    return parse_trace_rules({"rules": DEFAULT_TRACE_RULES}, source="built-in rules")


def load_trace_rules(path: str | Path | None = None) -> list[TraceRule]:
    """Trace rules from `TRACEHOUSE_ALERT_RULES` (a TOML file) or the built-in defaults."""
    path = path or settings.get(settings.ALERT_RULES)
    if not path:
        return default_trace_rules()
    return parse_trace_rules(Path(path).read_text(encoding="utf-8"), source=str(path))
