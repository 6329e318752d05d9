"""Alert rules: what to watch, loaded from a TOML file (or the built-in defaults), validated up front.

Public API:
    Rule                                   msgspec Struct, one rule (fields below)
    RuleError                              ValueError naming the rule and the field at fault
    load_rules(path, base_windows=(10, 60)) -> list[Rule]
    parse_rules(text_or_dict, base_windows=(10, 60), source="<string>") -> list[Rule]
    default_rules() -> list[Rule]
    load_alert_rules(path=None) -> list[Rule]   the file TRACEHOUSE_ALERT_RULES names, or the defaults
    METRICS, BASE_WINDOWS

A file holds `[[rules]]` tables:

    [[rules]]
    name = "llm-latency-p95"           # unique
    metric = "latency_p95_ms"          # one of METRICS
    window_seconds = 60                # a multiple of a rollup window size the worker computes
    comparison = ">"                   # ">" or "<"
    threshold = 5000                   # error_rate is a fraction: 0.05 means 5 %
    severity = "warning"               # info | warning | critical
    min_count = 20                     # fewer spans than this in the window: no verdict (not bad)
    for_windows = 1                    # consecutive bad evaluations before firing
    resolve_windows = 1                # consecutive good evaluations before resolving (default for_windows)
    group_by = ["service"]             # state and alerts per distinct value of these fields ([] = all)
    filters = { kind = "LLM", model = "gpt-4*" }   # exact values or globs on service, kind, name, model

Rules on scores (metric score_avg or score_count) name the score, and may count one value or label:

    [[rules]]
    name = "hallucinations"
    metric = "score_count"             # or score_avg: the average numeric value
    score = "hallucination"            # the score's name (exact or glob)
    value = 1                          # score_count only: count scores with this value (or label = "...")
    window_seconds = 300
    comparison = ">"
    threshold = 20
    group_by = ["service"]             # of service, name (the score's), model: the scored trace's

Rules are evaluated on the rollups' own windows: a rule's window is covered by consecutive rollup
windows of the largest size dividing it (60 s → one 1-minute rollup, 300 s → the last five, 3600 s → a
sliding hour of them, 30 s → three 10-second ones). That is why a rule's window must be a multiple of a
size the worker computes (`base_windows`), and why rules cost nothing per span.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from tracehouse.core import settings
from tracehouse.core.rollups import WINDOW_SIZES
from tracehouse.pipeline.budgets_rules import is_budget_rule
from tracehouse.pipeline.guard_rules import is_trace_rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SEVERITIES = ("info", "warning", "critical")
COMPARISONS = (">", "<")
GROUP_FIELDS = ("service", "kind", "name", "model")
BASE_WINDOWS: tuple[int, ...] = WINDOW_SIZES  # the sizes the worker rolls up into

Metric = Literal[
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate",
    "rate_limit_count",
    "error_count",
    "cost_usd",
    "count",
    "cost_per_hour_usd",
    "score_avg",
    "score_count",
]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]  # one list: the type is the source
# Rules on scores (core/scores.py), evaluated on the score rollups: `score` names the score (exact or glob),
# `score_count` may count only the scores with one `value` or one `label`. Their groups are the scored
# trace's service and model, and `name` is the score's name (in group_by; `score` filters it).
SCORE_METRICS = ("score_avg", "score_count")
SCORE_GROUP_FIELDS = ("service", "name", "model")
SCORE_FILTER_FIELDS = ("service", "model")


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """One validated rule. `base_seconds` is the rollup window size it is evaluated on."""

    name: str
    metric: Metric
    window_seconds: int
    comparison: Literal[">", "<"]
    threshold: float
    severity: Literal["info", "warning", "critical"] = "warning"
    filters: dict[str, str] = {}
    group_by: tuple[str, ...] = ("service",)
    min_count: int = 1
    for_windows: int = 1
    resolve_windows: int = 1  # in a file, defaults to for_windows
    base_seconds: int = 60
    score: str = ""  # score metrics: the score's name (exact or glob)
    score_value: float | None = None  # score_count: only scores with this numeric value
    score_label: str = ""  # score_count: only scores with this label

    @property
    def on_scores(self) -> bool:
        return self.metric in SCORE_METRICS

    @property
    def windows(self) -> int:
        """How many consecutive base windows one evaluation covers."""
        return self.window_seconds // self.base_seconds

    def matches(self, service: str, kind: str, name: str, model: str) -> bool:
        """Whether a rollup group passes this rule's filters (exact or glob, case-sensitive)."""
        values = {"service": service, "kind": kind, "name": name, "model": model}
        if self.score and not fnmatch.fnmatchcase(name, self.score):  # a score rule: `name` is the score's
            return False
        return all(fnmatch.fnmatchcase(values[field], pattern) for field, pattern in self.filters.items())


class RuleError(ValueError):
    """A rule is invalid; the message names the file, the rule and the field."""


_FIELDS = {
    "name",
    "type",  # "window" (the default); rules of type "trace" are pipeline/guard_rules.py's
    "metric",
    "window_seconds",
    "comparison",
    "threshold",
    "severity",
    "filters",
    "group_by",
    "min_count",
    "for_windows",
    "resolve_windows",
    "score",  # score metrics only
    "value",
    "label",
}


def _base_for(window_seconds: int, base_windows: Sequence[int]) -> int | None:
    fitting = [b for b in base_windows if window_seconds % b == 0]
    return max(fitting) if fitting else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rule_from_table(table: Any, index: int, base_windows: Sequence[int], source: str) -> Rule:
    label = f"{source}: rule #{index + 1}"
    if not isinstance(table, Mapping):
        raise RuleError(f"{label}: expected a table, got {type(table).__name__}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f"{label}: field 'name': required, a non-empty string")
    label = f"{source}: rule {name!r}"

    def fail(field: str, problem: str) -> RuleError:
        return RuleError(f"{label}: field '{field}': {problem}")

    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    if table.get("type", "window") != "window":
        raise fail("type", f"must be 'window' (the default), 'budget' or 'trace', got {table['type']!r}")
    for required in ("metric", "window_seconds", "comparison", "threshold"):
        if required not in table:
            raise fail(required, "required")
    metric = table["metric"]
    if metric not in METRICS:
        raise fail("metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    window = table["window_seconds"]
    if not _is_int(window) or window <= 0:
        raise fail("window_seconds", f"must be a positive integer, got {window!r}")
    base = _base_for(window, base_windows)
    if base is None:
        sizes = ", ".join(str(b) for b in base_windows)
        raise fail("window_seconds", f"{window} is not a multiple of a rollup window size ({sizes})")
    comparison = table["comparison"]
    if comparison not in COMPARISONS:
        raise fail("comparison", f"must be '>' or '<', got {comparison!r}")
    threshold = table["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise fail("threshold", f"must be a number, got {threshold!r}")
    if metric == "error_rate" and not 0 <= threshold <= 1:
        raise fail("threshold", f"error_rate is a fraction between 0 and 1 (0.05 = 5%), got {threshold!r}")
    severity = table.get("severity", "warning")
    if severity not in SEVERITIES:
        raise fail("severity", f"must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    filters = table.get("filters", {})
    if not isinstance(filters, Mapping):
        raise fail("filters", 'must be a table such as { kind = "LLM" }')
    for field, pattern in filters.items():
        if field not in GROUP_FIELDS:
            raise fail(f"filters.{field}", f"can filter only on {', '.join(GROUP_FIELDS)}")
        if not isinstance(pattern, str) or not pattern:
            raise fail(f"filters.{field}", f"must be a non-empty string (exact or glob), got {pattern!r}")
    on_scores = metric in SCORE_METRICS
    score, score_value, score_label = table.get("score", ""), table.get("value"), table.get("label", "")
    if on_scores:
        if not isinstance(score, str) or not score:
            raise fail("score", f'required for {metric}: the score\'s name (exact or glob), e.g. "user_feedback"')
        if metric != "score_count" and (score_value is not None or "label" in table):
            raise fail("value" if score_value is not None else "label", "only score_count counts one value or label")
        if score_value is not None and "label" in table:
            raise fail("label", "give `value` or `label`, not both")
        if score_value is not None and (isinstance(score_value, bool) or not isinstance(score_value, (int, float))):
            raise fail("value", f"must be a number, got {score_value!r}")
        if "label" in table and (not isinstance(score_label, str) or not score_label):
            raise fail("label", f"must be a non-empty string, got {score_label!r}")
        bad_filter = next((f for f in filters if f not in SCORE_FILTER_FIELDS), None)
        if bad_filter is not None:
            fields = ", ".join(SCORE_FILTER_FIELDS)
            raise fail(f"filters.{bad_filter}", f"a score rule filters on {fields} (and names its score in `score`)")
    else:
        extra = next((f for f in ("score", "value", "label") if f in table), None)
        if extra is not None:
            raise fail(extra, f"only for the score metrics ({', '.join(SCORE_METRICS)})")
    group_fields = SCORE_GROUP_FIELDS if on_scores else GROUP_FIELDS
    group_by = table.get("group_by", ["service"])
    if not isinstance(group_by, list) or any(g not in group_fields for g in group_by):
        raise fail("group_by", f"must be a list of {', '.join(group_fields)}, got {group_by!r}")
    if len(set(group_by)) != len(group_by):
        raise fail("group_by", f"repeats a field: {group_by!r}")
    counts: dict[str, int] = {}
    for field, least in (("min_count", 0), ("for_windows", 1), ("resolve_windows", 1)):
        default = counts.get("for_windows", 1) if field == "resolve_windows" else 1
        value = table.get(field, default)
        if not _is_int(value) or value < least:
            raise fail(field, f"must be an integer >= {least}, got {value!r}")
        counts[field] = value
    return Rule(
        name=name,
        metric=metric,
        window_seconds=window,
        comparison=comparison,
        threshold=float(threshold),
        severity=severity,
        filters=dict(filters),
        group_by=tuple(g for g in GROUP_FIELDS if g in group_by),  # canonical order
        min_count=counts["min_count"],
        for_windows=counts["for_windows"],
        resolve_windows=counts["resolve_windows"],
        base_seconds=base,
        score=score if on_scores else "",
        score_value=float(score_value) if score_value is not None else None,
        score_label=score_label if on_scores else "",
    )


def parse_rules(
    document: str | Mapping[str, Any], base_windows: Sequence[int] = BASE_WINDOWS, source: str = "<string>"
) -> list[Rule]:
    """Rules from TOML text (or its parsed dict). Raises RuleError on the first problem."""
    if isinstance(document, str):
        try:
            document = tomllib.loads(document)
        except tomllib.TOMLDecodeError as exc:
            raise RuleError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(document) - {"rules", "sampling"})  # [sampling]: pipeline/sampling.py
    if extra:
        raise RuleError(f"{source}: unknown top-level key {extra[0]!r} (rules go in [[rules]] tables)")
    tables = document.get("rules", [])
    if not isinstance(tables, list):
        raise RuleError(f"{source}: 'rules' must be an array of tables ([[rules]])")
    # Rules of type "trace" (in-flight guards) are evaluated on open traces: pipeline/guard_rules.py;
    # rules of type "budget" (per user or session) are pipeline/budgets_rules.py's.
    rules = [
        _rule_from_table(t, i, base_windows, source)
        for i, t in enumerate(tables)
        if not is_trace_rule(t) and not is_budget_rule(t)
    ]
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise RuleError(f"{source}: rule {rule.name!r}: field 'name': used by two rules")
        seen.add(rule.name)
    return rules


def load_rules(path: str | Path, base_windows: Sequence[int] = BASE_WINDOWS) -> list[Rule]:
    """Rules from a TOML file."""
    path = Path(path)
    return parse_rules(path.read_text(encoding="utf-8"), base_windows, source=str(path))


_DEFAULTS = {
    "rules": [
        {
            "name": "llm-latency-p95",
            "metric": "latency_p95_ms",
            "window_seconds": 60,
            "comparison": ">",
            "threshold": 5000,
            "severity": "warning",
            "filters": {"kind": "LLM"},
            "min_count": 10,
        },
        {
            "name": "error-rate",
            "metric": "error_rate",
            "window_seconds": 300,
            "comparison": ">",
            "threshold": 0.05,
            "severity": "critical",
            "min_count": 20,
        },
        {
            "name": "rate-limits",
            "metric": "rate_limit_count",
            "window_seconds": 60,
            "comparison": ">",
            "threshold": 10,
            "severity": "warning",
        },
        {
            "name": "cost-per-hour",
            "metric": "cost_per_hour_usd",
            "window_seconds": 3600,
            "comparison": ">",
            "threshold": 50,
            "severity": "warning",
        },
    ]
}


def default_rules(base_windows: Sequence[int] = BASE_WINDOWS) -> list[Rule]:
    """The built-in rules, used when no file is given: p95 LLM latency > 5 s over 1 min, error rate
    > 5 % over 5 min, > 10 rate-limited calls a minute, cost > $50 an hour — each per service."""
    return parse_rules(_DEFAULTS, base_windows, source="built-in rules")


def load_alert_rules(path: str | None = None) -> list[Rule]:
    """Rules from `TRACEHOUSE_ALERT_RULES` (a TOML file) or the built-in defaults."""
    path = path or settings.get(settings.ALERT_RULES)
    return load_rules(Path(path)) if path else default_rules()
