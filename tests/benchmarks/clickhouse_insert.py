"""Where the embedded ClickHouse server's CPU goes per stored span: materialized views, input format,
codecs on the large text columns, insert size.

Run: `python tests/benchmarks/clickhouse_insert.py [--spans N] [--runs R] [--batch B] [--only a,b]`
(a script, not a pytest test). It starts the embedded ClickHouse server (`tracehouse clickhouse`: chdb
behind the HTTP interface) in a temporary directory, makes one database per variant, and inserts the
same spans into each through the sink's real path: issue 12's OTLP workload (`receiver_throughput.
anchor_bodies`: traces of 1 AGENT + 3 children, 12 GenAI/OpenInference attributes, ~1 KB input and
~512 B output), mapped by the receiver's own code (`producers/otlp/ingest.py`), turned into `spans` rows
by the sink's code (`sinks/rows.py`) and sent as the sink sends them (`AsyncClient.raw_insert`, lz4,
the sink's insert settings, `batch` rows per insert).

What is printed: the server process's CPU µs per span (user + system from /proc, over the inserts
and the merges they start), median and spread of `runs` runs, and the median of each run's difference
to the first variant (`paired`: runs of one round are close in time, so this cancels slow drift in the
machine's load better than the difference of medians). The machine is shared, so variants are interleaved: run r does
every variant once, in an order rotated by r, and each variant's database is truncated before its run.

Variants (each a database migrated to the latest schema, then changed as named):
- `latest`: the schema as `tracehouse migrate` makes it today; `before`: the same with migration 4
  undone (BEFORE_V4), for the before/after figure;
- `keys3m`: `latest` with 3,000,000 keys already in `span_keys` (migration 4's first-seen filter looks
  every span up there; a full table is slower to look up than the empty one the other variants have);
- `null`: the rows into a Null-engine copy of `spans` (parsed, then dropped: HTTP, the server's Python,
  the body's spooling and the parse, nothing stored); `null-lz4` / `null-zstd` / `null-gzip`: the same
  with the body compressed (frames of 1 MiB, Content-Encoding), what decompressing costs the server;
  `-indexes`: `spans` without its skip indexes
  other than the trace-id bloom filter; `wide`: `spans` writes inserts of more than 10 MB as wide
  parts (a file per column stream: ClickHouse's default, which migration 4 raised);
- `-<view>`: `latest` without one materialized view (its cost is the difference), `-views`: none
  (`-exact` drops migration 4's first-seen filter, so `spans_minutely` and `span_keys` get nothing);
- `zstd1` / `lz4` / `zstd3`: the large text columns with that codec (`latest` otherwise);
- `rowbinary` / `native` / `msgpack`: the same rows in that format (converted by the server once, before timing).
Insert size: run again with `--batch`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h
import lz4.frame
from backports import zstd
from receiver_throughput import anchor_bodies

from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable
from tracehouse.producers.otlp.ingest import ingest
from tracehouse.sinks.clickhouse import async_client, sync_client
from tracehouse.sinks.ddl import SPANS_MINUTELY_MV_V2, render
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, encode_rows, span_row
from tracehouse.sinks.writer import INSERT_SETTINGS

PROTOBUF = "application/x-protobuf"
BODY_SPANS = 200  # spans per OTLP POST, as in issue 12's whole-stack run

# The views `spans` feeds, by the name the variants use.
VIEWS = {
    "exact": "spans_first_seen_mv",  # the first-seen filter and everything behind it (migration 4)
    "minutely": "spans_minutely_mv",
    "trace_lookup": "trace_id_ts_mv",
    "offsets": "spans_ingest_offsets_mv",
    "scores": "scores_from_spans_mv",
}
# The large text columns whose codec the codec variants change.
TEXT_COLUMNS = {"input": "String", "output": "String"}


# The latest schema as it was before migration 4 (later migrations add columns the rows carry, so the
# "before" figure is the latest schema with migration 4 undone, not a database stopped at version 3).
BEFORE_V4 = (
    "DROP VIEW IF EXISTS {db}.spans_first_seen_mv",
    "DROP VIEW IF EXISTS {db}.span_keys_mv",
    "DROP VIEW IF EXISTS {db}.spans_minutely_mv",
    SPANS_MINUTELY_MV_V2,
    "ALTER TABLE {db}.spans MODIFY COLUMN input String CODEC(ZSTD(3)), MODIFY COLUMN output String CODEC(ZSTD(3))",
    "ALTER TABLE {db}.trace_id_ts ADD INDEX IF NOT EXISTS idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 1",
    "ALTER TABLE {db}.spans RESET SETTING min_bytes_for_wide_part",
)


@dataclass
class Variant:
    name: str
    drop_views: tuple[str, ...] = ()
    codec: str = ""
    fmt: str = SPAN_FORMAT
    before_v4: bool = False
    table: str = "spans"  # where the inserts go
    drop_indexes: tuple[str, ...] = ()
    table_settings: str = ""  # ALTER TABLE spans MODIFY SETTING ...
    known_keys: int = 0  # span keys already in `span_keys` (kept across runs): a full table, as in production
    compression: str | None = None  # Content-Encoding of the bodies: one frame per 1 MiB, as clickhouse-connect sends
    settings: Settings | None = None
    bodies: list[bytes] = field(default_factory=list)  # one insert body per batch, in `fmt`
    us_per_span: list[float] = field(default_factory=list)


def variants(only: set[str] | None) -> list[Variant]:
    found = [
        Variant("latest"),
        Variant("before", before_v4=True),
        Variant("keys3m", known_keys=3_000_000),
        Variant("null", table="spans_null"),
        *(Variant(f"null-{codec}", table="spans_null", compression=codec) for codec in ("lz4", "zstd", "gzip")),
        Variant("wide", table_settings="min_bytes_for_wide_part = 10485760"),
        Variant("-indexes", drop_indexes=("idx_session_id", "idx_user_id", "idx_duration", "idx_error_type")),
        *(Variant(f"-{name}", drop_views=(view,)) for name, view in VIEWS.items()),
        Variant("-views", drop_views=tuple(VIEWS.values())),
        Variant("zstd1", codec="ZSTD(1)"),
        Variant("zstd3", codec="ZSTD(3)"),
        Variant("lz4", codec="LZ4"),
        Variant("rowbinary", fmt="RowBinary"),
        Variant("native", fmt="Native"),
        Variant("msgpack", fmt="MsgPack"),
    ]
    return [v for v in found if only is None or v.name in only]


def workload_rows(count: int) -> list[bytes]:
    """`count` spans of the workload as the sink's JSONCompactEachRow lines, one Kafka offset per body."""
    prices = PriceTable()
    lines: list[bytes] = []
    for offset, body in enumerate(anchor_bodies(max(1, count // BODY_SPANS), BODY_SPANS, "protobuf")):
        spans = ingest(body, PROTOBUF).spans
        lines.extend(encode_rows([span_row(span, prices, 0, offset) for span in spans]).splitlines(keepends=True))
    return lines[:count]


def prepare(stack: h.Stack, variant: Variant, batches: list[bytes]) -> None:
    """Make the variant's database, change its schema, and convert the batches to its format."""
    from tracehouse.sinks.migrate import migrate

    variant.settings = stack.settings(variant.name.strip("-").replace("-", "_") + "_" + str(id(variant))[-4:])
    asyncio.run(migrate(variant.settings.clickhouse))
    db = f"`{variant.settings.clickhouse.database}`"
    client = sync_client(variant.settings.clickhouse)
    try:
        if variant.before_v4:
            for statement in BEFORE_V4:
                client.command(render(statement, variant.settings.clickhouse.database, None, None))
        for view in variant.drop_views:
            client.command(f"DROP VIEW IF EXISTS {db}.{view}")
        if variant.table != "spans":
            client.command(f"CREATE TABLE {db}.{variant.table} AS {db}.spans ENGINE = Null")
        if variant.table_settings:
            client.command(f"ALTER TABLE {db}.spans MODIFY SETTING {variant.table_settings}")
        for index in variant.drop_indexes:
            client.command(f"ALTER TABLE {db}.spans DROP INDEX {index}")
        if variant.known_keys:
            client.command(
                f"INSERT INTO {db}.span_keys (key) SELECT reinterpretAsUInt128(sipHash128(number))"
                f" FROM numbers({variant.known_keys})"
            )
        if variant.codec:
            for column, typ in TEXT_COLUMNS.items():
                client.command(f"ALTER TABLE {db}.spans MODIFY COLUMN {column} {typ} CODEC({variant.codec})")
        if variant.fmt == SPAN_FORMAT:
            variant.bodies = [compress_frames(b, variant.compression) for b in batches]
            return
        # The same rows in another format: through a scratch table of the same structure, once, untimed
        client.command(f"CREATE TABLE {db}.scratch AS {db}.spans ENGINE = Memory")
        columns = ", ".join(SPAN_COLUMNS)
        for body in batches:
            client.raw_insert(f"{db}.scratch", column_names=list(SPAN_COLUMNS), insert_block=body, fmt=SPAN_FORMAT)
            variant.bodies.append(client.raw_query(f"SELECT {columns} FROM {db}.scratch", fmt=variant.fmt))
            client.command(f"TRUNCATE TABLE {db}.scratch")
        client.command(f"DROP TABLE {db}.scratch")
    finally:
        client.close()


def truncate(variant: Variant) -> None:
    """Empty the variant's tables (not `span_keys` of a variant that keeps known keys: the run's own keys
    are random, so they only grow it a little)."""
    assert variant.settings is not None
    db = f"`{variant.settings.clickhouse.database}`"
    client = sync_client(variant.settings.clickhouse)
    try:
        tables = client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}"
            " AND engine NOT IN ('MaterializedView', 'View', 'Null') AND name != 'schema_migrations'",
            parameters={"db": variant.settings.clickhouse.database},
        ).result_rows
        for (table,) in tables:
            if variant.known_keys and table == "span_keys":
                continue
            client.command(f"TRUNCATE TABLE {db}.`{table}`")
    finally:
        client.close()


async def insert_all(variant: Variant) -> None:
    """The batches, one insert each, as the sink's Writer.insert sends them."""
    assert variant.settings is not None
    client = await async_client(variant.settings.clickhouse)
    try:
        for body in variant.bodies:
            await client.raw_insert(
                f"`{variant.settings.clickhouse.database}`.{variant.table}",
                column_names=list(SPAN_COLUMNS),
                insert_block=body,
                fmt=variant.fmt,
                settings=INSERT_SETTINGS.get("spans"),
                compression=variant.compression,
            )
    finally:
        await client.close()


def compress_frames(body: bytes, codec: str | None, frame: int = 1 << 20) -> bytes:
    """`body` as concatenated frames of `codec` (None: as it is), one per `frame` bytes."""
    if codec is None:
        return body
    compress = {"lz4": lz4.frame.compress, "zstd": zstd.compress, "gzip": gzip.compress}[codec]
    return b"".join(compress(body[i : i + frame]) for i in range(0, len(body), frame))


def merges_running(variant: Variant) -> bool:
    assert variant.settings is not None
    client = sync_client(variant.settings.clickhouse)
    try:
        return bool(
            client.command(
                "SELECT count() FROM system.merges WHERE database = {db:String}",
                parameters={"db": variant.settings.clickhouse.database},
            )
        )
    finally:
        client.close()


def run_once(stack: h.Stack, variant: Variant, spans: int) -> float:
    """Server CPU µs per span of inserting the variant's batches and of the merges they start (waited
    for, so they are not billed to the next variant)."""
    truncate(variant)
    time.sleep(0.2)  # let the truncate's background work settle outside the measurement
    assert stack.clickhouse_pid is not None
    before = h.cpu_seconds(stack.clickhouse_pid)
    asyncio.run(insert_all(variant))
    time.sleep(0.3)  # a merge the last insert starts shows up in system.merges within this
    h.wait_for(lambda: not merges_running(variant), timeout=60, interval=0.1)
    used = h.cpu_seconds(stack.clickhouse_pid) - before
    return used * 1e6 / spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=20_000, help="spans per run (default 20,000)")
    parser.add_argument("--batch", type=int, default=5_000, help="rows per insert (default 5,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (default 3; medians)")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--rows-file", default="", help="keep the built rows in this file and reuse them")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None

    h.note(f"building {args.spans:,} spans of issue 12's workload...")
    cached = Path(args.rows_file) if args.rows_file else None
    if cached is not None and cached.exists():
        lines = cached.read_bytes().splitlines(keepends=True)[: args.spans]
    else:
        lines = workload_rows(args.spans)
        if cached is not None:
            cached.write_bytes(b"".join(lines))
    batches = [b"".join(lines[i : i + args.batch]) for i in range(0, len(lines), args.batch)]
    h.note(f"{len(lines):,} spans, {sum(map(len, batches)) / len(lines):,.0f} B per JSON row, {len(batches)} inserts")
    with h.Stack(need_kafka=False) as stack:
        if not stack.embedded:
            raise SystemExit("needs the embedded server this script starts (unset TRACEHOUSE_CLICKHOUSE_URL)")
        chosen = variants(only)
        for variant in chosen:
            prepare(stack, variant, batches)
        for variant in chosen:  # warm-up: handles, first parts, caches
            run_once(stack, variant, len(lines))
        for r in range(args.runs):
            order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
            for variant in order:
                variant.us_per_span.append(run_once(stack, variant, len(lines)))
            h.note(f"run {r + 1} of {args.runs} done ({h.host_load()})")
        base = statistics.median(chosen[0].us_per_span)
        h.table(
            f"Embedded ClickHouse server CPU per stored span ({len(lines):,} spans, {args.batch:,} rows per insert)",
            ["variant", "µs/span (median)", "runs", f"vs {chosen[0].name}", "paired"],
            [
                (
                    v.name,
                    f"{statistics.median(v.us_per_span):.1f}",
                    h.spread(v.us_per_span, "{:.1f}"),
                    f"{statistics.median(v.us_per_span) - base:+.1f}",
                    f"{statistics.median(paired(v.us_per_span, chosen[0].us_per_span)):+.1f}",
                )
                for v in chosen
            ],
            caption=h.host_load(),
        )
        columns_on_disk(chosen)


def paired(values: list[float], base: list[float]) -> list[float]:
    """Each run's difference to the base variant's run of the same round."""
    return [a - b for a, b in zip(values, base, strict=True)]


def columns_on_disk(chosen: list[Variant]) -> None:
    """Bytes per span of `spans` on disk after OPTIMIZE FINAL, for the variants that change how it is
    stored (what a codec or part format costs in space)."""
    rows = []
    for variant in chosen:
        if variant.codec or variant.table_settings or variant.name in ("latest", "before"):
            assert variant.settings is not None
            client = sync_client(variant.settings.clickhouse)
            try:
                client.command("OPTIMIZE TABLE spans FINAL")
                spans = client.command("SELECT count() FROM spans")
                size = client.command(
                    "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {db:String}"
                    " AND table = 'spans' AND active",
                    parameters={"db": variant.settings.clickhouse.database},
                )
            finally:
                client.close()
            rows.append((variant.name, f"{int(size) / max(int(spans), 1):,.0f}"))
    if rows:
        h.table("spans on disk after OPTIMIZE FINAL", ["variant", "bytes per span"], rows)


if __name__ == "__main__":
    main()
