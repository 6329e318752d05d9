"""ClickHouse cluster mode: the same migrations as a single server, rewritten for a sharded, replicated cluster.

`cluster_statements(database, cluster)` is a pure function of `sinks/ddl.py`'s MIGRATIONS: it renders each
statement exactly as `tracehouse migrate` does and transforms it, so single-node and cluster schemas
cannot drift (a new migration gets its cluster form for free, or fails loudly here if it uses a statement
kind this module does not translate). The layout is the usual one (the OpenTelemetry ClickHouse
exporter's cluster layout too):

- every table `X` of the migrations becomes `X_local`, created `ON CLUSTER` with the Replicated variant of
  its engine (`ReplacingMergeTree(version)` -> `ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/
  {database}/{table}', '{replica}', version)`); columns, codecs, indexes, partitioning, order, TTL and
  settings are kept as they are (`non_replicated_deduplication_window` becomes
  `replicated_deduplication_window`, its replicated counterpart);
- `X` itself, the contract name that the sink, the queries and the dashboards use, becomes a `Distributed`
  table over `X_local`. Sharding keys, derived from each table's columns:
  - `spans`: `ingest_partition`, the Kafka partition the row came from. The SDK puts every span of a
    trace in one partition (from the trace id), so a trace still lives on one shard, and so does each
    Kafka partition: the exactly-once resume (`ingest_offsets`, the highest stored offset per partition)
    stays as exact as on one server. Hashing the trace id instead would spread one Kafka message over all
    shards, and a sink that died after shard A took its rows and shard B did not would resume past the
    rows B never got. Use a partition count that is a multiple of the shard count to balance them.
  - tables filled only by materialized views (`trace_id_ts`, `ingest_offsets`, `spans_minutely`):
    `rand()`. Their rows stay on the shard of the spans they summarise; the key only places direct inserts
    (the version-2 backfill) and declares no placement that `optimize_skip_unused_shards` could trust.
  - a table with a trace id (`traces`): `cityHash64(trace_id)`, so every revision of a trace lands on one
    shard and ReplacingMergeTree(version) collapses them;
  - any other table (`rollups`, `alerts`): `cityHash64(<its ORDER BY key>)`, so a record delivered twice
    lands on the shard of its twin and ReplacingMergeTree collapses them;
- tables of NODE_LOCAL_ENGINES (`spans_first_seen`, Null; `span_keys`, EmbeddedRocksDB) are `X_local` on
  every node and nothing more: spans_minutely's first-seen filter works per node, which is exact when
  each span's copies reach the same node (one replica per shard; with several, a twin inserted through
  another replica counts again);
- materialized views are created on every node and read from and write to the `_local` tables (each
  replica's view sees the inserts that replica receives; replication copies the results);
- other statements (the version-2 backfill `INSERT ... SELECT`) run unchanged against the Distributed
  names.

ClickHouse must know the cluster (`remote_servers`), the `{shard}` and `{replica}` macros, and have Keeper
(or ZooKeeper). The sink inserts into the Distributed `spans`; give its user
`insert_distributed_sync = 1` (`distributed_foreground_insert` in newer releases) so an insert is
acknowledged only once every shard holds its rows, which the exactly-once offsets in `ingest_offsets`
rely on. `migrate_cluster(target, cluster)` applies all of this, versioned like `migrate`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracehouse.sinks.ddl import MIGRATIONS, MIGRATIONS_TABLE, Migration, render

if TYPE_CHECKING:
    from tracehouse.core.config import ClickHouseTarget
    from tracehouse.sinks.migrate import MigrationReport

log = logging.getLogger("tracehouse.migrate")

__all__ = [
    "LOCAL_SUFFIX",
    "REPLICA_NAME",
    "ZOOKEEPER_PATH",
    "ClusterTable",
    "cluster_migration_statements",
    "cluster_statements",
    "cluster_tables",
    "migrate_cluster",
    "migrations_table_statements",
    "transform_statement",
]

LOCAL_SUFFIX = "_local"
ZOOKEEPER_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"
# schema_migrations is not sharded: one replica on every node, so any node knows the schema version.
MIGRATIONS_ZOOKEEPER_PATH = "/clickhouse/tables/all/{database}/{table}"
MIGRATIONS_REPLICA_NAME = "{shard}-{replica}"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*$")
_CREATE_TABLE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?(?P<db>`[^`]+`|\w+)\.(?P<table>\w+)\s*", re.IGNORECASE
)
_CREATE_MV = re.compile(
    r"^\s*CREATE\s+MATERIALIZED\s+VIEW\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?(?P<db>`[^`]+`|\w+)\.(?P<view>\w+)\s+",
    re.IGNORECASE,
)
_CREATE_VIEW = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?(?P<db>`[^`]+`|\w+)\.(?P<view>\w+)\s+",
    re.IGNORECASE,
)
_ALTER = re.compile(
    r"^\s*ALTER\s+TABLE\s+(?P<db>`[^`]+`|\w+)\.(?P<table>\w+)\s+(?P<ops>.*)$", re.IGNORECASE | re.DOTALL
)
_MV_TARGET = re.compile(r"\s*TO\s+(?:`[^`]+`|\w+)\.(?P<table>\w+)", re.IGNORECASE)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+", re.IGNORECASE)
_DROP_VIEW = re.compile(
    r"^\s*DROP\s+VIEW\s+(?P<ie>IF\s+EXISTS\s+)?(?P<db>`[^`]+`|\w+)\.(?P<view>\w+)\s*$", re.IGNORECASE
)
# Engines whose tables belong to one node: they hold no shared data (Null feeds its views; EmbeddedRocksDB
# holds what that node's own views need, such as the span keys its inserts have seen), so each node gets
# `X_local` with the same engine and there is no Distributed `X`.
NODE_LOCAL_ENGINES = frozenset({"Null", "EmbeddedRocksDB"})
_ENGINE = re.compile(r"\bENGINE\s*=\s*(?P<engine>\w+)(?:\s*\((?P<args>[^()]*)\))?", re.IGNORECASE)
_ORDER_BY = re.compile(r"\bORDER\s+BY\s+(?P<key>\([^\n]*\)|[^\s]+)", re.IGNORECASE)
_COLUMN_OPS = re.compile(
    r"^\s*(?:(?:ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR)\s+COLUMN\b[^,]*(?:,|$)\s*)+$", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class ClusterTable:
    """One table of the migrations and its cluster form."""

    name: str  # the contract name: the Distributed table
    local: str  # the Replicated table on every node
    engine: str  # the single-node engine, e.g. ReplacingMergeTree
    replicated_engine: str  # e.g. ReplicatedReplacingMergeTree
    sharding_key: str  # "" for a node-local table (NODE_LOCAL_ENGINES): no Distributed table


def _check_name(kind: str, value: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not pattern.match(value):
        raise ValueError(f"{kind} {value!r} is not a plain identifier")
    return value


def _quote(name: str) -> str:
    return f"`{name}`"


def _on_cluster(cluster: str) -> str:
    return f"ON CLUSTER {_quote(cluster)}"


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis group opening at `text[start]` (quotes respected)."""
    depth = 0
    i = start
    quote: str | None = None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in ("'", '"', "`"):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses in a CREATE TABLE statement")


def _split_create_table(statement: str) -> tuple[re.Match[str], str, str]:
    """(head match, column list with its parentheses, the rest: ENGINE ...)."""
    head = _CREATE_TABLE.match(statement)
    if head is None:
        raise ValueError("not a CREATE TABLE statement")
    open_at = head.end()
    if statement[open_at : open_at + 1] != "(":
        raise ValueError(f"CREATE TABLE {head.group('table')} has no column list right after its name")
    close_at = _balanced(statement, open_at)
    return head, statement[open_at:close_at], statement[close_at:]


def _has_column(columns: str, name: str) -> bool:
    return re.search(rf"(?m)^\s*`?{re.escape(name)}`?\s+\w", columns[1:-1]) is not None


def _sharding_key(columns: str, rest: str, table: str, mv_targets: set[str]) -> str:
    """Where an insert through the Distributed table puts each row (see the module docstring)."""
    if _has_column(columns, "ingest_partition"):
        return "ingest_partition"
    if table in mv_targets:
        return "rand()"
    if _has_column(columns, "trace_id"):
        return "cityHash64(trace_id)"
    order = _ORDER_BY.search(rest)
    if order is None:
        return "rand()"
    key = order.group("key").strip()
    if key.startswith("(") and key.endswith(")"):
        key = key[1:-1].strip()
    if not key or key == "tuple()":
        return "rand()"
    return f"cityHash64({key})"


def _replicated_engine(engine: str, args: str | None, zk_path: str, replica: str) -> str:
    if not engine.endswith("MergeTree"):
        raise ValueError(f"engine {engine} has no Replicated variant")
    if engine.startswith("Replicated"):
        raise ValueError(f"engine {engine} is already replicated; migrations must use the single-node engine")
    params = [f"'{zk_path}'", f"'{replica}'"]
    if args and args.strip():
        params.append(args.strip())
    return f"Replicated{engine}({', '.join(params)})"


@dataclass(frozen=True)
class _Schema:
    """What the rewrite needs to know about the whole migration list."""

    tables: frozenset[str]  # every table a migration creates
    mv_targets: frozenset[str]  # tables that materialized views write to

    @classmethod
    def of(cls, migrations: Iterable[Migration], database: str) -> _Schema:
        tables: set[str] = set()
        targets: set[str] = set()
        for migration in migrations:
            for statement in migration.statements:
                rendered = render(statement, database, None, None)
                head = _CREATE_TABLE.match(rendered)
                if head is not None:
                    tables.add(head.group("table"))
                mv = _CREATE_MV.match(rendered)
                if mv is not None:
                    target = _MV_TARGET.match(rendered[mv.end() :])
                    if target is not None:
                        targets.add(target.group("table"))
        return cls(frozenset(tables), frozenset(targets))


def _localise(statement: str, db: str, tables: Iterable[str]) -> str:
    """`db`.X -> `db`.X_local for every table X of the migrations."""
    names = set(tables)
    pattern = re.compile(rf"{re.escape(db)}\.(\w+)\b")
    return pattern.sub(lambda m: f"{db}.{m.group(1)}{LOCAL_SUFFIX}" if m.group(1) in names else m.group(0), statement)


def _create_table(
    statement: str, database: str, cluster: str, schema: _Schema, replicated: bool
) -> tuple[list[str], ClusterTable]:
    head, columns, rest = _split_create_table(statement)
    table = head.group("table")
    local = table + LOCAL_SUFFIX
    db = _quote(database)
    engine_match = _ENGINE.search(rest)
    if engine_match is None:
        raise ValueError(f"CREATE TABLE {table} has no ENGINE clause")
    engine, args = engine_match.group("engine"), engine_match.group("args")
    if engine in NODE_LOCAL_ENGINES:
        ine = "IF NOT EXISTS " if head.group("ine") else ""
        info = ClusterTable(name=table, local=local, engine=engine, replicated_engine=engine, sharding_key="")
        return [f"CREATE TABLE {ine}{db}.{local} {_on_cluster(cluster)}\n{columns}{rest}"], info
    if replicated:
        new_engine = _replicated_engine(engine, args, ZOOKEEPER_PATH, REPLICA_NAME)
        rest = re.sub(r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", rest)
    else:
        new_engine = f"{engine}({args.strip()})" if args and args.strip() else engine
    rest = rest[: engine_match.start()] + f"ENGINE = {new_engine}" + rest[engine_match.end() :]
    ine = "IF NOT EXISTS " if head.group("ine") else ""
    local_sql = f"CREATE TABLE {ine}{db}.{local} {_on_cluster(cluster)}\n{columns}{rest}"
    key = _sharding_key(columns, rest, table, set(schema.mv_targets))
    distributed_sql = (
        f"CREATE TABLE {ine}{db}.{table} {_on_cluster(cluster)}\nAS {db}.{local}\n"
        f"ENGINE = Distributed('{cluster}', '{database}', '{local}', {key})\n"
    )
    info = ClusterTable(
        name=table,
        local=local,
        engine=engine,
        replicated_engine=new_engine.split("(", 1)[0],
        sharding_key=key,
    )
    return [local_sql, distributed_sql], info


def _transform(statement: str, database: str, cluster: str, schema: _Schema, replicated: bool) -> list[str]:
    _check_name("database", database)
    _check_name("cluster", cluster, _CLUSTER_NAME)
    db = _quote(database)
    on = _on_cluster(cluster)
    if _CREATE_TABLE.match(statement):
        return _create_table(statement, database, cluster, schema, replicated)[0]
    mv = _CREATE_MV.match(statement)
    if mv is not None:
        body = _localise(statement[mv.end() :], db, schema.tables)
        ine = "IF NOT EXISTS " if mv.group("ine") else ""
        return [f"CREATE MATERIALIZED VIEW {ine}{db}.{mv.group('view')} {on}\n{body}"]
    view = _CREATE_VIEW.match(statement)
    if view is not None:  # a plain view reads the Distributed tables
        return [statement[: view.end()].rstrip() + f" {on}\n" + statement[view.end() :]]
    alter = _ALTER.match(statement)
    if alter is not None:
        table, ops = alter.group("table"), alter.group("ops").strip()
        if table not in schema.tables:
            raise ValueError(f"ALTER TABLE {table}: not a table of the migrations")
        out = [f"ALTER TABLE {db}.{table}{LOCAL_SUFFIX} {on}\n{ops}\n"]
        # The Distributed table mirrors the columns, nothing else (not codecs: they matter where data is)
        if _COLUMN_OPS.match(ops) and "CODEC(" not in ops.upper():
            out.append(f"ALTER TABLE {db}.{table} {on}\n{ops}\n")
        return out
    drop = _DROP_VIEW.match(statement)
    if drop is not None:
        ie = "IF EXISTS " if drop.group("ie") else ""
        return [f"DROP VIEW {ie}{db}.{_check_name('view', drop.group('view'))} {on}"]
    if _INSERT.match(statement):
        return [statement]  # through the Distributed tables: rows are sharded like any insert
    first = " ".join(statement.strip().split(None, 2)[:2])
    raise ValueError(f"cluster mode cannot translate a {first!r} statement; extend tracehouse.sinks.cluster")


def transform_statement(
    statement: str,
    database: str,
    cluster: str,
    migrations: Iterable[Migration] = MIGRATIONS,
    *,
    replicated: bool = True,
) -> list[str]:
    """The cluster form of one rendered statement (one or two statements), in the context of `migrations`
    (which tables exist, which ones materialized views fill). Raises ValueError for a statement kind it
    cannot translate safely."""
    return _transform(statement, database, cluster, _Schema.of(migrations, database), replicated)


def cluster_tables(migrations: Iterable[Migration] = MIGRATIONS, *, database: str = "tracehouse") -> list[ClusterTable]:
    """Every table of the migrations with its local name, engines and sharding key."""
    migrations = tuple(migrations)
    schema = _Schema.of(migrations, database)
    out = []
    for migration in migrations:
        for statement in migration.statements:
            rendered = render(statement, database, None, None)
            if _CREATE_TABLE.match(rendered):
                out.append(_create_table(rendered, database, "cluster", schema, True)[1])
    return out


def cluster_migration_statements(
    migration: Migration,
    database: str,
    cluster: str,
    *,
    migrations: Iterable[Migration] = MIGRATIONS,
    ttl_days: int | None = None,
    rollup_ttl_days: int | None = None,
    replicated: bool = True,
) -> list[str]:
    """The cluster DDL of one migration, in order (`migrations`: the whole list it belongs to)."""
    schema = _Schema.of(migrations, database)
    out: list[str] = []
    for statement in migration.statements:
        rendered = render(statement, database, ttl_days, rollup_ttl_days)
        out.extend(_transform(rendered, database, cluster, schema, replicated))
    return out


def cluster_statements(
    database: str,
    cluster: str,
    migrations: Iterable[Migration] = MIGRATIONS,
    *,
    ttl_days: int | None = None,
    rollup_ttl_days: int | None = None,
    replicated: bool = True,
) -> list[str]:
    """All cluster DDL of `migrations`, in order (without the database and the migrations table: see
    `migrations_table_statements`). `replicated=False` gives shards without replication (plain MergeTree
    engines under the Distributed tables)."""
    migrations = tuple(migrations)
    out: list[str] = []
    for migration in migrations:
        out.extend(
            cluster_migration_statements(
                migration,
                database,
                cluster,
                migrations=migrations,
                ttl_days=ttl_days,
                rollup_ttl_days=rollup_ttl_days,
                replicated=replicated,
            )
        )
    return out


def migrations_table_statements(database: str, cluster: str, *, replicated: bool = True) -> list[str]:
    """`CREATE DATABASE ... ON CLUSTER` and `schema_migrations`, replicated to every node (not sharded)."""
    _check_name("database", database)
    _check_name("cluster", cluster, _CLUSTER_NAME)
    db, on = _quote(database), _on_cluster(cluster)
    head, columns, rest = _split_create_table(render(MIGRATIONS_TABLE, database, None, None))
    engine_match = _ENGINE.search(rest)
    if engine_match is None:
        raise ValueError("schema_migrations has no ENGINE clause")
    if replicated:
        engine = _replicated_engine(
            engine_match.group("engine"),
            engine_match.group("args"),
            MIGRATIONS_ZOOKEEPER_PATH,
            MIGRATIONS_REPLICA_NAME,
        )
        rest = rest[: engine_match.start()] + f"ENGINE = {engine}" + rest[engine_match.end() :]
    return [
        f"CREATE DATABASE IF NOT EXISTS {db} {on}",
        f"CREATE TABLE IF NOT EXISTS {db}.{head.group('table')} {on}\n{columns}{rest}",
    ]


async def migrate_cluster(
    target: ClickHouseTarget,
    cluster: str,
    *,
    ttl_days: int | None = None,
    rollup_ttl_days: int | None = None,
    target_version: int | None = None,
    replicated: bool = True,
) -> MigrationReport:
    """`tracehouse migrate --cluster NAME`: bring every node of `cluster` to the latest schema version.

    Same contract as `tracehouse.sinks.migrate.migrate` (idempotent, versioned, returns a MigrationReport);
    `target` is the ClickHouseTarget of any node. DDL runs `ON CLUSTER`, so ClickHouse waits until every
    node applied it (up to `distributed_ddl_task_timeout`, 180 s by default) and fails if one did not; the
    version is recorded only after all of a migration's statements succeeded, and every statement is
    idempotent, so running it again after a failure finishes the job.
    """
    from tracehouse.sinks.clickhouse import async_client
    from tracehouse.sinks.migrate import MigrationReport, applied_versions

    if target_version is not None and target_version not in {m.version for m in MIGRATIONS}:
        known = ", ".join(str(m.version) for m in MIGRATIONS)
        raise ValueError(f"no schema version {target_version} (known versions: {known})")
    database = target.database
    client = await async_client(target, database=None)
    # The backfill inserts through Distributed tables: return only once every shard has its rows.
    settings = {"insert_distributed_sync": 1}
    try:
        for statement in migrations_table_statements(database, cluster, replicated=replicated):
            await client.command(statement)
        done = await applied_versions(client, database)
        applied: list[int] = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            if target_version is not None and migration.version > target_version:
                break
            for statement in cluster_migration_statements(
                migration,
                database,
                cluster,
                ttl_days=ttl_days,
                rollup_ttl_days=rollup_ttl_days,
                replicated=replicated,
            ):
                await client.command(statement, settings=settings)
            await client.insert(
                f"`{database}`.schema_migrations",
                [[migration.version, migration.description]],
                column_names=["version", "description"],
            )
            applied.append(migration.version)
            log.info("applied migration %d on cluster %s: %s", migration.version, cluster, migration.description)
        current = max(done | set(applied), default=0)
        return MigrationReport(database=database, applied=applied, current_version=current)
    finally:
        await client.close()
