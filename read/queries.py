"""Named, parameterised SQL: the one loader of the read side's one SQL set (`tracehouse query NAME`, the
`trace` and `session` commands and the web API all run these).

Each `sql/*.sql` file beside this module is one query, readable and copyable as it is: a header of
`-- name:`, `-- description:` and `-- params:` lines, then ClickHouse SQL whose inputs are bound
parameters (`{name:Type}`) only — user input is never formatted into the text. `since` values such as
"15m", "1h" or "7d" become the `since_seconds` parameter (tracehouse.read.times parses them).
The queries only the web API runs are named `web-*`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tracehouse.read.times import parse_duration

_PARAM = re.compile(r"^\s*(\w+)\s+([\w()]+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: str
    default: str

    def convert(self, value: Any) -> Any:
        if self.type.startswith(("UInt", "Int")):
            return int(value)
        if self.type.startswith("Float"):
            return float(value)
        return str(value)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[QueryParam, ...]
    sql: str

    def bind(self, values: dict[str, Any]) -> dict[str, Any]:
        """Parameters for the driver: defaults, then the given values (with `since` -> `since_seconds`)."""
        given = {k: v for k, v in values.items() if v is not None}
        if "since" in given:
            given["since_seconds"] = parse_duration(str(given.pop("since")))
        known = {p.name for p in self.params}
        unknown = set(given) - known
        if unknown:
            raise ValueError(f"query {self.name} takes {sorted(known)}, not {sorted(unknown)}")
        bound: dict[str, Any] = {}
        for param in self.params:
            raw = given.get(param.name, _unquote(param.default))
            bound[param.name] = param.convert(raw)
        return bound


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def parse_query(text: str) -> NamedQuery:
    header: dict[str, str] = {}
    body: list[str] = []
    for line in text.splitlines():
        if not body and line.startswith("--"):
            key, _, value = line[2:].partition(":")
            header[key.strip()] = value.strip()
        else:
            body.append(line)
    params = []
    for item in filter(None, (p.strip() for p in header.get("params", "").split(","))):
        match = _PARAM.match(item)
        if not match:
            raise ValueError(f"bad params entry {item!r} in query {header.get('name')}")
        params.append(QueryParam(*match.groups()))
    return NamedQuery(header["name"], header.get("description", ""), tuple(params), "\n".join(body).strip())


def query_files() -> dict[str, Any]:
    """Query name -> the .sql file it comes from (the file users copy, e.g. into Grafana)."""
    found: dict[str, Any] = {}
    for entry in sorted((resources.files("tracehouse.read") / "sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            name = parse_query(entry.read_text(encoding="utf-8")).name
            if name in found:
                raise ValueError(f"two queries are named {name}: {found[name].name} and {entry.name}")
            found[name] = entry
    return found


def load_queries() -> dict[str, NamedQuery]:
    return {name: parse_query(entry.read_text(encoding="utf-8")) for name, entry in query_files().items()}


QUERIES: dict[str, NamedQuery] = load_queries()


def run_query(client: Any, query: NamedQuery, values: dict[str, Any] | None = None) -> Any:
    """Run a named query with a clickhouse-connect sync client; returns its QueryResult."""
    return client.query(query.sql, parameters=query.bind(values or {}))


def query_rows(client: Any, query: NamedQuery, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A named query's rows as dicts (column name -> value), with a clickhouse-connect sync client."""
    result = run_query(client, query, values)
    columns = result.column_names
    return [dict(zip(columns, row, strict=True)) for row in result.result_rows]


async def run_query_async(client: Any, query: NamedQuery, values: dict[str, Any] | None = None) -> Any:
    return await client.query(query.sql, parameters=query.bind(values or {}))
