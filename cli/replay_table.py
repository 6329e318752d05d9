"""`tracehouse replay --to-table NAME`: a replay's traces and rollups go into side tables, not onto Kafka.

A mapping or price fix can then be compared with what is stored before it is let loose on `traces`: NAME is
created as `CREATE TABLE NAME AS traces` (the same columns and engine, so `FINAL` collapses it the same way)
and NAME_rollups as `rollups`. One name for both keeps the pair together and the command to one option
(`--no-rollups` already says whether rollups are re-derived). Rows are the sink's own (sinks/rows.py
`trace_row`, the `Rollup` records the sink stores as they are), inserted in the sink's format; nothing is
published, so no sink and no dashboard sees them.

A name must be a plain identifier and neither it nor NAME_rollups may be one of the pipeline's own tables
(every table and view sinks/ddl.py creates, and their cluster-mode `_local` twins): a replay there would
write what the sink writes, behind its back. In cluster mode `traces` is a Distributed table over
`traces_local`, and a copy of it would write into the real tables: refused. An existing NAME is written
into again only if its columns are those of `traces` (a second replay into it collapses like `traces` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core.config import ClickHouseTarget
from tracehouse.core.rollups import Rollup
from tracehouse.core.schema import TraceRecord
from tracehouse.sinks import ddl
from tracehouse.sinks.cluster import LOCAL_SUFFIX
from tracehouse.sinks.rows import TRACE_COLUMNS, encode_rows, trace_row

ROWS_PER_INSERT = 10_000
ROLLUPS_SUFFIX = "_rollups"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,100}")
_CREATED = re.compile(r"CREATE (?:TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS \{+db\}+\.(\w+)")


class TableNameError(ValueError):
    """A --to-table name that is not a plain identifier or is one of the pipeline's tables."""


def pipeline_tables() -> frozenset[str]:
    """Every table and view the schema migrations create (read from sinks/ddl.py, so a new one counts)."""
    statements = [ddl.MIGRATIONS_TABLE, *(s for migration in ddl.MIGRATIONS for s in migration.statements)]
    return frozenset(name for statement in statements for name in _CREATED.findall(statement))


def side_tables(name: str) -> tuple[str, str]:
    """The traces and rollups tables of `--to-table name`, or TableNameError saying why not."""
    if not _IDENTIFIER.fullmatch(name):
        raise TableNameError(
            f"--to-table {name!r} is not a plain identifier (letters, digits and _, not starting with a digit)"
        )
    own = {variant.lower() for table in pipeline_tables() for variant in (table, table + LOCAL_SUFFIX)}
    for table in (name, name + ROLLUPS_SUFFIX):
        if table.lower() in own:
            raise TableNameError(
                f"--to-table {name}: {table} is one of the pipeline's own tables; choose another name "
                "(a plain replay, without --to-table, is the one that writes there, through the sink)"
            )
    return name, name + ROLLUPS_SUFFIX


class TableOutput:
    """pipeline/replay.py's `ReplayOutput` into side tables of `traces` and `rollups` (see the module)."""

    def __init__(self, target: ClickHouseTarget, name: str, *, rollups: bool, progress: Callable[[str], None]) -> None:
        self.target = target
        self.traces_table, self.rollups_table = side_tables(name)
        self.rollups = rollups
        self.say = progress
        self.client: AsyncClient | None = None

    async def start(self) -> None:
        from tracehouse.sinks.clickhouse import async_client

        try:
            self.client = await async_client(self.target)
        except Exception as exc:
            raise RuntimeError(f"ClickHouse at {self.target.url} is unreachable: {exc}") from None
        pairs = [(self.traces_table, "traces")] + ([(self.rollups_table, "rollups")] if self.rollups else [])
        for table, like in pairs:
            engine = await self.client.command(
                "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
                parameters={"t": like},
            )
            if engine == "Distributed":
                raise RuntimeError(
                    f"{like} is a Distributed table (cluster mode): a table AS {like} would write into "
                    f"{like}{LOCAL_SUFFIX}; --to-table works against a single server"
                )
            await self.client.command(f"CREATE TABLE IF NOT EXISTS `{table}` AS `{like}`")
            if await self._columns(table) != await self._columns(like):
                raise RuntimeError(
                    f"table {table} exists with other columns than {like}: drop it or choose another --to-table"
                )
            self.say(f"writing into {self.target.database}.{table} (created as {like} if it was missing)")

    async def _columns(self, table: str) -> list[tuple[str, str]]:
        assert self.client is not None
        result = await self.client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}"
            " ORDER BY position",
            parameters={"t": table},
        )
        return [(str(name), str(kind)) for name, kind in result.result_rows]

    async def write_traces(self, records: list[TraceRecord]) -> None:
        await self._insert(self.traces_table, TRACE_COLUMNS, [trace_row(t) for t in records])

    async def write_rollups(self, rows: list[Rollup]) -> None:
        await self._insert(self.rollups_table, Rollup.__struct_fields__, rows)

    async def _insert(self, table: str, columns: tuple[str, ...], rows: Sequence[msgspec.Struct]) -> None:
        """The sink's insert: JSONEachRow lines of the row Structs, column names given once."""
        assert self.client is not None
        for i in range(0, len(rows), ROWS_PER_INSERT):
            chunk = list(rows[i : i + ROWS_PER_INSERT])
            await self.client.raw_insert(
                table, column_names=columns, insert_block=encode_rows(chunk), fmt="JSONEachRow"
            )
            self.say(f"{i + len(chunk)}/{len(rows)} rows into {table}")

    async def finish(self) -> None:
        """Each insert is acknowledged once ClickHouse has it: nothing is left to flush."""

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
