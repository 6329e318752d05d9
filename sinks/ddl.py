"""The ClickHouse schema of database `tracehouse`, as ordered, versioned migrations.

Each migration is a list of idempotent statements (`IF NOT EXISTS`, `ADD COLUMN IF NOT EXISTS`; the one
exception, version 2's backfill, says when that matters); the `schema_migrations` table records which
versions ran, so `tracehouse migrate` upgrades an existing database in place and running it twice changes
nothing. The layout follows the OpenTelemetry ClickHouse
exporter's reference DDL: Delta+ZSTD on nanosecond times, LowCardinality for names, kinds and models, ZSTD
on payloads, a bloom filter on trace id, and a trace-id -> time lookup table so "show trace X" reads one
day's partition instead of all of them. `spans` is a ReplacingMergeTree keyed down to the span id, so a
span a producer sent twice (a retry after a lost acknowledgement) collapses into one row on merge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MESSAGE_TUPLE = (
    "Array(Tuple(role LowCardinality(String), content String, name String, tool_call_id String, "
    "tool_calls Array(Tuple(id String, name String, arguments String))))"
)

SPANS_V1 = f"""
CREATE TABLE IF NOT EXISTS {{db}}.spans
(
    trace_id String CODEC(ZSTD(1)),
    span_id String CODEC(ZSTD(1)),
    parent_span_id String CODEC(ZSTD(1)),
    name LowCardinality(String) CODEC(ZSTD(1)),
    kind LowCardinality(String) CODEC(ZSTD(1)),
    service LowCardinality(String) CODEC(ZSTD(1)),
    start_time DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    end_time DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    duration_ns Int64 CODEC(ZSTD(1)),
    status LowCardinality(String) CODEC(ZSTD(1)),
    status_message String CODEC(ZSTD(1)),
    error_type LowCardinality(String) CODEC(ZSTD(1)),
    model LowCardinality(String) CODEC(ZSTD(1)),
    provider LowCardinality(String) CODEC(ZSTD(1)),
    input_tokens UInt32 CODEC(ZSTD(1)),
    output_tokens UInt32 CODEC(ZSTD(1)),
    total_tokens UInt32 CODEC(ZSTD(1)),
    cached_tokens UInt32 CODEC(ZSTD(1)),
    reasoning_tokens UInt32 CODEC(ZSTD(1)),
    cost_usd Float64 CODEC(ZSTD(1)),
    cost_source LowCardinality(String) CODEC(ZSTD(1)),
    input String CODEC(ZSTD(3)),
    output String CODEC(ZSTD(3)),
    attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    resource_attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    events Array(Tuple(name LowCardinality(String), time DateTime64(9), attributes Map(LowCardinality(String), String))) CODEC(ZSTD(1)),
    documents Array(Tuple(id String, content String, score Nullable(Float64), position UInt32, metadata Map(String, String))) CODEC(ZSTD(3)),
    prompt_template LowCardinality(String) CODEC(ZSTD(1)),
    prompt_version LowCardinality(String) CODEC(ZSTD(1)),
    prompt_text String CODEC(ZSTD(3)),
    prompt_variables Map(String, String) CODEC(ZSTD(3)),
    temperature Nullable(Float64) CODEC(ZSTD(1)),
    max_tokens Nullable(UInt32) CODEC(ZSTD(1)),
    top_p Nullable(Float64) CODEC(ZSTD(1)),
    stop Array(String) CODEC(ZSTD(1)),
    system_prompt String CODEC(ZSTD(3)),
    invocation_parameters String CODEC(ZSTD(3)),
    input_messages {MESSAGE_TUPLE} CODEC(ZSTD(3)),
    output_messages {MESSAGE_TUPLE} CODEC(ZSTD(3)),
    finish_reason LowCardinality(String) CODEC(ZSTD(1)),
    scores Array(Tuple(name LowCardinality(String), value Nullable(Float64), label String, source LowCardinality(String), comment String)) CODEC(ZSTD(1)),
    session_id String CODEC(ZSTD(1)),
    user_id String CODEC(ZSTD(1)),
    tags Array(LowCardinality(String)) CODEC(ZSTD(1)),
    ingest_partition UInt16 CODEC(ZSTD(1)),
    ingest_offset UInt64 CODEC(Delta(8), ZSTD(1)),
    ingested_at DateTime64(3) DEFAULT now64(3) CODEC(Delta(8), ZSTD(1)),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration duration_ns TYPE minmax GRANULARITY 1,
    INDEX idx_error_type error_type TYPE set(100) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(start_time)
ORDER BY (service, kind, toDateTime(start_time), trace_id, span_id)
{{ttl}}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000
"""

TRACE_LOOKUP_V1 = """
CREATE TABLE IF NOT EXISTS {db}.trace_id_ts
(
    trace_id String CODEC(ZSTD(1)),
    start DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    end DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(start)
ORDER BY (trace_id, start)
{ttl_lookup}
"""

TRACE_LOOKUP_MV_V1 = """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_id_ts_mv TO {db}.trace_id_ts
AS SELECT trace_id, min(start_time) AS start, max(end_time) AS end
FROM {db}.spans
GROUP BY trace_id
"""

# Which Kafka offsets are already stored, per topic and partition: the sink seeks past them after a
# crash, so a batch inserted but not yet committed to Kafka is never inserted twice.
INGEST_OFFSETS_V1 = """
CREATE TABLE IF NOT EXISTS {db}.ingest_offsets
(
    topic LowCardinality(String),
    partition UInt16,
    max_offset SimpleAggregateFunction(max, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (topic, partition)
"""

INGEST_OFFSETS_MV_V1 = """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.spans_ingest_offsets_mv TO {db}.ingest_offsets
AS SELECT 'tracehouse.spans' AS topic, ingest_partition AS partition, max(ingest_offset) AS max_offset
FROM {db}.spans
GROUP BY ingest_partition
"""

TRACES_V1 = """
CREATE TABLE IF NOT EXISTS {db}.traces
(
    trace_id String CODEC(ZSTD(1)),
    version UInt32,
    root_name LowCardinality(String) CODEC(ZSTD(1)),
    root_span_id String CODEC(ZSTD(1)),
    service LowCardinality(String) CODEC(ZSTD(1)),
    services Array(LowCardinality(String)) CODEC(ZSTD(1)),
    start_time DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    end_time DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    duration_ns Int64 CODEC(ZSTD(1)),
    span_count UInt32,
    error_count UInt32,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_tokens UInt64,
    reasoning_tokens UInt64,
    total_tokens UInt64,
    cost_usd Float64,
    unpriced_models Array(LowCardinality(String)),
    session_id String CODEC(ZSTD(1)),
    user_id String CODEC(ZSTD(1)),
    status LowCardinality(String),
    complete Bool,
    orphan_spans UInt32,
    slowest_span_id String,
    slowest_span_name LowCardinality(String),
    slowest_span_duration_ns Int64,
    emitted_at DateTime64(3) DEFAULT now64(3),
    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toDate(start_time)
ORDER BY trace_id
{ttl}
"""

ROLLUPS_V1 = """
CREATE TABLE IF NOT EXISTS {db}.rollups
(
    window_start DateTime CODEC(Delta(4), ZSTD(1)),
    window_seconds UInt32,
    service LowCardinality(String),
    kind LowCardinality(String),
    name LowCardinality(String),
    model LowCardinality(String),
    count UInt64,
    error_count UInt64,
    rate_limit_count UInt64,
    latency_p50_ms Float64,
    latency_p95_ms Float64,
    latency_p99_ms Float64,
    latency_max_ms Float64,
    latency_sketch String CODEC(ZSTD(1)),
    input_tokens UInt64,
    output_tokens UInt64,
    cached_tokens UInt64,
    reasoning_tokens UInt64,
    cost_usd Float64
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(window_start)
ORDER BY (window_seconds, service, kind, name, model, window_start)
{ttl_rollups}
"""

ALERTS_V1 = """
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    fired_at DateTime64(3),
    rule LowCardinality(String),
    service LowCardinality(String),
    severity LowCardinality(String),
    value Float64,
    threshold Float64,
    state LowCardinality(String),
    message String,
    window_start DateTime,
    window_seconds UInt32,
    labels Map(String, String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(fired_at)
ORDER BY (rule, service, window_start, state)
"""

# ---- version 2: per-minute aggregates of `spans`, any service/kind/name/model at any granularity ----------
#
# `rollups` holds what the worker computed for the alert rules' windows; `spans_minutely` is what SQL
# needs to ask about any group and any time step without scanning `spans`: one row per (minute, service,
# kind, name, model) holding mergeable states (-State); queries read it with -Merge and roll minutes up to
# any coarser step (see read/sql/latency-by-minute.sql). Latency is a t-digest (quantilesTDigest):
# a compact state that merges like the counts (an hour is the merge of its sixty minutes), approximate
# where `quantile` over raw spans is exact for small groups; tests/integration/test_queries.py holds it to within two
# ranks of the exact value.
#
# Aggregate columns are not named like the `spans` columns they summarise (`sum_input_tokens`, not
# `input_tokens`): with `sumState(x) AS x`, ClickHouse's old query analyzer substitutes the alias into
# its own argument, so servers still on it reject the view.
#
# The view counts every row inserted into `spans`. The sink inserts each Kafka offset once, so the only
# double counts are spans a producer sent twice (a retry): `spans` collapses those on merge, the
# aggregates keep both.
SPANS_MINUTELY_V2 = """
CREATE TABLE IF NOT EXISTS {db}.spans_minutely
(
    minute DateTime CODEC(Delta(4), ZSTD(1)),
    service LowCardinality(String),
    kind LowCardinality(String),
    name LowCardinality(String),
    model LowCardinality(String),
    calls AggregateFunction(count),
    errors AggregateFunction(countIf, UInt8),
    latency_ns AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Int64),
    max_duration_ns AggregateFunction(max, Int64),
    sum_input_tokens AggregateFunction(sum, UInt32),
    sum_output_tokens AggregateFunction(sum, UInt32),
    sum_cached_tokens AggregateFunction(sum, UInt32),
    sum_reasoning_tokens AggregateFunction(sum, UInt32),
    sum_total_tokens AggregateFunction(sum, UInt32),
    sum_cost_usd AggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (service, kind, model, name, minute)
{ttl_minutely}
"""

# The SELECT both the view and the backfill use, so the two cannot drift apart.
_SPANS_MINUTELY_SELECT = """
SELECT
    toStartOfMinute(start_time) AS minute,
    service,
    kind,
    name,
    model,
    countState() AS calls,
    countIfState(status = 'ERROR') AS errors,
    quantilesTDigestState(0.5, 0.95, 0.99)(duration_ns) AS latency_ns,
    maxState(duration_ns) AS max_duration_ns,
    sumState(input_tokens) AS sum_input_tokens,
    sumState(output_tokens) AS sum_output_tokens,
    sumState(cached_tokens) AS sum_cached_tokens,
    sumState(reasoning_tokens) AS sum_reasoning_tokens,
    sumState(total_tokens) AS sum_total_tokens,
    sumState(cost_usd) AS sum_cost_usd
"""

SPANS_MINUTELY_MV_V2 = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.spans_minutely_mv TO {db}.spans_minutely AS"
    + _SPANS_MINUTELY_SELECT
    + "FROM {db}.spans\nGROUP BY minute, service, kind, name, model\n"
)

# Backfill: the view only sees inserts made after it exists, so the spans already stored are aggregated
# once, here, right after the view is created. It is cheap next to the data it summarises: one pass over
# the light columns of `spans` (no payloads), FINAL so a stored duplicate counts once. Two caveats.
# A span inserted while this migration runs, between the view's creation and the backfill's read
# (milliseconds), is counted twice: run migrate before the sink starts, as `tracehouse up` does. And
# unlike every other statement here this one is not idempotent: if it fails midway (ClickHouse dies), the
# version is not recorded, and the next migrate backfills again on top of the part already inserted;
# `TRUNCATE TABLE spans_minutely` before that migrate makes it exact again (the backfill reads every span).
SPANS_MINUTELY_BACKFILL_V2 = (
    "INSERT INTO {db}.spans_minutely"
    + _SPANS_MINUTELY_SELECT
    + "FROM {db}.spans FINAL\nGROUP BY minute, service, kind, name, model\n"
)

# ---- version 3: scores added after the fact (core/scores.py), and the scores spans carry ----------------
#
# One table for every score, whichever way it came: the sink writes `tracehouse.scores` here (receiver,
# SDK `score()`, web explorer), and a materialized view copies the scores a span carries (`add_score`,
# the `spans.scores` column) with source 'sdk'. Exactly once by ReplacingMergeTree on the score id, read
# with FINAL (as `traces`, `rollups` and `alerts`), not by stored offsets (as `spans`): a redelivered
# message, a client's retry with the same score_id and a span sent twice all collapse the same way, and
# scores are few enough that FINAL costs nothing. No PARTITION BY: replacing only happens within a
# partition, and a retried score may carry another created_at than its first try.
#
# A span's scores get a deterministic id (MD5 of trace id, span id and position), so the view, a span
# stored twice and the backfill below all write the same rows. The span score's own `source` (free text,
# e.g. "llm_judge") becomes `author`. `ingest_partition` is the Kafka partition of the score (of the
# span, for those from spans): scores are keyed by trace id like spans, so in cluster mode (sinks/
# cluster.py shards on it) a trace's scores and spans live on one shard, and a score sent twice lands on
# the shard of its twin.
SCORES_V3 = """
CREATE TABLE IF NOT EXISTS {db}.scores
(
    score_id String CODEC(ZSTD(1)),
    trace_id String CODEC(ZSTD(1)),
    span_id String CODEC(ZSTD(1)),
    name LowCardinality(String) CODEC(ZSTD(1)),
    value Nullable(Float64) CODEC(ZSTD(1)),
    label LowCardinality(String) CODEC(ZSTD(1)),
    comment String CODEC(ZSTD(3)),
    source LowCardinality(String) CODEC(ZSTD(1)),
    author String CODEC(ZSTD(1)),
    created_at DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    ingest_partition UInt16 CODEC(ZSTD(1)),
    ingested_at DateTime64(3) DEFAULT now64(3) CODEC(Delta(8), ZSTD(1)),
    INDEX idx_created_at created_at TYPE minmax GRANULARITY 1,
    INDEX idx_name name TYPE set(1000) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
ORDER BY (trace_id, score_id)
"""

_SPAN_SCORES_SELECT = """
SELECT
    lower(hex(MD5(concat(trace_id, ':', span_id, ':', toString(n))))) AS score_id,
    trace_id,
    span_id,
    score.name AS name,
    score.value AS value,
    score.label AS label,
    score.comment AS comment,
    'sdk' AS source,
    score.source AS author,
    end_time AS created_at,
    ingest_partition
"""

_SPAN_SCORES_FROM = """
ARRAY JOIN scores AS score, arrayEnumerate(scores) AS n
"""

SCORES_FROM_SPANS_MV_V3 = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.scores_from_spans_mv TO {db}.scores AS"
    + _SPAN_SCORES_SELECT
    + "FROM {db}.spans"
    + _SPAN_SCORES_FROM
)

# The spans stored before this migration: idempotent, since their score ids are deterministic.
SCORES_FROM_SPANS_BACKFILL_V3 = (
    "INSERT INTO {db}.scores (score_id, trace_id, span_id, name, value, label, comment, source, author, "
    "created_at, ingest_partition)" + _SPAN_SCORES_SELECT + "FROM {db}.spans FINAL" + _SPAN_SCORES_FROM
)

# ---- version 4: spans_minutely counts a span sent twice once; lighter inserts ---------------------------
#
# A span a producer sent twice (an exporter's retry after a lost answer) is two rows of `spans` until a
# merge collapses them, and version 2's view aggregated both: the charts counted it twice, for good. Now
# the view aggregates only spans it has not seen: `spans_first_seen_mv` looks the block's span keys
# (SipHash-128 of trace id and span id) up in `span_keys`, a key-value table (EmbeddedRocksDB: point
# lookups, rows expire after SPAN_KEYS_TTL_S), keeps the unseen ones once each (LIMIT 1 BY: twins within
# one insert) and hands them to `spans_first_seen` (Null engine: stores nothing, only feeds its views),
# whose two views fill `spans_minutely` and record the keys. The chain is sequential within an insert,
# so the next insert sees this one's keys; the sink inserts a Kafka partition's batches one at a time,
# and twins share a partition (keyed by trace id).
#
# Why not feed the charts from the worker's rollups, which already deduplicate: their latency sketches
# merge only in Python (the charts roll minutes up to any step in SQL), they are windows of span end (the
# charts count by span start), and without a worker the charts would be empty. Cost of exactness here:
# 4-8 µs of server CPU per span, ~3 more with millions of keys stored (tests/benchmarks/
# clickhouse_insert.py); the cuts below pay for about that much.
#
# Limits, said here once: a twin arriving more than SPAN_KEYS_TTL_S after its first copy counts again
# (OpenTelemetry exporters and the Collector stop retrying after 5 minutes by default; 15 keeps three times
# that and bounds the table, whose lookups slow down as it grows); an insert that fails after its keys
# were written and is retried does not count its new spans (views are not transactional: the same window
# in which version 2 counted them twice); minutes aggregated before this migration keep their counts.
#
# Also: `spans` inserts are written as compact parts (SPANS_COMPACT_BYTES, the largest cut); `trace_id_ts`
# is ordered by trace id, so its bloom filter on trace id only cost inserts; and the large text columns of
# `spans` go from ZSTD(3) to ZSTD(1): 3-4 µs less per span, 5 % more bytes on disk (633 against 602 per
# span of issue 12's workload); parts written before keep ZSTD(3) until merged.
SPAN_KEYS_TTL_S = 900

SPAN_KEYS_V4 = f"""
CREATE TABLE IF NOT EXISTS {{db}}.span_keys
(
    key UInt128,
    seen UInt8 DEFAULT 1
)
ENGINE = EmbeddedRocksDB({SPAN_KEYS_TTL_S})
PRIMARY KEY key
"""

SPANS_FIRST_SEEN_V4 = """
CREATE TABLE IF NOT EXISTS {db}.spans_first_seen
(
    key UInt128,
    start_time DateTime64(9),
    service LowCardinality(String),
    kind LowCardinality(String),
    name LowCardinality(String),
    model LowCardinality(String),
    status LowCardinality(String),
    duration_ns Int64,
    input_tokens UInt32,
    output_tokens UInt32,
    cached_tokens UInt32,
    reasoning_tokens UInt32,
    total_tokens UInt32,
    cost_usd Float64
)
ENGINE = Null
"""

DROP_SPANS_MINUTELY_MV_V4 = "DROP VIEW IF EXISTS {db}.spans_minutely_mv"

# `seen` is 0 (the column default) where the LEFT JOIN finds no key: a direct key lookup in RocksDB.
SPANS_FIRST_SEEN_MV_V4 = """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.spans_first_seen_mv TO {db}.spans_first_seen AS
SELECT
    reinterpretAsUInt128(sipHash128(s.trace_id, s.span_id)) AS key,
    s.start_time AS start_time, s.service AS service, s.kind AS kind, s.name AS name, s.model AS model,
    s.status AS status, s.duration_ns AS duration_ns, s.input_tokens AS input_tokens,
    s.output_tokens AS output_tokens, s.cached_tokens AS cached_tokens, s.reasoning_tokens AS reasoning_tokens,
    s.total_tokens AS total_tokens, s.cost_usd AS cost_usd
FROM {db}.spans AS s
LEFT JOIN {db}.span_keys AS known ON key = known.key
WHERE known.seen = 0
LIMIT 1 BY key
"""

SPANS_MINUTELY_MV_V4 = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.spans_minutely_mv TO {db}.spans_minutely AS"
    + _SPANS_MINUTELY_SELECT
    + "FROM {db}.spans_first_seen\nGROUP BY minute, service, kind, name, model\n"
)

SPAN_KEYS_MV_V4 = """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_keys_mv TO {db}.span_keys AS
SELECT key FROM {db}.spans_first_seen
"""

TRACE_LOOKUP_NO_BLOOM_V4 = "ALTER TABLE {db}.trace_id_ts DROP INDEX IF EXISTS idx_trace_id"

# Inserts write compact parts (all columns in one file) below this many bytes; merges make wide parts above
# it. A wide part of `spans` opens a file and a write buffer per column stream (about 150): at the sink's
# insert sizes that cost more server CPU than the rows themselves (82 -> 54 µs per span at 5,000 rows per
# insert, tests/benchmarks/clickhouse_insert.py `compact`). The sink's largest batch (50,000 spans of
# ~2.6 KB) stays below it.
SPANS_COMPACT_BYTES = 256 << 20
SPANS_COMPACT_PARTS_V4 = f"ALTER TABLE {{db}}.spans MODIFY SETTING min_bytes_for_wide_part = {SPANS_COMPACT_BYTES}"

TEXT_CODECS_V4 = """
ALTER TABLE {db}.spans
    MODIFY COLUMN input String CODEC(ZSTD(1)),
    MODIFY COLUMN output String CODEC(ZSTD(1))
"""

# ---- version 6: guard alerts (pipeline/guards.py) are about one trace ------------------------------------
#
# An alert of a rule of type `trace` carries the trace's id, user and session. The trace id joins the
# sorting key, or two traces breaching one rule in one service within the same second would collapse into
# one row (ReplacingMergeTree); a guard alert published twice (a worker restarted mid-checkpoint) still
# does. ClickHouse lets a sorting key grow only by columns added in the same ALTER, hence one statement
# for the local table; the second adds the columns where the first did not (the Distributed table of the
# cluster mode, which mirrors columns only) and changes nothing on one server.
ALERTS_GUARD_KEY_V6 = """
ALTER TABLE {db}.alerts
    ADD COLUMN IF NOT EXISTS trace_id String,
    ADD COLUMN IF NOT EXISTS user_id String,
    ADD COLUMN IF NOT EXISTS session_id String,
    MODIFY ORDER BY (rule, service, window_start, state, trace_id)
"""

ALERTS_GUARD_COLUMNS_V6 = """
ALTER TABLE {db}.alerts
    ADD COLUMN IF NOT EXISTS trace_id String,
    ADD COLUMN IF NOT EXISTS user_id String,
    ADD COLUMN IF NOT EXISTS session_id String
"""

# ---- version 5: the worker's windows of scores -----------------------------------------------------------
#
# Per window (10 s and 60 s, as `rollups`) and per (score name, service, model) of the scored trace: how
# many scores, the count/sum/average/min/max of their numeric values, and how many of each label and each
# numeric value (up to 20 distinct per row, the rest under '__other__'; a value as text, "1.0"). What the
# alert rules on scores read; written by the sink from `tracehouse.score-rollups` (core/rollups.py
# ScoreRollup). A revised row (late scores) replaces its older self, as in `rollups`: read with FINAL.
SCORE_ROLLUPS_V5 = """
CREATE TABLE IF NOT EXISTS {db}.score_rollups
(
    window_start DateTime CODEC(Delta(4), ZSTD(1)),
    window_seconds UInt32,
    name LowCardinality(String),
    service LowCardinality(String),
    model LowCardinality(String),
    count UInt64,
    value_count UInt64,
    value_sum Float64,
    value_avg Float64,
    value_min Float64,
    value_max Float64,
    label_counts Map(String, UInt64),
    value_counts Map(String, UInt64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(window_start)
ORDER BY (window_seconds, name, service, model, window_start)
{ttl_rollups}
"""

# ---- version 7: the price version of each span and trace; cache-write tokens --------------------------------
#
# Costs come from a price table that changes (core/pricing.py: the built-in table, or the user's file named
# by TRACEHOUSE_PRICES, versioned by its content). Each span and trace now records the version it was priced
# with ('' where the cost came with the span), so one can tell which prices a number used and `tracehouse
# reprice` can bring stored costs to the current table. Tokens written to a provider's prompt cache are
# counted apart (`cache_write_tokens`, part of `input_tokens` as `cached_tokens` is), since they are billed
# at their own price. Rows stored before this migration read '' and 0.
SPANS_PRICE_VERSION_V7 = """
ALTER TABLE {db}.spans
    ADD COLUMN IF NOT EXISTS price_version LowCardinality(String) CODEC(ZSTD(1)) AFTER cost_source,
    ADD COLUMN IF NOT EXISTS cache_write_tokens UInt32 CODEC(ZSTD(1)) AFTER reasoning_tokens
"""

TRACES_PRICE_VERSION_V7 = """
ALTER TABLE {db}.traces
    ADD COLUMN IF NOT EXISTS price_version LowCardinality(String) AFTER cost_usd
"""

# ---- version 8: tail sampling ------------------------------------------------------------------------------
#
# With tail sampling on (pipeline/sampling.py), `traces` still records every trace; `sampled` says whether
# its spans are stored, `sampled_by` which rule kept it ('' when dropped). Rows stored before read true and
# '' (every span was stored then).
TRACES_SAMPLED_V8 = """
ALTER TABLE {db}.traces
    ADD COLUMN IF NOT EXISTS sampled Bool DEFAULT true,
    ADD COLUMN IF NOT EXISTS sampled_by LowCardinality(String)
"""

# ---- version 9: budget alerts (pipeline/budgets_merge.py) are about one user or session ----------------
#
# A budget alert names its user or session (service "*", no trace): without them in the sorting key, two
# users over one budget in one window would collapse into one row. The sink writes `identity` as
# "<user_id>|<session_id>" (sinks/record_routes.py); ClickHouse refuses a derived (DEFAULT/MATERIALIZED)
# column in a grown key, and, as in version 6, lets the key grow only by a column added in the same ALTER
# (the second statement adds it where the first did not: the Distributed table of the cluster mode).
# Rows stored before read ''.
ALERTS_SUBJECT_KEY_V9 = """
ALTER TABLE {db}.alerts
    ADD COLUMN IF NOT EXISTS identity String,
    MODIFY ORDER BY (rule, service, window_start, state, trace_id, identity)
"""

ALERTS_SUBJECT_COLUMN_V9 = """
ALTER TABLE {db}.alerts
    ADD COLUMN IF NOT EXISTS identity String
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "spans, trace-id lookup, ingest offsets, traces, rollups, alerts",
        (
            SPANS_V1,
            TRACE_LOOKUP_V1,
            TRACE_LOOKUP_MV_V1,
            INGEST_OFFSETS_V1,
            INGEST_OFFSETS_MV_V1,
            TRACES_V1,
            ROLLUPS_V1,
            ALERTS_V1,
        ),
    ),
    Migration(
        2,
        "spans_minutely: per-minute aggregate states of spans (view + backfill of stored spans)",
        (SPANS_MINUTELY_V2, SPANS_MINUTELY_MV_V2, SPANS_MINUTELY_BACKFILL_V2),
    ),
    Migration(
        3,
        "scores: scores added after the fact, and the scores spans carry (view + backfill)",
        (SCORES_V3, SCORES_FROM_SPANS_MV_V3, SCORES_FROM_SPANS_BACKFILL_V3),
    ),
    Migration(
        4,
        "spans_minutely counts each span once (span_keys); lighter span inserts (compact parts, ZSTD(1) text)",
        (
            SPAN_KEYS_V4,
            SPANS_FIRST_SEEN_V4,
            DROP_SPANS_MINUTELY_MV_V4,
            SPANS_FIRST_SEEN_MV_V4,
            SPANS_MINUTELY_MV_V4,
            SPAN_KEYS_MV_V4,
            TRACE_LOOKUP_NO_BLOOM_V4,
            TEXT_CODECS_V4,
            SPANS_COMPACT_PARTS_V4,
        ),
    ),
    Migration(5, "score_rollups: the worker's windows of scores", (SCORE_ROLLUPS_V5,)),
    Migration(
        6,
        "alerts: trace_id, user_id, session_id of guard alerts (rules of type trace); trace_id in the key",
        (ALERTS_GUARD_KEY_V6, ALERTS_GUARD_COLUMNS_V6),
    ),
    Migration(
        7,
        "spans and traces: the price version they were priced with; spans: cache_write_tokens",
        (SPANS_PRICE_VERSION_V7, TRACES_PRICE_VERSION_V7),
    ),
    Migration(8, "traces: sampled and sampled_by (tail sampling)", (TRACES_SAMPLED_V8,)),
    Migration(
        9,
        "alerts: identity (user and session of budget alerts) in the key",
        (ALERTS_SUBJECT_KEY_V9, ALERTS_SUBJECT_COLUMN_V9),
    ),
)

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version UInt32,
    description String,
    applied_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""

LATEST_VERSION = MIGRATIONS[-1].version


def render(statement: str, database: str, ttl_days: int | None, rollup_ttl_days: int | None) -> str:
    """Fill in the database name and the TTL clauses (none when retention is unlimited)."""
    ttl = f"TTL toDate(start_time) + INTERVAL {int(ttl_days)} DAY" if ttl_days else ""
    ttl_lookup = f"TTL toDate(start) + INTERVAL {int(ttl_days)} DAY" if ttl_days else ""
    ttl_rollups = f"TTL toDate(window_start) + INTERVAL {int(rollup_ttl_days)} DAY" if rollup_ttl_days else ""
    ttl_minutely = f"TTL toDate(minute) + INTERVAL {int(rollup_ttl_days)} DAY" if rollup_ttl_days else ""
    return statement.format(
        db=f"`{database}`",
        ttl=ttl,
        ttl_lookup=ttl_lookup,
        ttl_rollups=ttl_rollups,
        ttl_minutely=ttl_minutely,
    )


_TTL_DAYS = re.compile(r"TTL toDate\(start_time\) \+ toIntervalDay\((\d+)\)")


def ttl_days(engine_full: str) -> int | None:
    """The retention `render` wrote into a table, read back from `system.tables.engine_full` (None: none)."""
    match = _TTL_DAYS.search(engine_full)
    return int(match.group(1)) if match else None
