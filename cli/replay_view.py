"""The `tracehouse replay` command: parse the range, run a replay (pipeline/replay.py) or a re-admission of
dead letters (pipeline/replay_dlq.py), show progress on stderr and print a one-line summary. With
`--to-table NAME` the replay writes into side tables instead of Kafka (cli/replay_table.py).

Re-admission asks ClickHouse which spans `spans` already holds (so nothing is published twice); that query
lives here, not in the pipeline, which does not talk to ClickHouse."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tracehouse.core.config import ClickHouseTarget, Settings
from tracehouse.core.schema import Span

STORED_CHUNK = 1_000  # trace ids per lookup


def progress(line: str) -> None:
    print(f"replay: {line}", file=sys.stderr, flush=True)


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from tracehouse.read.times import TIME_FORMS, time_ns

    now = time.time_ns()
    start, end = time_ns(args.from_time, now), time_ns(args.to_time, now) if args.to_time else now
    if start is None or end is None or end <= start:
        raise SystemExit(f"tracehouse replay: --from and --to must be {TIME_FORMS}, --from before --to")
    if args.dlq:
        if args.to_table:
            raise SystemExit("tracehouse replay: --dlq re-admits dead letters onto tracehouse.spans; no --to-table")
        return _readmit(settings, start, end)
    return _replay(settings, start, end, rollups=not args.no_rollups, to_table=args.to_table)


def _replay(settings: Settings, start: int, end: int, *, rollups: bool, to_table: str | None = None) -> int:
    from tracehouse.cli.replay_table import TableNameError, TableOutput
    from tracehouse.core.pricing import PriceFileError, configured_prices
    from tracehouse.pipeline.replay import ReplayOutput, ReplayRangeError, replay

    output: ReplayOutput | None = None
    traces_to, rollups_to = "published on tracehouse.traces", "published on tracehouse.rollups"
    if to_table is not None:
        try:
            output = TableOutput(settings.clickhouse, to_table, rollups=rollups, progress=progress)
        except TableNameError as exc:
            raise SystemExit(f"tracehouse replay: {exc}") from None
        traces_to = f"written into {settings.clickhouse.database}.{output.traces_table} (nothing on Kafka)"
        rollups_to = f"written into {settings.clickhouse.database}.{output.rollups_table}"
    try:
        prices = configured_prices()
    except PriceFileError as exc:
        raise SystemExit(f"tracehouse replay: {exc}") from None
    try:
        report = asyncio.run(
            replay(settings.kafka_bootstrap, start, end, prices, rollups=rollups, progress=progress, output=output)
        )
    except (ReplayRangeError, RuntimeError) as exc:
        raise SystemExit(f"tracehouse replay: {exc}") from None
    if rollups:
        windows = (
            f"{report.rollups} rollups of {report.rollup_windows} windows wholly inside the range {rollups_to} "
            f"({report.edge_windows} edge windows skipped: they would be undercounts"
            + (f"; {report.late_spans} spans later than the worker accepts left out" if report.late_spans else "")
            + ")"
        )
    else:
        windows = "rollups not re-derived (--no-rollups)"
    print(
        f"replayed {report.messages} records ({report.spans} spans; {report.refused} refused for their times, "
        f"{report.undecodable} undecodable): {report.traces} traces {traces_to} "
        f"with prices {prices.version}; {windows}"
    )
    return 0


def _readmit(settings: Settings, start: int, end: int) -> int:
    from tracehouse.pipeline.replay_dlq import readmit_dead_letters

    async def stored(spans: list[Span]) -> set[tuple[str, str]]:
        return await stored_spans(settings.clickhouse, spans)

    try:
        report = asyncio.run(
            readmit_dead_letters(settings.kafka_bootstrap, start, end, stored=stored, progress=progress)
        )
    except RuntimeError as exc:
        raise SystemExit(f"tracehouse replay --dlq: {exc}") from None
    for reason, count in report.still_refused.most_common():
        progress(f"still refused ({count}): {reason}")
    print(
        f"read {report.letters} dead letters: {report.readmitted} spans re-admitted on tracehouse.spans; "
        f"{report.refused} still refused ({len(report.still_refused)} reasons, on stderr), "
        f"{report.already_stored} already stored, {report.duplicates} duplicate letters, "
        f"{report.not_spans} not spans"
    )
    return 0


async def stored_spans(target: ClickHouseTarget, spans: list[Span]) -> set[tuple[str, str]]:
    """The (trace id, span id) of `spans` that the `spans` table already holds."""
    from tracehouse.sinks.clickhouse import async_client

    try:
        client = await async_client(target)
    except Exception as exc:
        raise RuntimeError(f"ClickHouse at {target.url} is unreachable: {exc}") from None
    trace_ids = sorted({span.trace_id for span in spans})
    found: set[tuple[str, str]] = set()
    try:
        for i in range(0, len(trace_ids), STORED_CHUNK):
            result = await client.query(
                "SELECT DISTINCT trace_id, span_id FROM spans WHERE trace_id IN {ids:Array(String)}",
                parameters={"ids": trace_ids[i : i + STORED_CHUNK]},
            )
            found.update((str(t), str(s)) for t, s in result.result_rows)
    finally:
        await client.close()
    return found
