"""Prices LLM calls from token usage when a span does not carry its own cost.

Every token class has its own price: cached input tokens (cache reads) are billed at a discount, tokens
written to a provider's prompt cache at a premium (Anthropic: 1.25x input), and reasoning tokens as output
(the provider bills them so), which is where tools that price only `input + output` go wrong. An unknown
model is flagged (`cost_source = "unknown_model"`), never silently priced at zero.

The built-in table (DEFAULT_PRICES) can be overridden or extended by a user price file (TOML, named by
`TRACEHOUSE_PRICES`, loaded by `configured_prices`: the worker, the sink and `tracehouse reprice` all load
it through that one function). A file entry may carry an `effective_from` date, and a model may have several
entries: a span is priced by the entry in effect at its start time, so a price change on the 1st of the
month leaves the calls made before it at the old price. The table's version is the file's declared
`version`, else derived from its content (`<built-in version>+<hash>`), so every process that reads the
same file agrees on it without talking to the others; spans and traces record the version they were
priced with, and `tracehouse reprice` brings stored costs to the current version.

The cost arithmetic exists twice, once in Python (`usage_cost`, per span in the worker and the sink) and
once in SQL (`cost_sql`, for re-pricing stored spans inside ClickHouse); they sit side by side here and
perform the same float operations in the same order, so both give the same number to the last bit
(tests/integration/test_pricing.py holds them to it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from tracehouse.core import settings
from tracehouse.core.schema import TokenUsage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli comes with the pipeline and sinks extras)
    import tomli as tomllib

PRICE_TABLE_VERSION = "2026-12-01"

CostSource = Literal["span", "price_table", "unknown_model", "none"]
TABLE_SOURCES: tuple[CostSource, ...] = ("price_table", "unknown_model")  # costs `reprice` may change

ALWAYS = -(2**63)  # effective_from of an entry without a date (Int64's least value, as ClickHouse sees it)
_NS = 1_000_000_000


class ModelPrice(msgspec.Struct, frozen=True):
    """USD per million tokens, by class."""

    input: float
    output: float
    cached_input: float | None = None  # cache reads; None: same as input
    reasoning: float | None = None  # None: same as output
    cache_write: float | None = None  # tokens written to the prompt cache; None: same as input

    def rates(self) -> tuple[float, float, float, float, float]:
        """(input, cache read, cache write, output, reasoning) with the defaults filled in."""
        cached = self.input if self.cached_input is None else self.cached_input
        write = self.input if self.cache_write is None else self.cache_write
        reasoning = self.output if self.reasoning is None else self.reasoning
        return self.input, cached, write, self.output, reasoning


# USD per 1M tokens. Keys are matched exactly, then by longest prefix (dated model names).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60, cached_input=0.10),
    "o3": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "o4-mini": ModelPrice(input=1.10, output=4.40, cached_input=0.275),
    "gpt-5": ModelPrice(input=1.25, output=10.00, cached_input=0.125),
    "gpt-5-mini": ModelPrice(input=0.25, output=2.00, cached_input=0.025),
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00, cached_input=0.30, cache_write=3.75),
    "claude-opus-4": ModelPrice(input=15.00, output=75.00, cached_input=1.50, cache_write=18.75),
    "claude-3-5-haiku": ModelPrice(input=0.80, output=4.00, cached_input=0.08, cache_write=1.00),
    "gemini-2.5-pro": ModelPrice(input=1.25, output=10.00, cached_input=0.31),
    "gemini-2.5-flash": ModelPrice(input=0.30, output=2.50, cached_input=0.075),
    "text-embedding-3-small": ModelPrice(input=0.02, output=0.0),
    "text-embedding-3-large": ModelPrice(input=0.13, output=0.0),
    "rerank-english-v3.0": ModelPrice(input=0.0, output=0.0),
}

# A model's prices over time: (effective_from_ns, price), newest first, the last one from ALWAYS; a price
# of None is a stretch of time in which the model is unknown.
Schedule = tuple[tuple[int, ModelPrice | None], ...]


Rates = tuple[float, float, float, float, float]  # ModelPrice.rates()


def usage_cost(price: ModelPrice, input: int, output: int, cached: int, reasoning: int, cache_write: int) -> float:
    """USD for these token counts. `input` includes cache reads and writes, `output` includes reasoning (as
    providers report them); a class larger than what includes it is cut to fit. Mirrored by `cost_sql`."""
    return _cost(price.rates(), input, output, cached, reasoning, cache_write)


def _cost(rates: Rates, input: int, output: int, cached: int, reasoning: int, cache_write: int) -> float:
    rate_in, rate_cached, rate_write, rate_out, rate_reasoning = rates
    cached = min(cached, input)
    write = min(cache_write, input - cached)
    reasoning = min(reasoning, output)
    micro = (
        (input - cached - write) * rate_in
        + cached * rate_cached
        + write * rate_write
        + (output - reasoning) * rate_out
        + reasoning * rate_reasoning
    )
    return micro / 1_000_000


def cost_sql(price: ModelPrice, tag: str) -> tuple[str, dict[str, float]]:
    """`usage_cost` as a ClickHouse expression over the `spans` columns, its rates as bound parameters
    named after `tag`: the same operations in the same order, so the two agree exactly."""
    cached = "least(cached_tokens, input_tokens)"
    write = f"least(cache_write_tokens, input_tokens - {cached})"
    reasoning = "least(reasoning_tokens, output_tokens)"
    names = [f"{tag}_{cls}" for cls in ("in", "cached", "write", "out", "reasoning")]
    rin, rcached, rwrite, rout, rreasoning = (f"{{{name}:Float64}}" for name in names)
    expression = (
        f"((input_tokens - {cached} - {write}) * {rin} + {cached} * {rcached} + {write} * {rwrite}"
        f" + (output_tokens - {reasoning}) * {rout} + {reasoning} * {rreasoning}) / 1000000"
    )
    return expression, dict(zip(names, price.rates(), strict=True))


class PriceTable:
    """Looks up a model's prices (exact name, else longest known prefix, at a time) and prices a usage.

    `history` adds dated entries to `prices` (model -> [(effective_from_ns, price), ...]); `prices` alone is
    a table without dates, as the built-in one.
    """

    def __init__(
        self,
        prices: Mapping[str, ModelPrice] | None = None,
        version: str = PRICE_TABLE_VERSION,
        *,
        history: Mapping[str, list[tuple[int, ModelPrice]]] | None = None,
    ):
        entries: dict[str, dict[int, ModelPrice]] = {}
        for model, price in (DEFAULT_PRICES if prices is None else prices).items():
            entries.setdefault(model, {})[ALWAYS] = price
        for model, dated in (history or {}).items():
            for since, price in dated:
                entries.setdefault(model, {})[since] = price
        # model -> entries oldest first
        self.entries: dict[str, tuple[tuple[int, ModelPrice], ...]] = {
            model: tuple(sorted(by_time.items())) for model, by_time in entries.items()
        }
        self.prices = {model: dated[-1][1] for model, dated in self.entries.items()}  # the newest of each
        self.version = version
        self._by_length = sorted(self.entries, key=len, reverse=True)
        self._schedules: dict[str, Schedule] = {}
        self._undated: dict[str, Rates | None] = {}  # models with one price for all time -> rates

    def candidates(self, model: str) -> list[str]:
        """The table's keys that may price `model`, best first: the exact name, the name without a provider
        prefix and lower-cased ("openai/GPT-4o" -> "gpt-4o"), then every key it starts with, longest first."""
        found = [model] if model in self.entries else []
        name = model.lower().rsplit("/", 1)[-1]
        if name in self.entries and name not in found:
            found.append(name)
        found.extend(key for key in self._by_length if name.startswith(key) and key not in found)
        return found

    def schedule(self, model: str) -> Schedule:
        """Which price applies to `model` from when: at each date some candidate's entry starts, the best
        candidate with an entry in effect wins (a dated entry of "gpt-4o-2026" takes over from the
        undated "gpt-4o" only from its date)."""
        known = self._schedules.get(model)
        if known is not None:
            return known
        keys = self.candidates(model)
        starts = sorted({since for key in keys for since, _ in self.entries[key]} | {ALWAYS}, reverse=True)
        pieces: list[tuple[int, ModelPrice | None]] = []
        for start in starts:
            price = next((p for key in keys if (p := _in_effect(self.entries[key], start)) is not None), None)
            if pieces and pieces[-1][1] == price:
                pieces[-1] = (start, price)  # the same price as the newer piece: one longer stretch
            else:
                pieces.append((start, price))
        result = tuple(pieces)
        if len(self._schedules) < 10_000:
            self._schedules[model] = result
        return result

    def lookup(self, model: str, at_ns: int | None = None) -> ModelPrice | None:
        """The price in effect for `model` at `at_ns` (default: now); None when the model is unknown then."""
        pieces = self.schedule(model)
        if len(pieces) == 1:
            return pieces[0][1]
        at = time.time_ns() if at_ns is None else at_ns
        return next(price for since, price in pieces if at >= since)

    def cost(self, model: str, usage: TokenUsage, at_ns: int | None = None) -> float | None:
        """USD for this usage, or None when the model is unknown. Runs once per span in the worker and the
        sink: a model whose price never changes is one dict lookup away from its rates."""
        rates: Any = self._undated.get(model, _DATED)
        if rates is _DATED:
            pieces = self.schedule(model)
            if len(pieces) == 1:
                price = pieces[0][1]
                rates = None if price is None else price.rates()
                if len(self._undated) < 10_000:
                    self._undated[model] = rates
            else:
                price = self.lookup(model, at_ns)
                rates = None if price is None else price.rates()
        if rates is None:
            return None
        return _cost(rates, usage.input, usage.output, usage.cached, usage.reasoning, usage.cache_write)


_DATED = object()  # `PriceTable._undated`'s "not cached": the model's price depends on the time


def _in_effect(entries: tuple[tuple[int, ModelPrice], ...], at: int) -> ModelPrice | None:
    found = None
    for since, price in entries:  # oldest first
        if since > at:
            break
        found = price
    return found


def price_span(
    table: PriceTable, model: str, usage: TokenUsage | None, carried: float | None, at_ns: int | None = None
) -> tuple[float, CostSource]:
    """The cost to record for a span and where it came from; `at_ns` is the span's start time, which picks
    the price in effect."""
    if carried is not None:
        return carried, "span"
    if usage is None or (usage.input == 0 and usage.output == 0):
        return 0.0, "none"
    cost = table.cost(model, usage, at_ns)
    if cost is None:
        return 0.0, "unknown_model"
    return cost, "price_table"


def priced_version(table: PriceTable, source: CostSource) -> str:
    """The price version a span records: the table's when its cost came from the table, else none."""
    return table.version if source in TABLE_SOURCES else ""


# ---- the user's price file ----------------------------------------------------------------------------


class PriceFileError(ValueError):
    """A price file that cannot be used; the message names the file, the line and the field."""


_FIELDS = ("model", "input", "output", "cached_input", "cache_write", "reasoning", "effective_from")
_RATES = ("input", "output", "cached_input", "cache_write", "reasoning")
_TOP = ("version", "builtin", "prices")


def load_price_file(path: Path | str) -> PriceTable:
    """The table a price file describes: the built-in table (unless `builtin = false`) with the file's
    entries on top. Raises PriceFileError naming the path, the line and the field of the first mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceFileError(f"{path}: cannot read the price file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PriceFileError(f"{path}: the price file is not UTF-8 text") from None
    return parse_price_file(text, path)


def parse_price_file(text: str, path: Path | str = "<prices>") -> PriceTable:
    """`load_price_file` on text already read (`path` only names it in errors)."""
    lines = _Lines(text, str(path))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceFileError(f"{path}: not valid TOML: {exc}") from None
    for key in doc:
        if key not in _TOP:
            raise lines.error(None, key, f"unknown setting (expected one of: {', '.join(_TOP)})")
    version = doc.get("version")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise lines.error(None, "version", f"expected a non-empty string, got {version!r}")
    builtin = doc.get("builtin", True)
    if not isinstance(builtin, bool):
        raise lines.error(None, "builtin", f"expected true or false, got {builtin!r}")
    entries = doc.get("prices", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise lines.error(None, "prices", "expected [[prices]] tables")
    history: dict[str, list[tuple[int, ModelPrice]]] = {}
    seen: dict[tuple[str, int], int] = {}
    for index, entry in enumerate(entries):
        model, since, price = _entry(entry, index, lines)
        if (model, since) in seen:
            when = "without effective_from" if since == ALWAYS else f"effective from {entry['effective_from']}"
            raise lines.error(index, "model", f"{model!r} {when} is already priced by entry {seen[model, since] + 1}")
        seen[model, since] = index
        history.setdefault(model, []).append((since, price))
    base = DEFAULT_PRICES if builtin else {}
    listed = sorted((model, since, msgspec.structs.asdict(p)) for model, dated in history.items() for since, p in dated)
    canonical = msgspec.json.encode({"builtin": PRICE_TABLE_VERSION if builtin else None, "prices": listed})
    derived = f"{PRICE_TABLE_VERSION if builtin else 'file'}+{hashlib.sha256(canonical).hexdigest()[:8]}"
    return PriceTable(base, version.strip() if version else derived, history=history)


def _entry(entry: dict[str, Any], index: int, lines: _Lines) -> tuple[str, int, ModelPrice]:
    for key in entry:
        if key not in _FIELDS:
            raise lines.error(index, key, f"unknown field (expected one of: {', '.join(_FIELDS)})")
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip():
        raise lines.error(index, "model", "every entry needs a model name (a non-empty string)")
    rates: dict[str, float] = {}
    for field in _RATES:
        if field not in entry:
            if field in ("input", "output"):
                raise lines.error(index, field, f"missing: USD per million {field} tokens of {model!r}")
            continue
        value = entry[field]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise lines.error(index, field, f"expected a number of USD per million tokens (>= 0), got {value!r}")
        rates[field] = float(value)
    since = ALWAYS
    if "effective_from" in entry:
        since = _effective_ns(entry["effective_from"], index, lines)
    return model.strip(), since, ModelPrice(**rates)


def _effective_ns(value: Any, index: int, lines: _Lines) -> int:
    """A TOML date (midnight UTC) or date-time (UTC unless it has an offset) as nanoseconds."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    else:
        raise lines.error(index, "effective_from", f"expected a TOML date (2026-12-01) or date-time, got {value!r}")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (moment - epoch) // dt.timedelta(microseconds=1) * 1000


class _Lines:
    """Finds the line of an entry's field in the file's text for error messages (tomllib gives none)."""

    _HEADER = re.compile(r"^\s*\[\[\s*prices\s*\]\]")

    def __init__(self, text: str, path: str):
        self.path = path
        self.lines = text.splitlines()
        self.headers = [n for n, line in enumerate(self.lines) if self._HEADER.match(line)]

    def error(self, index: int | None, field: str, problem: str) -> PriceFileError:
        where = f"prices[{index + 1}] " if index is not None else ""
        return PriceFileError(f"{self.path}:{self.line(index, field)}: {where}{field}: {problem}")

    def line(self, index: int | None, field: str) -> int:
        if index is None or index >= len(self.headers):
            first, last = 0, (self.headers[0] if self.headers else len(self.lines))
        else:
            first = self.headers[index]
            nxt = next((n for n, line in enumerate(self.lines) if n > first and line.lstrip().startswith("[")), None)
            last = len(self.lines) if nxt is None else nxt
        key = re.compile(rf"^\s*\"?{re.escape(field)}\"?\s*=")
        for n in range(first, last):
            if key.match(self.lines[n]):
                return n + 1
        return first + 1


def configured_prices(env: settings.Env | None = None) -> PriceTable:
    """The price table every process uses: the file named by TRACEHOUSE_PRICES, else the built-in table.
    The worker, the sink and `tracehouse reprice` all call this, so they price alike."""
    path = settings.get(settings.PRICES, env)
    return PriceTable() if path is None else load_price_file(path)
