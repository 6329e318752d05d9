"""The price table and the user's price file (core/pricing.py): every token class priced at its own rate,
entries in effect by date, a version both processes derive alike, errors that name the file, the line and
the field, and the SQL form of the cost agreeing with the Python one to the last bit in the real engine."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tracehouse.core.config import Settings
from tracehouse.core.pricing import (
    DEFAULT_PRICES,
    PRICE_TABLE_VERSION,
    ModelPrice,
    PriceFileError,
    PriceTable,
    configured_prices,
    cost_sql,
    load_price_file,
    parse_price_file,
    price_span,
    usage_cost,
)
from tracehouse.core.schema import TokenUsage
from tracehouse.sinks.clickhouse import sync_client

DEC_1 = int(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000_000

PRICE_FILE = """
# USD per million tokens
[[prices]]
model = "acme-large"
input = 4.0
output = 16.0
cached_input = 0.4
cache_write = 5.0
reasoning = 20.0

[[prices]]
model = "gpt-4o"
input = 2.0
output = 8.0
cached_input = 1.0
effective_from = 2026-12-01
"""


def test_every_token_class_is_priced_at_its_own_rate() -> None:
    table = parse_price_file(PRICE_FILE)
    usage = TokenUsage(input=10_000, output=3_000, cached=2_000, reasoning=1_000, cache_write=500)
    cost, source = price_span(table, "acme-large", usage, None)
    # plain input 7,500 at 4, cache reads 2,000 at 0.4, cache writes 500 at 5, output 2,000 at 16, reasoning 1,000 at 20
    expected = (7_500 * 4.0 + 2_000 * 0.4 + 500 * 5.0 + 2_000 * 16.0 + 1_000 * 20.0) / 1_000_000
    assert source == "price_table" and cost == pytest.approx(expected, rel=1e-12)
    # unset classes fall back: cache reads and writes as input, reasoning as output
    plain = usage_cost(ModelPrice(input=1.0, output=2.0), 1_000, 1_000, 300, 200, 100)
    assert plain == pytest.approx((1_000 * 1.0 + 1_000 * 2.0) / 1_000_000, rel=1e-12)
    # a carried cost stays; an unknown model is flagged, not priced at zero silently
    assert price_span(table, "acme-large", usage, 0.5) == (0.5, "span")
    assert price_span(table, "nobody-knows", usage, None) == (0.0, "unknown_model")


def test_a_span_is_priced_by_the_entry_in_effect_at_its_start() -> None:
    table = parse_price_file(PRICE_FILE)
    usage = TokenUsage(input=1_000_000, output=0)
    before, after = DEC_1 - 1, DEC_1
    assert table.cost("gpt-4o", usage, before) == DEFAULT_PRICES["gpt-4o"].input  # the built-in entry
    assert table.cost("gpt-4o", usage, after) == 2.0
    assert table.cost("openai/gpt-4o-2024-08-06", usage, after) == 2.0  # provider prefix and dated name
    assert table.cost("gpt-4o-mini", usage, after) == DEFAULT_PRICES["gpt-4o-mini"].input  # longest prefix wins
    dated_only = parse_price_file('[[prices]]\nmodel = "new-1"\ninput = 1\noutput = 1\neffective_from = 2026-12-01\n')
    assert dated_only.cost("new-1", usage, before) is None and dated_only.cost("new-1", usage, after) == 1.0
    assert [since for since, _ in table.schedule("gpt-4o")] == [DEC_1, table.schedule("gpt-4o")[-1][0]]


def test_the_version_comes_from_the_content_or_the_file(tmp_path: Path) -> None:
    one, two = parse_price_file(PRICE_FILE), parse_price_file("\n\n" + PRICE_FILE.replace("# USD", "# usd"))
    assert one.version == two.version and one.version.startswith(PRICE_TABLE_VERSION + "+")
    assert parse_price_file(PRICE_FILE.replace("16.0", "17.0")).version != one.version
    assert parse_price_file('version = "acme-7"\n' + PRICE_FILE).version == "acme-7"
    assert parse_price_file("builtin = false\n" + PRICE_FILE).lookup("gemini-2.5-pro") is None
    assert PriceTable().version == PRICE_TABLE_VERSION
    path = tmp_path / "prices.toml"
    path.write_text(PRICE_FILE)
    assert configured_prices({"TRACEHOUSE_PRICES": str(path)}).version == one.version
    assert configured_prices({}).version == PRICE_TABLE_VERSION


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[prices]]\nmodel = "m"\ninput = 1\noutput = "x"\n', "prices.toml:4: prices[1] output: expected a number"),
        ('[[prices]]\nmodel = "m"\ninput = -1\noutput = 1\n', "prices.toml:3: prices[1] input: expected a number"),
        ('[[prices]]\nmodel = "m"\ninput = 1\n', "prices.toml:1: prices[1] output: missing"),
        ('[[prices]]\nmodel = "m"\ninput = 1\noutput = 1\n\n[[prices]]\nmodel = "m"\ninput = 1\n  inptu = 2\n',
         "prices.toml:9: prices[2] inptu: unknown field"),
        ('[[prices]]\nmodel = "m"\ninput = 1\noutput = 1\neffective_from = "soon"\n',
         "prices.toml:5: prices[1] effective_from: expected a TOML date"),
        ('[[prices]]\ninput = 1\noutput = 1\n', "prices.toml:1: prices[1] model: every entry needs a model"),
        ('[[prices]]\nmodel = "m"\ninput = 1\noutput = 1\n[[prices]]\nmodel = "m"\ninput = 2\noutput = 2\n',
         "prices.toml:6: prices[2] model: 'm' without effective_from is already priced by entry 1"),
        ('currency = "EUR"\n', "prices.toml:1: currency: unknown setting"),
        ("[[prices]\n", "prices.toml: not valid TOML: "),
    ],
)  # fmt: skip
def test_a_bad_file_says_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as caught:
        load_price_file(path)
    assert str(caught.value).startswith(f"{tmp_path}/{message}"), str(caught.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match=r"prices\.toml: cannot read the price file"):
        configured_prices({"TRACEHOUSE_PRICES": str(tmp_path / "prices.toml")})


def test_the_sql_cost_equals_the_python_cost_exactly(settings: Settings) -> None:
    """`cost_sql` in the real engine gives the very float `usage_cost` gives, for random usages (including
    classes larger than what holds them) and awkward rates: re-pricing can then tell "unchanged" exactly."""
    rng = random.Random(11)
    prices = [
        ModelPrice(input=2.5, output=10.0, cached_input=1.25),
        ModelPrice(input=0.15, output=0.6, cached_input=0.075, cache_write=0.1875, reasoning=0.7),
        ModelPrice(input=1 / 3, output=7.1, cached_input=0.03, cache_write=0.41, reasoning=9.99),
    ]
    usages = [tuple(rng.randint(0, 200_000) for _ in range(5)) for _ in range(300)]
    client = sync_client(settings.clickhouse, database=None)
    table = f"_cost_{uuid.uuid4().hex[:8]}"
    try:
        client.command(
            f"CREATE TABLE {table} (i UInt32, input_tokens UInt32, output_tokens UInt32, cached_tokens UInt32, "
            "reasoning_tokens UInt32, cache_write_tokens UInt32) ENGINE = Memory"
        )
        client.insert(table, [(n, *u) for n, u in enumerate(usages)])
        for price in prices:
            expression, params = cost_sql(price, "p")
            got = dict(client.query(f"SELECT i, {expression} FROM {table}", parameters=params).result_rows)
            for n, (i, o, c, r, w) in enumerate(usages):
                assert got[n] == usage_cost(price, i, o, c, r, w), (price, usages[n])
    finally:
        client.command(f"DROP TABLE IF EXISTS {table}")
        client.close()


@pytest.mark.parametrize("command", ["worker", "sink", "reprice", "replay"])
def test_every_process_refuses_a_bad_file_in_one_line(tmp_path: Path, command: str) -> None:
    """A process priced by a file it cannot read stops at once and says where, not with a traceback."""
    path = tmp_path / "prices.toml"
    path.write_text('[[prices]]\nmodel = "m"\ninput = 1\noutput = "x"\n')
    env = {
        **os.environ,
        "TRACEHOUSE_PRICES": str(path),
        "TRACEHOUSE_DATA_DIR": str(tmp_path / "data"),
        "TRACEHOUSE_WORKER_HEALTH_PORT": "0",
        "TRACEHOUSE_SINK_HEALTH_PORT": "0",
    }
    args = [command, "--from", "1h"] if command == "replay" else [command]
    done = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert f"{path}:4: prices[1] output: expected a number of USD per million tokens" in done.stderr
    assert "Traceback" not in done.stderr
