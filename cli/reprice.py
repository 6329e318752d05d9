"""`tracehouse reprice`: bring the costs already stored to the current price table.

Only costs that came from the price table are recomputed (`cost_source` 'price_table' or 'unknown_model');
a cost the span carried itself stays. Everything happens inside ClickHouse, so nothing is read into Python
but a summary per model, and no row is ever doubled:

1. The new cost of each span is one SQL expression built from the table (`core.pricing.cost_sql`, the same
   arithmetic as the worker's, to the last bit), with the prices bound as query parameters: per model, the
   schedule of prices in effect over time becomes a `multiIf` on the span's start time.
2. Per trace and per rollup group and window, the difference (new cost - stored cost) of its spans goes into
   a temporary table of the Join engine. Spans are read with FINAL, so a span stored twice counts once.
3. `ALTER TABLE ... UPDATE` mutations add those differences to `traces` (with their price version and
   unpriced models) and to `rollups`, and write the new costs and version into `spans`; `spans_minutely`
   (an AggregatingMergeTree) gets one row per minute and group holding only the difference of its sum, which
   its readers merge like any other. Mutations rewrite rows in place: `count()` is what it was.

Each mutation is waited for (`system.mutations`), with its progress on stderr. A span already at the current
prices is left alone, so running it again changes nothing. The steps are not one transaction: stopped
halfway (an error, a kill), traces or rollups may hold the differences while spans do not. The run's work
tables (`_reprice_<run>_*`, with a journal of the tables done) then stay, and the next run refuses, saying
what was updated, rather than add the differences a second time. What it does not do: rollup rows the
worker counted under `__other__` keep their cost, the spans a tail sampler did not store cannot be re-priced,
and a cluster's Distributed tables take no mutations (run it against each shard). Restart the worker and
sink with the new price file first: a span priced with the old table while this runs keeps its old cost
until the next run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core.config import ClickHouseTarget
from tracehouse.core.pricing import TABLE_SOURCES, PriceTable, cost_sql
from tracehouse.core.rollups import WINDOW_SIZES

Progress = Callable[[str], None]
POLL_S = 0.5
WORK_PREFIX = "_reprice_"  # the tables a run works with, in the database it re-prices


class RepriceInterrupted(RuntimeError):
    """A run stopped (or an earlier one had stopped) with some tables updated and others not."""


@dataclass
class ModelChange:
    """What re-pricing does to one model's stored spans."""

    model: str
    spans: int
    changed: int
    before_usd: float
    after_usd: float


@dataclass
class RepriceReport:
    version: str
    since_ns: int
    models: list[ModelChange] = field(default_factory=list)
    traces: int = 0  # traces whose cost changes
    rollup_groups: int = 0  # (window, group) pairs whose cost changes
    applied: bool = False

    @property
    def changed(self) -> int:
        return sum(m.changed for m in self.models)


@dataclass(frozen=True)
class CostExpressions:
    """The new cost and cost source of a span as SQL over `spans`, and their bound parameters."""

    cost: str
    source: str
    params: dict[str, Any]


def cost_expressions(prices: PriceTable, models: list[str]) -> CostExpressions:
    """One `multiIf` over `models`, each a `multiIf` over its schedule of prices by start time."""
    params: dict[str, Any] = {}
    costs: list[str] = []
    sources: list[str] = []
    for i, model in enumerate(models):
        params[f"m{i}"] = model
        pieces = prices.schedule(model)
        piece_costs: list[str] = []
        piece_sources: list[str] = []
        for j, (since, price) in enumerate(pieces):
            if price is None:
                piece_costs.append("toFloat64(0)")
                piece_sources.append("'unknown_model'")
            else:
                expression, rates = cost_sql(price, f"m{i}p{j}")
                params.update(rates)
                piece_costs.append(expression)
                piece_sources.append("'price_table'")
            if j < len(pieces) - 1:
                params[f"m{i}t{j}"] = since
        costs.append(_by_start(i, piece_costs))
        sources.append(_by_start(i, piece_sources))
    cost = "multiIf(" + "".join(f"model = {{m{i}:String}}, {c}, " for i, c in enumerate(costs)) + "cost_usd)"
    source = "multiIf(" + "".join(f"model = {{m{i}:String}}, {s}, " for i, s in enumerate(sources)) + "cost_source)"
    return CostExpressions(cost, source, params)


def _by_start(model: int, pieces: list[str]) -> str:
    """Newest first: the first piece whose start the span's start reaches; the last applies always."""
    if len(pieces) == 1:
        return pieces[0]
    arms = "".join(
        f"toUnixTimestamp64Nano(start_time) >= {{m{model}t{j}:Int64}}, {piece}, " for j, piece in enumerate(pieces[:-1])
    )
    return f"multiIf({arms}{pieces[-1]})"


class Repricer:
    """One run of `tracehouse reprice` against one database."""

    def __init__(
        self,
        client: AsyncClient,
        database: str,
        prices: PriceTable,
        since_ns: int,
        model: str | None = None,
        progress: Progress | None = None,
    ):
        self.client = client
        self.database = database
        self.prices = prices
        self.since_ns = since_ns
        self.model = model
        self.progress = progress or (lambda line: None)
        self.params: dict[str, Any] = {"since": since_ns, "sources": list(TABLE_SOURCES), "v": prices.version}
        self.where = (
            "start_time >= fromUnixTimestamp64Nano({since:Int64}, 'UTC') AND cost_source IN {sources:Array(String)}"
        )
        if model is not None:
            self.where += " AND model = {model:String}"
            self.params["model"] = model

    async def run(self, *, dry_run: bool = False) -> RepriceReport:
        report = RepriceReport(self.prices.version, self.since_ns)
        await self._refuse_after_an_interrupted_run()
        rows = await self._query(f"SELECT DISTINCT model FROM spans WHERE {self.where} ORDER BY model")
        if not rows:
            return report
        exprs = cost_expressions(self.prices, [row[0] for row in rows])
        self.params.update(exprs.params)
        new_cost, new_source = exprs.cost, exprs.source
        changed = f"({new_cost} != cost_usd OR {new_source} != cost_source)"
        summary = await self._query(
            f"SELECT model, count(), countIf({changed}), sum(cost_usd), sum({new_cost}) FROM spans FINAL "
            f"WHERE {self.where} GROUP BY model ORDER BY model"
        )
        report.models = [ModelChange(m, int(n), int(c), float(b), float(a)) for m, n, c, b, a in summary]
        if dry_run or report.changed == 0:
            if not dry_run:
                await self._stamp_versions(new_cost, new_source, changed)
            return report
        run = uuid.uuid4().hex[:8]
        traces_join, rollups_join, journal = (f"{WORK_PREFIX}{run}_{name}" for name in ("traces", "rollups", "done"))
        work = (traces_join, rollups_join, journal)
        try:
            await self.client.command(f"CREATE TABLE `{journal}` (step String) ENGINE = MergeTree ORDER BY tuple()")
            report.traces = await self._trace_differences(traces_join, new_cost, new_source, changed)
            report.rollup_groups = await self._rollup_differences(rollups_join, new_cost, changed)
        except BaseException:
            await self._drop(work)  # nothing written yet
            raise
        # From here on the work tables stay until every table is done: if this stops halfway (an error, a
        # kill), the next run finds them and refuses, instead of adding the differences a second time.
        await self._apply(traces_join, rollups_join, journal, new_cost, new_source, changed)
        await self._drop(work)
        report.applied = True
        return report

    async def _drop(self, tables: tuple[str, ...]) -> None:
        for table in tables:
            await self.client.command(f"DROP TABLE IF EXISTS `{table}`")

    async def _refuse_after_an_interrupted_run(self) -> None:
        """Stop when an earlier run left its work tables: its differences may be in some tables already."""
        rows = await self._query(
            "SELECT name FROM system.tables WHERE database = {db:String} AND startsWith(name, {prefix:String})",
            {"db": self.database, "prefix": WORK_PREFIX},
        )
        if not rows:
            return
        names = sorted(row[0] for row in rows)
        steps: list[str] = []
        for name in names:
            if name.endswith("_done"):
                steps += [row[0] for row in await self._query(f"SELECT step FROM `{name}`", {})]
        drops = "; ".join(f"DROP TABLE `{self.database}`.`{name}`" for name in names)
        raise RepriceInterrupted(
            f"an earlier reprice stopped halfway (it had updated: {', '.join(steps) or 'no table yet'}; spans keep "
            "their old costs). Running again would add its differences twice to the tables it updated. Restore "
            f"those tables (or correct them by hand), then drop its work tables: {drops}"
        )

    # ---- the differences, inside ClickHouse -------------------------------------------------------------

    async def _trace_differences(self, table: str, new_cost: str, new_source: str, changed: str) -> int:
        await self.client.command(
            f"CREATE TABLE `{table}` (trace_id String, delta Float64, priced Array(String), unknown Array(String)) "
            "ENGINE = Join(ANY, LEFT, trace_id)"
        )
        await self.client.command(
            f"INSERT INTO `{table}` SELECT trace_id, sum({new_cost} - cost_usd), "
            f"groupUniqArrayIf(model, {new_source} = 'price_table'), "
            f"groupUniqArrayIf(model, {new_source} = 'unknown_model') "
            f"FROM spans FINAL WHERE {self.where} GROUP BY trace_id HAVING countIf({changed}) > 0",
            parameters=self.params,
        )
        return int(await self.client.command(f"SELECT count() FROM `{table}`"))

    async def _rollup_differences(self, table: str, new_cost: str, changed: str) -> int:
        """The worker rolls a span up by its end time into each window size (pipeline/windows.py)."""
        await self.client.command(
            f"CREATE TABLE `{table}` (window_start DateTime, window_seconds UInt32, service LowCardinality(String), "
            "kind LowCardinality(String), name LowCardinality(String), model LowCardinality(String), delta Float64) "
            "ENGINE = Join(ANY, LEFT, window_start, window_seconds, service, kind, name, model)"
        )
        await self.client.command(
            f"INSERT INTO `{table}` SELECT "
            "toDateTime(intDiv(toUnixTimestamp64Nano(end_time), ws * 1000000000) * ws, 'UTC') AS window_start, "
            f"ws AS window_seconds, service, kind, name, model, sum({new_cost} - cost_usd) "
            "FROM spans FINAL ARRAY JOIN {window_sizes:Array(UInt32)} AS ws "
            f"WHERE {self.where} AND {changed} GROUP BY window_start, window_seconds, service, kind, name, model",
            parameters={**self.params, "window_sizes": list(WINDOW_SIZES)},
        )
        return int(await self.client.command(f"SELECT count() FROM `{table}`"))

    # ---- writing -------------------------------------------------------------------------------------------

    async def _apply(
        self, traces_join: str, rollups_join: str, journal: str, new_cost: str, new_source: str, changed: str
    ) -> None:
        done: list[str] = []
        trace_delta = f"joinGet('{self.database}.{traces_join}', '{{}}', trace_id)"
        rollup_key = "window_start, window_seconds, service, kind, name, model"
        rollup_delta = f"joinGet('{self.database}.{rollups_join}', 'delta', {rollup_key})"
        rollup_found = f"joinGetOrNull('{self.database}.{rollups_join}', 'delta', {rollup_key}) IS NOT NULL"
        priced, unknown = trace_delta.format("priced"), trace_delta.format("unknown")
        steps: list[tuple[str, str, dict[str, Any]]] = [
            (
                "traces",
                f"ALTER TABLE traces UPDATE cost_usd = cost_usd + {trace_delta.format('delta')}, "
                # a model is no longer unpriced in a trace once all its spans there are priced
                f"unpriced_models = arrayDistinct(arrayConcat(arrayFilter(m -> NOT (has({priced}, m) AND "
                f"NOT has({unknown}, m)), unpriced_models), {unknown})), price_version = {{v:String}} "
                f"WHERE joinGetOrNull('{self.database}.{traces_join}', 'delta', trace_id) IS NOT NULL",
                {"v": self.prices.version},
            ),
            (
                "rollups",
                f"ALTER TABLE rollups UPDATE cost_usd = cost_usd + {rollup_delta} WHERE {rollup_found}",
                {},
            ),
            (
                "spans_minutely",
                "INSERT INTO spans_minutely (minute, service, kind, name, model, sum_cost_usd) "
                f"SELECT toStartOfMinute(start_time) AS minute, service, kind, name, model, "
                f"sumState({new_cost} - cost_usd) FROM spans FINAL WHERE {self.where} AND {changed} "
                "GROUP BY minute, service, kind, name, model",
                self.params,
            ),
        ]
        for table, statement, params in steps:
            try:
                await self._mutate(table, statement, params)
                await self.client.command(f"INSERT INTO `{journal}` SELECT {{step:String}}", parameters={"step": table})
            except Exception as exc:
                raise RepriceInterrupted(_halfway(done, table, exc)) from exc
            done.append(table)
        try:
            await self._stamp_versions(new_cost, new_source, changed)
        except Exception as exc:
            raise RepriceInterrupted(_halfway(done, "spans", exc)) from exc

    async def _stamp_versions(self, new_cost: str, new_source: str, changed: str) -> None:
        """The new costs and the current version on every re-priced span (also those whose cost stays)."""
        await self._mutate(
            "spans",
            f"ALTER TABLE spans UPDATE cost_usd = {new_cost}, cost_source = {new_source}, "
            f"price_version = {{v:String}} WHERE {self.where} AND ({changed} OR price_version != {{v:String}})",
            self.params,
        )

    async def _mutate(self, table: str, statement: str, params: dict[str, Any]) -> None:
        """Run one statement; for a mutation, wait until ClickHouse has rewritten every part it touches."""
        self.progress(f"{table}: updating")
        started = time.monotonic()
        if not statement.startswith("ALTER"):
            await self.client.command(statement, parameters=params)
            return
        await self.client.command(statement, parameters=params, settings={"mutations_sync": 0})
        last = 0.0
        while True:
            rows = await self._query(
                "SELECT sum(parts_to_do), any(latest_fail_reason) FROM system.mutations "
                "WHERE database = {db:String} AND table = {table:String} AND NOT is_done",
                {"db": self.database, "table": table},
            )
            parts, failure = (int(rows[0][0]), rows[0][1]) if rows else (0, "")
            if failure:
                raise RuntimeError(f"the mutation of {table} failed: {failure}")
            if not parts:
                return
            if time.monotonic() - last >= 2.0:
                self.progress(f"{table}: {parts} parts to rewrite ({time.monotonic() - started:.0f} s)")
                last = time.monotonic()
            await asyncio.sleep(POLL_S)

    async def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        result = await self.client.query(sql, parameters=self.params if params is None else params)
        return [tuple(row) for row in result.result_rows]


def _halfway(done: list[str], table: str, exc: Exception) -> str:
    so_far = ", ".join(done) if done else "no table yet"
    return (
        f"stopped at {table} ({exc}); already updated: {so_far}; spans keep their old costs. Its work tables "
        "stay, so that a second run refuses instead of adding those differences twice"
    )


async def reprice(
    target: ClickHouseTarget,
    prices: PriceTable,
    since_ns: int,
    *,
    model: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RepriceReport:
    from tracehouse.sinks.clickhouse import async_client

    client = await async_client(target)
    try:
        return await Repricer(client, target.database, prices, since_ns, model, progress).run(dry_run=dry_run)
    finally:
        await client.close()


# ---- the command ---------------------------------------------------------------------------------------


def summary_lines(report: RepriceReport) -> list[str]:
    """The per-model table the command prints: spans, changed, cost before -> after, difference."""
    since = dt.datetime.fromtimestamp(report.since_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"spans priced from the table since {since}; prices now: version {report.version}"]
    if not report.models:
        return [*lines, "no spans to re-price"]
    width = max(12, *(len(m.model or "(none)") for m in report.models))
    lines.append(
        f"{'model':<{width}} {'spans':>9} {'changed':>9} {'before USD':>14} {'after USD':>14} {'diff USD':>14}"
    )
    total = ModelChange("total", 0, 0, 0.0, 0.0)
    for m in report.models:
        lines.append(_row(m, width))
        total.spans += m.spans
        total.changed += m.changed
        total.before_usd += m.before_usd
        total.after_usd += m.after_usd
    if len(report.models) > 1:
        lines.append(_row(total, width))
    if report.applied:
        lines.append(
            f"updated: {report.changed} spans, {report.traces} traces, {report.rollup_groups} rollup windows "
            f"(per group); spans now carry price version {report.version}"
        )
    elif report.changed:
        lines.append("dry run: nothing written")
    else:
        lines.append("nothing to change: the stored costs already match these prices")
    return lines


def _row(m: ModelChange, width: int) -> str:
    diff = m.after_usd - m.before_usd
    return (
        f"{m.model or '(none)':<{width}} {m.spans:>9} {m.changed:>9} {m.before_usd:>14.6f} {m.after_usd:>14.6f} "
        f"{diff:>+14.6f}"
    )


def main_reprice(target: ClickHouseTarget, prices: PriceTable, since_ns: int, args: Any) -> int:
    def progress(line: str) -> None:
        print(f"reprice: {line}", file=sys.stderr, flush=True)

    try:
        report = asyncio.run(
            reprice(target, prices, since_ns, model=args.model, dry_run=args.dry_run, progress=progress)
        )
    except RepriceInterrupted as exc:
        print(f"tracehouse reprice: {exc}", file=sys.stderr)
        return 1
    for line in summary_lines(report):
        print(line)
    return 0
