"""Rules of type `budget`: a limit per user or per session over a window, from the same TOML file as the
window rules (pipeline/alert_rules.py) and the trace rules (pipeline/guard_rules.py), validated up front.

Public API:
    BudgetRule                             msgspec Struct, one rule (fields below)
    BudgetRuleError                        ValueError naming the file, the rule and the field at fault
    BUDGET_METRICS, BUDGET_KEYS, DEFAULT_CAPACITY
    is_budget_rule(table) -> bool          whether a `[[rules]]` table is of type `budget`
    parse_budget_rules(text_or_dict, source="<string>") -> list[BudgetRule]
    load_budget_rules(path=None) -> list[BudgetRule]   from TRACEHOUSE_ALERT_RULES; none by default

A budget rule is a `[[rules]]` table with `type = "budget"`:

    [[rules]]
    name = "user-cost-per-hour"        # unique among all rules of the file
    type = "budget"
    key = "user"                       # "user" (the span's or its trace's user_id) or "session"
    metric = "cost_usd"                # cost_usd | llm_calls | total_tokens, summed per key and window
    window_seconds = 3600              # tumbling windows aligned to the epoch, by span end time
    threshold = 5.0                    # fires when a key's sum goes above it
    severity = "warning"               # info | warning | critical (default warning)
    capacity = 1000                    # keys tracked per window and partition (space-saving top-k)

There are no budget rules by default: without one, the worker does no per-key work at all.
"""

from __future__ import annotations

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

BUDGET_RULE_TYPE = "budget"
BudgetMetric = Literal["cost_usd", "llm_calls", "total_tokens"]
BudgetKey = Literal["user", "session"]
BUDGET_METRICS: tuple[str, ...] = BudgetMetric.__args__  # type: ignore[attr-defined]
BUDGET_KEYS: tuple[str, ...] = BudgetKey.__args__  # type: ignore[attr-defined]
DEFAULT_CAPACITY = 1000
_SEVERITIES = ("info", "warning", "critical")
_FIELDS = {"name", "type", "key", "metric", "window_seconds", "threshold", "severity", "capacity"}


class BudgetRule(msgspec.Struct, frozen=True, kw_only=True):
    """One validated budget rule: a key's sum of `metric` in one window breaches it when above `threshold`."""

    name: str
    key: BudgetKey
    metric: BudgetMetric
    window_seconds: int
    threshold: float
    severity: Literal["info", "warning", "critical"] = "warning"
    capacity: int = DEFAULT_CAPACITY


class BudgetRuleError(ValueError):
    """A budget rule is invalid; the message names the file, the rule and the field (as RuleError does)."""


def is_budget_rule(table: Any) -> bool:
    return isinstance(table, Mapping) and table.get("type") == BUDGET_RULE_TYPE


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _rule_from_table(table: Mapping[str, Any], source: str) -> BudgetRule:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BudgetRuleError(f"{source}: a rule of type 'budget': field 'name': required, a non-empty string")

    def fail(field: str, problem: str) -> BudgetRuleError:
        return BudgetRuleError(f"{source}: rule {name!r}: field '{field}': {problem}")

    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field for a rule of type 'budget' (known: {', '.join(sorted(_FIELDS))})")
    for required in ("key", "metric", "window_seconds", "threshold"):
        if required not in table:
            raise fail(required, "required")
    key = table["key"]
    if key not in BUDGET_KEYS:
        raise fail("key", f"must be one of {', '.join(BUDGET_KEYS)}, got {key!r}")
    metric = table["metric"]
    if metric not in BUDGET_METRICS:
        raise fail("metric", f"{metric!r} is not one of {', '.join(BUDGET_METRICS)}")
    window = table["window_seconds"]
    if not _positive_int(window):
        raise fail("window_seconds", f"must be a positive integer, got {window!r}")
    threshold = table["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise fail("threshold", f"must be a number >= 0, got {threshold!r}")
    severity = table.get("severity", "warning")
    if severity not in _SEVERITIES:
        raise fail("severity", f"must be one of {', '.join(_SEVERITIES)}, got {severity!r}")
    capacity = table.get("capacity", DEFAULT_CAPACITY)
    if not _positive_int(capacity):
        raise fail("capacity", f"must be a positive integer, got {capacity!r}")
    return BudgetRule(
        name=name,
        key=key,
        metric=metric,
        window_seconds=window,
        threshold=float(threshold),
        severity=severity,
        capacity=capacity,
    )


def parse_budget_rules(document: str | Mapping[str, Any], source: str = "<string>") -> list[BudgetRule]:
    """The `type = "budget"` rules of a rules document (TOML text or its parsed dict); the other rules in
    it are alert_rules' and guard_rules' to validate. Raises BudgetRuleError on the first problem."""
    tables = rule_tables(document, source, BudgetRuleError)
    rules = [_rule_from_table(t, source) for t in tables if is_budget_rule(t)]
    refuse_shared_names(rules, tables, source, BudgetRuleError)
    return rules


def load_budget_rules(path: str | Path | None = None) -> list[BudgetRule]:
    """Budget rules from `TRACEHOUSE_ALERT_RULES` (a TOML file); none without one."""
    path = path or settings.get(settings.ALERT_RULES)
    if not path:
        return []
    return parse_budget_rules(Path(path).read_text(encoding="utf-8"), source=str(path))
