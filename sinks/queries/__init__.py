"""Named, parameterised SQL for the questions tracing answers (`tracehouse query NAME`).

Each `*.sql` file beside this module is one query, readable and copyable as it is: a header of
`-- name:`, `-- description:` and `-- params:` lines, then ClickHouse SQL whose inputs are bound
parameters (`{name:Type}`) only — user input is never formatted into the text. `since` values such as
"15m", "1h" or "7d" become the `since_seconds` parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_PARAM = re.compile(r"^\s*(\w+)\s+([\w()]+)\s*=\s*(.*?)\s*$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d', '2w' or plain seconds -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 1h, 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


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


def load_queries() -> dict[str, NamedQuery]:
    found = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            query = parse_query(entry.read_text(encoding="utf-8"))
            found[query.name] = query
    return found


QUERIES: dict[str, NamedQuery] = load_queries()


def run_query(client: Any, query: NamedQuery, values: dict[str, Any] | None = None) -> Any:
    """Run a named query with a clickhouse-connect sync client; returns its QueryResult."""
    return client.query(query.sql, parameters=query.bind(values or {}))


async def run_query_async(client: Any, query: NamedQuery, values: dict[str, Any] | None = None) -> Any:
    return await client.query(query.sql, parameters=query.bind(values or {}))
