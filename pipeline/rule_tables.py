"""The `[[rules]]` tables of a rules document, shared by the rule kinds that live beside the window rules
(pipeline/guard_rules.py, pipeline/budgets_rules.py): each reads the same file, picks its own tables and
must refuse a name another rule of the file also uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class Named(Protocol):
    @property
    def name(self) -> str: ...


def rule_tables(document: str | Mapping[str, Any], source: str, error: type[ValueError]) -> list[Any]:
    """The `rules` array of TOML text (or its parsed dict); `error` names `source` on the first problem."""
    if isinstance(document, str):
        try:
            document = tomllib.loads(document)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{source}: not valid TOML: {exc}") from None
    tables = document.get("rules", [])
    if not isinstance(tables, list):
        raise error(f"{source}: 'rules' must be an array of tables ([[rules]])")
    return tables


def refuse_shared_names(rules: Sequence[Named], tables: list[Any], source: str, error: type[ValueError]) -> None:
    """A rule's name must be its own among every rule of the file, whatever their kind."""
    names = [t.get("name") for t in tables if isinstance(t, Mapping)]
    for rule in rules:
        if names.count(rule.name) > 1:
            raise error(f"{source}: rule {rule.name!r}: field 'name': used by two rules")
