"""`tracehouse migrate`: bring database `tracehouse` to the latest schema version, idempotently."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clickhouse_connect.driver.asyncclient import AsyncClient

from tracehouse.core.config import ClickHouseTarget
from tracehouse.sinks.clickhouse import async_client
from tracehouse.sinks.ddl import MIGRATIONS, MIGRATIONS_TABLE, render

log = logging.getLogger("tracehouse.migrate")


@dataclass
class MigrationReport:
    database: str
    applied: list[int]
    current_version: int


async def applied_versions(client: AsyncClient, database: str) -> set[int]:
    result = await client.query(f"SELECT version FROM `{database}`.schema_migrations FINAL")
    return {int(row[0]) for row in result.result_rows}


async def migrate(
    target: ClickHouseTarget,
    *,
    ttl_days: int | None = None,
    rollup_ttl_days: int | None = None,
    target_version: int | None = None,
) -> MigrationReport:
    """Create the database and apply every migration not yet recorded; safe to run any number of times.

    `target_version` stops after that version. Upgrades are tested by building a database exactly as an
    older release left it, through this same code path, and then migrating it to the latest version.
    """
    if target_version is not None and target_version not in {m.version for m in MIGRATIONS}:
        known = ", ".join(str(m.version) for m in MIGRATIONS)
        raise ValueError(f"no schema version {target_version} (known versions: {known})")
    database = target.database
    client = await async_client(target, database=None)
    try:
        await client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        await client.command(render(MIGRATIONS_TABLE, database, None, None))
        done = await applied_versions(client, database)
        applied: list[int] = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            if target_version is not None and migration.version > target_version:
                break
            for statement in migration.statements:
                await client.command(render(statement, database, ttl_days, rollup_ttl_days))
            await client.insert(
                f"`{database}`.schema_migrations",
                [[migration.version, migration.description]],
                column_names=["version", "description"],
            )
            applied.append(migration.version)
            log.info("applied migration %d: %s", migration.version, migration.description)
        current = max(done | set(applied), default=0)
        return MigrationReport(database=database, applied=applied, current_version=current)
    finally:
        await client.close()
