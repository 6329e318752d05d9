"""Prices LLM calls from token usage when a span does not carry its own cost.

Every token class has its own price: cached input tokens are billed at a discount and reasoning tokens as
output (the provider bills them so), which is where tools that price only `input + output` go wrong. The
table is versioned so a trace record can say which prices it used, and an unknown model is flagged
(`cost_source = "unknown_model"`), never silently priced at zero.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tracehouse.core.schema import TokenUsage

PRICE_TABLE_VERSION = "2026-11-01"

CostSource = Literal["span", "price_table", "unknown_model", "none"]


class ModelPrice(msgspec.Struct, frozen=True):
    """USD per million tokens, by class."""

    input: float
    output: float
    cached_input: float | None = None  # None: same as input
    reasoning: float | None = None  # None: same as output


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
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00, cached_input=0.30),
    "claude-opus-4": ModelPrice(input=15.00, output=75.00, cached_input=1.50),
    "claude-3-5-haiku": ModelPrice(input=0.80, output=4.00, cached_input=0.08),
    "gemini-2.5-pro": ModelPrice(input=1.25, output=10.00, cached_input=0.31),
    "gemini-2.5-flash": ModelPrice(input=0.30, output=2.50, cached_input=0.075),
    "text-embedding-3-small": ModelPrice(input=0.02, output=0.0),
    "text-embedding-3-large": ModelPrice(input=0.13, output=0.0),
    "rerank-english-v3.0": ModelPrice(input=0.0, output=0.0),
}


class PriceTable:
    """Looks up a model's prices (exact name, else longest known prefix) and prices a usage record."""

    def __init__(self, prices: dict[str, ModelPrice] | None = None, version: str = PRICE_TABLE_VERSION):
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self.version = version
        self._by_length = sorted(self.prices, key=len, reverse=True)
        self._cache: dict[str, ModelPrice | None] = {}

    def lookup(self, model: str) -> ModelPrice | None:
        hit = self._cache.get(model, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        price = self.prices.get(model)
        if price is None:
            name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" -> "gpt-4o"
            price = self.prices.get(name) or next((self.prices[k] for k in self._by_length if name.startswith(k)), None)
        if len(self._cache) < 10_000:
            self._cache[model] = price
        return price

    def cost(self, model: str, usage: TokenUsage) -> float | None:
        """USD for this usage, or None when the model is unknown."""
        price = self.lookup(model)
        if price is None:
            return None
        cached = min(usage.cached, usage.input)
        reasoning = min(usage.reasoning, usage.output)
        cached_price = price.input if price.cached_input is None else price.cached_input
        reasoning_price = price.output if price.reasoning is None else price.reasoning
        micro = (
            (usage.input - cached) * price.input
            + cached * cached_price
            + (usage.output - reasoning) * price.output
            + reasoning * reasoning_price
        )
        return micro / 1_000_000


def price_span(
    table: PriceTable, model: str, usage: TokenUsage | None, carried: float | None
) -> tuple[float, CostSource]:
    """The cost to record for a span and where it came from."""
    if carried is not None:
        return carried, "span"
    if usage is None or (usage.input == 0 and usage.output == 0):
        return 0.0, "none"
    cost = table.cost(model, usage)
    if cost is None:
        return 0.0, "unknown_model"
    return cost, "price_table"
