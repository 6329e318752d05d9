"""How fast the sink moves spans from Kafka into ClickHouse, next to the idiomatic Python way of doing it;
how many bytes a span takes on disk; how fast the named queries answer on 1,000,000 spans.

Run: `python tests/benchmarks/sink_throughput.py [--quick]` (a script, not a pytest test). It starts a
real Apache Kafka and the embedded ClickHouse engine (over HTTP) on free ports in a temporary directory,
unless TRACEHOUSE_KAFKA_BOOTSTRAP / TRACEHOUSE_CLICKHOUSE_URL name existing ones. Targets (issue):
at least the raw clickhouse-connect figure and at least 100,000 spans/s into the embedded server; trace
lookup by id and the top-N queries under 100 ms on 1,000,000 spans.

What is measured (realistic spans from TraceFactory: RAG, agent and chat traces, ~1.5 KB of msgpack each):

1. Where the time goes, per span, in this process (CPU µs, median of runs): decoding a Kafka message's
   spans, building the sink's rows, encoding them; and what the idiomatic peer does instead (building
   Python lists for clickhouse-connect).
2. The insert path alone, sink vs peer, same spans, same columns, same batch size, same endpoint, in the
   same run, interleaved: (a) the sink's own code from Kafka message bytes to acknowledged insert
   (`Route.decode` then `Sink._insert`, batch by batch) vs the peer from the same bytes (decode, build
   lists, `AsyncClient.insert(table, lists, column_names=...)`, the way a user writes a Python sink);
   (b) the same from rows already built (encode + send vs `insert` alone). The peer runs once with its
   defaults and once with the sink's insert settings, so the ratio shows what is format and what is
   settings. Server CPU per span is read from /proc when the server is the embedded one we started.
3. The sink end to end: N spans pre-loaded into `tracehouse.spans` (4 partitions, the SDK's transport),
   then a sink with a fresh consumer group and a fresh database reads them all. In process
   (`Sink(...).run(stop)`, timed from the first to the last acknowledged batch) and as a child process
   (`tracehouse sink`, timed by polling `count()`); spans/s between the first and the last batch landing,
   plus wall time from start (group join included).
4. Bytes per span on disk after OPTIMIZE FINAL, and the named queries (sinks/queries/*.sql) on 1,000,000
   spans (200,000 with --quick) spread over the last hour, loaded directly with the sink's row code
   (Kafka bypassed): median of 5 runs each after a warm-up; `trace` with a different trace id each run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections.abc import Callable
from typing import Any

import _harness as h
import msgspec

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import Span, decode_batch, encode_batch
from tracehouse.sinks.clickhouse import async_client, sync_client
from tracehouse.sinks.queries import QUERIES, run_query
from tracehouse.sinks.routes import Route, spans_route
from tracehouse.sinks.rows import SPAN_COLUMNS
from tracehouse.sinks.sink import Sink, SinkOptions

MESSAGE_SPANS = 500  # spans per Kafka message, as the SDK's transport sends them


# ---- the peer: what a user writes with clickhouse-connect -------------------------------------------


def peer_row(span: Span, prices: PriceTable, partition: int, offset: int) -> list[Any]:
    """One `spans` row as the Python values clickhouse-connect takes (nested tuples, dicts, lists)."""
    from tracehouse.core.pricing import price_span
    from tracehouse.sinks.rows import error_type_of

    llm = span.llm
    usage = span.usage
    prompt = span.prompt
    cost, source = price_span(prices, llm.model if llm else "", usage, span.cost_usd)

    def messages(items: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (m.role, m.content, m.name, m.tool_call_id, [(t.id, t.name, t.arguments) for t in m.tool_calls])
            for m in items
        ]

    return [
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.name,
        span.kind,
        span.service,
        span.start_time_ns,  # DateTime64(9) as int nanoseconds: no precision lost
        span.end_time_ns,
        span.end_time_ns - span.start_time_ns,
        span.status,
        span.status_message,
        error_type_of(span) if (span.status == "ERROR" or span.events) else "",
        llm.model if llm else "",
        llm.provider if llm else "",
        usage.input if usage else 0,
        usage.output if usage else 0,
        usage.total if usage else 0,
        usage.cached if usage else 0,
        usage.reasoning if usage else 0,
        cost,
        source,
        span.input,
        span.output,
        span.attributes,
        span.resource,
        [(e.name, e.time_ns, e.attributes) for e in span.events],
        [(d.id, d.content, d.score, d.position, d.metadata) for d in span.documents],
        prompt.name if prompt else "",
        prompt.version if prompt else "",
        prompt.template if prompt else "",
        prompt.variables if prompt else {},
        llm.temperature if llm else None,
        llm.max_tokens if llm else None,
        llm.top_p if llm else None,
        llm.stop if llm else [],
        llm.system_prompt if llm else "",
        llm.invocation_parameters if llm else "",
        messages(llm.input_messages) if llm else [],
        messages(llm.output_messages) if llm else [],
        llm.finish_reason if llm else "",
        [(s.name, s.value, s.label, s.source, s.comment) for s in span.scores],
        span.session_id,
        span.user_id,
        span.tags,
        partition,
        offset,
    ]


def peer_decode(value: bytes, prices: PriceTable, partition: int, offset: int) -> list[list[Any]]:
    spans, _ = decode_batch(value)
    return [peer_row(span, prices, partition, offset) for span in spans]


# ---- helpers -----------------------------------------------------------------------------------------


def messages_of(spans: list[Span]) -> list[bytes]:
    return [encode_batch(spans[i : i + MESSAGE_SPANS]) for i in range(0, len(spans), MESSAGE_SPANS)]


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def truncate_all(client: Any, database: str) -> None:
    names = client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree%'"
        " AND name != 'schema_migrations'",
        parameters={"db": database},
    ).result_rows
    for (name,) in names:
        client.command(f"TRUNCATE TABLE `{database}`.`{name}`")


def cpu_us(fn: Callable[[], Any], count: int, runs: int) -> list[float]:
    """CPU µs per item of `fn` in this thread, one figure per run."""
    out = []
    for _ in range(runs):
        gc.collect()
        start = time.thread_time()
        fn()
        out.append((time.thread_time() - start) * 1e6 / count)
    return out


# ---- 1 + 2: cost per span, and the insert path sink vs peer -----------------------------------------


def insert_path(stack: h.Stack, count: int, batch_rows: int, runs: int) -> None:
    h.note(f"insert path: {count:,} spans, batches of {batch_rows:,} rows, {runs} interleaved runs")
    settings = stack.settings("insert")
    stack.migrate(settings)
    prices = PriceTable()
    spans = h.make_spans(count, seed=1)
    count = len(spans)
    messages = messages_of(spans)
    route = spans_route(prices)
    avg_msgpack = sum(map(len, messages)) / count

    # 1. CPU per span of each step, in this process
    decoded = [s for m in messages for s in decode_batch(m)[0]]
    costs = {
        "decode (msgpack -> Span, validated)": cpu_us(lambda: [decode_batch(m) for m in messages], count, runs),
        "sink: build rows (span_row)": cpu_us(
            lambda: [route.decode(m, 0, i)[0] for i, m in enumerate(messages)], count, runs
        ),
        "peer: build Python lists": cpu_us(
            lambda: [peer_decode(m, prices, 0, i) for i, m in enumerate(messages)], count, runs
        ),
    }
    # route.decode and peer_decode include the decode: report the building alone
    decode_cost = h.median(costs["decode (msgpack -> Span, validated)"])
    costs["sink: build rows (span_row)"] = [c - decode_cost for c in costs["sink: build rows (span_row)"]]
    costs["peer: build Python lists"] = [c - decode_cost for c in costs["peer: build Python lists"]]
    sink_rows = [r for i, m in enumerate(messages) for r in route.decode(m, 0, i)[0]]
    peer_rows = [r for i, m in enumerate(messages) for r in peer_decode(m, prices, 0, i)]
    encoder = _sink_encoder()
    costs["sink: encode the batch for the insert"] = cpu_us(
        lambda: [encoder(rows) for rows in chunks(sink_rows, batch_rows)], count, runs
    )
    del decoded
    h.table(
        f"Where the time goes: CPU µs per span in this process ({count:,} spans, "
        f"{avg_msgpack:,.0f} B msgpack each), median (min-max) of {runs} runs",
        ["step", "µs/span"],
        [(name, h.spread(values, "{:.2f}")) for name, values in costs.items()],
        caption="decode is the same for both; sink total = decode + rows + encode, peer = decode + lists "
        "+ clickhouse-connect's own serialisation (inside its insert, below)",
    )

    # 2. the insert path, interleaved
    sink_settings = _sink_insert_settings()

    async def run() -> dict[str, list[tuple[float, float, float]]]:
        client = await async_client(settings.clickhouse)
        admin = sync_client(settings.clickhouse)
        sink = Sink(settings, SinkOptions(batch_rows=batch_rows))
        sink._client = client  # the sink's own insert code, without its Kafka consumer
        table = f"`{settings.clickhouse.database}`.spans"
        columns = list(SPAN_COLUMNS)

        async def sink_from_bytes() -> None:
            pending: list[msgspec.Struct] = []
            for i, m in enumerate(messages):
                pending.extend(route.decode(m, 0, i)[0])
                if len(pending) >= batch_rows:
                    await sink._insert(route, pending[:batch_rows])
                    pending = pending[batch_rows:]
            if pending:
                await sink._insert(route, pending)

        async def peer_from_bytes(settings_: dict[str, Any]) -> None:
            pending: list[list[Any]] = []
            for i, m in enumerate(messages):
                pending.extend(peer_decode(m, prices, 0, i))
                if len(pending) >= batch_rows:
                    await client.insert(table, pending[:batch_rows], column_names=columns, settings=settings_)
                    pending = pending[batch_rows:]
            if pending:
                await client.insert(table, pending, column_names=columns, settings=settings_)

        async def sink_rows_only() -> None:
            for rows in chunks(sink_rows, batch_rows):
                await sink._insert(route, rows)

        async def peer_rows_only(settings_: dict[str, Any]) -> None:
            for rows in chunks(peer_rows, batch_rows):
                await client.insert(table, rows, column_names=columns, settings=settings_)

        variants: dict[str, Callable[[], Any]] = {
            "sink, from message bytes": sink_from_bytes,
            "peer, from message bytes": lambda: peer_from_bytes({}),
            "sink, rows built (encode + insert)": sink_rows_only,
            "peer, lists built (insert)": lambda: peer_rows_only({}),
        }
        if sink_settings:
            variants["peer, from message bytes, sink's settings"] = lambda: peer_from_bytes(sink_settings)
            variants["peer, lists built, sink's settings"] = lambda: peer_rows_only(sink_settings)
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        names = list(variants)
        try:
            for r in range(runs):
                for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                    truncate_all(admin, settings.clickhouse.database)
                    gc.collect()
                    server0 = h.cpu_seconds(stack.clickhouse_pid) if stack.clickhouse_pid else float("nan")
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    await variants[name]()
                    wall = time.perf_counter() - wall0
                    cpu = time.process_time() - cpu0
                    server = (h.cpu_seconds(stack.clickhouse_pid) - server0) if stack.clickhouse_pid else 0.0
                    stored = admin.command("SELECT count() FROM spans")
                    if stored != count:
                        raise RuntimeError(f"{name}: {stored} rows stored, expected {count}")
                    results[name].append((count / wall, cpu * 1e6 / count, server * 1e6 / count))
                h.note(f"  run {r + 1}/{runs} done")
        finally:
            await client.close()
            admin.close()
        return results

    results = asyncio.run(run())
    rate = {name: h.median(x[0] for x in values) for name, values in results.items()}
    rows = []
    for name, values in results.items():
        peer_name = {
            "sink, from message bytes": "peer, from message bytes",
            "sink, rows built (encode + insert)": "peer, lists built (insert)",
        }.get(name)
        rows.append(
            (
                name,
                h.spread([x[0] for x in values]),
                h.spread([x[1] for x in values], "{:.1f}"),
                h.spread([x[2] for x in values], "{:.1f}") if stack.clickhouse_pid else "-",
                h.ratio(rate[name], rate[peer_name]) if peer_name else "",
            )
        )
    h.table(
        f"Insert path into {'the embedded engine' if stack.embedded else stack.clickhouse_url}: "
        f"{count:,} spans in batches of {batch_rows:,}, median (min-max) of {runs} interleaved runs",
        ["variant", "spans/s", "client CPU µs/span", "server CPU µs/span", "sink / peer"],
        rows,
        caption=f"peer = clickhouse-connect AsyncClient.insert(table, lists, column_names=...) (Native format); "
        f"sink insert settings: {sink_settings or 'none'}; {h.host_load()}",
    )


def _sink_encoder() -> Callable[[list[msgspec.Struct]], bytes]:
    from tracehouse.sinks.rows import encode_rows

    return encode_rows


def _sink_insert_settings() -> dict[str, Any]:
    import tracehouse.sinks.sink as sink_module

    return dict(getattr(sink_module, "SPANS_INSERT_SETTINGS", {}) or {})


# ---- 3: the sink end to end ---------------------------------------------------------------------------


async def _group_at(stack: h.Stack, group: str, start: dict[Any, int]) -> None:
    """Point the sink's new group at the first offset of our load (spans) and at the end of the rest."""
    from aiokafka import TopicPartition

    others = await h.end_offsets(stack.kafka_bootstrap, [topics.TRACES, topics.ROLLUPS, topics.ALERTS])
    offsets = {**others, **{TopicPartition(tp.topic, tp.partition): o for tp, o in start.items()}}
    await h.commit_group(stack.kafka_bootstrap, group, offsets)


def sink_in_process(stack: h.Stack, start: dict[Any, int], count: int, batch_rows: int) -> dict[str, float]:
    settings = stack.settings()
    stack.migrate(settings)
    asyncio.run(_group_at(stack, settings.sink_group, start))
    prices = PriceTable()
    base = spans_route(prices)
    first_message: list[float] = []

    def decode(value: bytes, partition: int, offset: int) -> Any:
        if not first_message:
            first_message.append(time.perf_counter())
        return base.decode(value, partition, offset)

    route = Route(base.topic, base.table, base.columns, decode, offsets_in_rows=True)
    flushes: list[tuple[float, int]] = []
    total = 0

    async def run() -> None:
        nonlocal total
        stop = asyncio.Event()

        def on_flush(rows: int) -> None:
            nonlocal total
            total += rows
            flushes.append((time.perf_counter(), total))
            if total >= count:
                stop.set()

        sink = Sink(
            settings,
            SinkOptions(batch_rows=batch_rows, stats_interval_s=3600),
            routes=[route],
            prices=prices,
            on_flush=on_flush,
        )
        task = asyncio.create_task(sink.run(stop))
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=600)
        except asyncio.TimeoutError:
            stop.set()
            await task
            raise RuntimeError(f"in-process sink stored {total} of {count} spans in 600 s") from None

    server0 = h.cpu_seconds(stack.clickhouse_pid) if stack.clickhouse_pid else float("nan")
    cpu0 = time.process_time()
    started = time.perf_counter()
    asyncio.run(run())
    cpu = time.process_time() - cpu0
    server = h.cpu_seconds(stack.clickhouse_pid) - server0 if stack.clickhouse_pid else float("nan")
    client = sync_client(settings.clickhouse)
    try:
        stored = client.command("SELECT count() FROM spans")
        distinct = client.command("SELECT uniqExact(trace_id, span_id) FROM spans")
    finally:
        client.close()
    stack.drop(settings)
    if stored != count or distinct != count:
        raise RuntimeError(f"in-process sink: {stored} rows, {distinct} distinct, expected {count}")
    (t_first, n_first), (t_last, n_last) = flushes[0], flushes[-1]
    done = flushes[-1][0]
    return {
        "steady": (n_last - n_first) / (t_last - t_first) if t_last > t_first else float("nan"),
        "from_first_message": count / (done - first_message[0]),
        "wall": done - started,
        "cpu_us": cpu * 1e6 / count,
        "server_us": server * 1e6 / count,
        "batches": len(flushes),
    }


def sink_child(stack: h.Stack, start: dict[Any, int], count: int, batch_rows: int) -> dict[str, float]:
    from tracehouse.infra.processes import ManagedProcess
    from tracehouse.infra.stack import LocalStack

    settings = stack.settings()
    stack.migrate(settings)
    asyncio.run(_group_at(stack, settings.sink_group, start))
    env = LocalStack(settings).child_env()
    client = sync_client(settings.clickhouse)
    seen: list[tuple[float, int]] = []
    server0 = h.cpu_seconds(stack.clickhouse_pid) if stack.clickhouse_pid else float("nan")
    started = time.perf_counter()
    sink = ManagedProcess(
        "sink", ["sink", "--batch-rows", str(batch_rows)], settings.data_dir / "logs", env
    ).start()
    try:
        last = 0
        deadline = time.monotonic() + 600
        while last < count:
            if not sink.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"child sink stored {last} of {count}:\n{sink.log_tail()}")
            now_count = int(client.command("SELECT count() FROM spans"))
            if now_count != last:
                seen.append((time.perf_counter(), now_count))
                last = now_count
            time.sleep(0.05)
        assert sink.pid is not None
        cpu = h.cpu_seconds(sink.pid)
        server = h.cpu_seconds(stack.clickhouse_pid) - server0 if stack.clickhouse_pid else float("nan")
    finally:
        sink.stop()
    try:
        stored = client.command("SELECT count() FROM spans")
    finally:
        client.close()
    stack.drop(settings)
    if stored != count:
        raise RuntimeError(f"child sink: {stored} rows, expected {count}")
    (t_first, n_first), (t_last, n_last) = seen[0], seen[-1]
    return {
        "steady": (n_last - n_first) / (t_last - t_first) if t_last > t_first else float("nan"),
        "wall": t_last - started,
        "cpu_us": cpu * 1e6 / count,  # includes interpreter start-up and group join
        "server_us": server * 1e6 / count,
    }


def end_to_end(stack: h.Stack, count: int, batch_rows: int, runs: int, child: bool) -> None:
    h.note(f"end to end: loading {count:,} spans into {topics.SPANS}...")
    spans = h.make_spans(count, seed=2)
    count = len(spans)
    start = asyncio.run(h.end_offsets(stack.kafka_bootstrap, [topics.SPANS]))
    load_s = h.load_spans(stack.kafka_bootstrap, spans)
    del spans
    h.note(f"  loaded in {load_s:.1f}s ({count / load_s:,.0f} spans/s through SpanTransport)")
    inproc: list[dict[str, float]] = []
    children: list[dict[str, float]] = []
    for r in range(runs):
        inproc.append(sink_in_process(stack, start, count, batch_rows))
        h.note(f"  in-process run {r + 1}/{runs}: {inproc[-1]['steady']:,.0f} spans/s")
        if child:
            children.append(sink_child(stack, start, count, batch_rows))
            h.note(f"  child-process run {r + 1}/{runs}: {children[-1]['steady']:,.0f} spans/s")
    rows = [
        (
            "in process: Sink(...).run(stop)",
            h.spread([x["steady"] for x in inproc]),
            h.spread([x["from_first_message"] for x in inproc]),
            h.spread([x["wall"] for x in inproc], "{:.1f}"),
            h.spread([x["cpu_us"] for x in inproc], "{:.1f}"),
            h.spread([x["server_us"] for x in inproc], "{:.1f}") if stack.clickhouse_pid else "-",
        )
    ]
    if children:
        rows.append(
            (
                "child process: tracehouse sink",
                h.spread([x["steady"] for x in children]),
                "-",
                h.spread([x["wall"] for x in children], "{:.1f}"),
                h.spread([x["cpu_us"] for x in children], "{:.1f}"),
                h.spread([x["server_us"] for x in children], "{:.1f}") if stack.clickhouse_pid else "-",
            )
        )
    h.table(
        f"Sink end to end: {count:,} spans pre-loaded in Kafka ({h.SPANS_PARTITIONS} partitions, "
        f"{MESSAGE_SPANS} spans/message) -> ClickHouse, batch_rows {batch_rows:,}; median (min-max) of {runs} runs",
        ["sink", "spans/s (first->last batch)", "spans/s (first message->last batch)", "wall s (from start)",
         "sink CPU µs/span", "server CPU µs/span"],
        rows,
        caption="every run: a fresh database and consumer group; all spans checked stored exactly once; "
        f"the sink, ClickHouse and Kafka share the machine's cores; {h.host_load()}",
    )


# ---- 4: bytes per span and named queries on 1M spans ------------------------------------------------


def load_direct(settings: Settings, count: int, batch: int = 100_000) -> tuple[int, float]:
    """`count` spans over the last hour into `spans`, through the sink's row code (no Kafka)."""
    prices = PriceTable()
    route = spans_route(prices)

    async def run() -> int:
        sink = Sink(settings)
        sink._client = await async_client(settings.clickhouse)
        loaded = 0
        seed = 100
        offset = 0
        try:
            while loaded < count:
                seed += 1
                spans = h.make_spans(min(batch, count - loaded), seed=seed, spread_s=3300)
                rows = []
                for m in messages_of(spans):
                    rows.extend(route.decode(m, offset % h.SPANS_PARTITIONS, offset)[0])
                    offset += 1
                await sink._insert(route, rows)
                loaded += len(rows)
        finally:
            await sink._client.close()
        return loaded

    started = time.perf_counter()
    loaded = asyncio.run(run())
    return loaded, time.perf_counter() - started


def query_latency(stack: h.Stack, count: int, runs: int) -> None:
    settings = stack.settings("queries")
    stack.migrate(settings)
    h.note(f"queries: loading {count:,} spans spread over the last hour...")
    loaded, load_s = load_direct(settings, count)
    h.note(f"  loaded {loaded:,} spans in {load_s:.1f}s ({loaded / load_s:,.0f} spans/s)")
    client = sync_client(settings.clickhouse, send_receive_timeout=1800)
    db = settings.clickhouse.database
    try:
        parts_before = client.command(
            "SELECT count() FROM system.parts WHERE database = {db:String} AND table = 'spans' AND active",
            parameters={"db": db},
        )
        trace_ids = [
            r[0]
            for r in client.query(
                "SELECT trace_id FROM spans WHERE parent_span_id = '' ORDER BY cityHash64(trace_id) LIMIT 50"
            ).result_rows
        ]
        before = time_queries(client, trace_ids, runs)
        h.note("  OPTIMIZE TABLE spans FINAL...")
        t0 = time.perf_counter()
        client.command("OPTIMIZE TABLE spans FINAL")
        optimize_s = time.perf_counter() - t0
        on_disk, uncompressed, rows, parts = client.query(
            "SELECT sum(bytes_on_disk), sum(data_uncompressed_bytes), sum(rows), count() FROM system.parts"
            " WHERE database = {db:String} AND table = 'spans' AND active",
            parameters={"db": db},
        ).result_rows[0]
        after = time_queries(client, trace_ids, runs)
    finally:
        client.close()
    h.table(
        f"On disk: {rows:,} spans after OPTIMIZE FINAL ({optimize_s:.1f}s)",
        ["figure", "value"],
        [
            ("bytes per span on disk", f"{on_disk / rows:,.0f}"),
            ("bytes per span uncompressed", f"{uncompressed / rows:,.0f}"),
            ("compression ratio", f"{uncompressed / on_disk:.1f}x"),
            ("active parts", parts),
        ],
        caption="sum(bytes_on_disk)/sum(rows) FROM system.parts WHERE table = 'spans' AND active "
        "(the table only: the trace-id lookup and per-minute tables are extra)",
    )
    limit_ms = 100
    top_n = {"trace", "slowest-calls", "slowest-llm", "expensive-calls", "exceptions"}
    out = []
    for name in before:
        b, a = before[name], after[name]
        target = f"< {limit_ms} ms" if name in top_n else ""
        verdict = ("met" if h.median(a) < limit_ms else "MISSED") if target else ""
        out.append((name, h.spread(b, "{:.1f}"), h.spread(a, "{:.1f}"), target, verdict))
    h.table(
        f"Named queries on {rows:,} spans over the last hour: ms per query (client wall, HTTP included), "
        f"median (min-max) of {runs} runs after a warm-up",
        ["query", f"as loaded ({parts_before} parts)", "after OPTIMIZE FINAL", "target", ""],
        out,
        caption="defaults as `tracehouse query NAME` runs them; `trace` looks up a different trace id each "
        f"run; {h.host_load()}",
    )


def time_queries(client: Any, trace_ids: list[str], runs: int) -> dict[str, list[float]]:
    rng = random.Random(5)
    results: dict[str, list[float]] = {}
    for name, query in sorted(QUERIES.items()):
        values: dict[str, Any] = {}
        times = []
        for r in range(runs + 1):
            if "trace_id" in {p.name for p in query.params} and name == "trace":
                values = {"trace_id": rng.choice(trace_ids)}
            t0 = time.perf_counter()
            result = run_query(client, query, values)
            elapsed = (time.perf_counter() - t0) * 1000
            if r > 0:  # the first run warms caches
                times.append(elapsed)
            if name == "trace" and not result.result_rows:
                raise RuntimeError(f"trace {values} not found")
        results[name] = times
    return results


# ---- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 runs: well under a minute")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--spans", type=int, default=None, help="spans for the end-to-end runs")
    parser.add_argument("--insert-spans", type=int, default=None, help="spans for the insert-path runs")
    parser.add_argument("--query-spans", type=int, default=None, help="spans for bytes/span and queries")
    parser.add_argument("--batch-rows", type=int, default=SinkOptions().batch_rows)
    parser.add_argument("--no-child", action="store_true", help="skip the child-process sink runs")
    parser.add_argument("--only", choices=["insert", "e2e", "queries"], action="append")
    args = parser.parse_args()
    quick = args.quick
    runs = args.runs or (2 if quick else 3)
    e2e_spans = args.spans or (20_000 if quick else 150_000)
    insert_spans = args.insert_spans or (20_000 if quick else 60_000)
    query_spans = args.query_spans or (200_000 if quick else 1_000_000)
    parts = set(args.only or ["insert", "e2e", "queries"])
    h.console.print(f"sink_throughput ({'quick' if quick else 'full'}): {h.python_info()}, {h.host_load()}")
    with h.Stack(need_kafka="e2e" in parts) as stack:
        if "insert" in parts:
            insert_path(stack, insert_spans, args.batch_rows, runs + (0 if quick else 2))
        if "e2e" in parts:
            end_to_end(stack, e2e_spans, args.batch_rows, runs, child=not (args.no_child or quick))
        if "queries" in parts:
            query_latency(stack, query_spans, 5)


if __name__ == "__main__":
    main()
