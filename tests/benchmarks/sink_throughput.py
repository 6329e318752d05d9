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
   (`Route.decode` then `Writer.insert`, batch by batch) vs the peer from the same bytes (decode, build
   lists, `AsyncClient.insert(table, lists, column_names=...)`, the way a user writes a Python sink);
   (b) the same from rows already built (encode + send vs `insert` alone). The peer runs once with its
   defaults and once with the sink's insert settings, so the ratio shows what is format and what is
   settings. Server CPU per span is read from /proc when the server is the embedded one we started.
3. The sink end to end: N spans pre-loaded into `tracehouse.spans` (4 partitions, the SDK's transport),
   then a sink with a fresh consumer group and a fresh database reads them all. In process
   (`Sink(...).run(stop)`, timed from the first to the last acknowledged batch) and as a child process
   (`tracehouse sink`, timed by polling `count()`); spans/s between the first and the last batch landing,
   plus wall time from start (group join included).
4. Bytes per span on disk after OPTIMIZE FINAL, and the named queries (read/sql/*.sql) on 1,000,000
   spans (200,000 with --quick) spread over the last hour, loaded directly with the sink's row code
   (Kafka bypassed): median of 5 runs each after a warm-up; `trace` with a different trace id each run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import random
import time
from collections.abc import Callable
from typing import Any

import _harness as h
import msgspec
from aiokafka import TopicPartition

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import Span, decode_batch, encode_batch
from tracehouse.read.queries import QUERIES, run_query
from tracehouse.sinks.clickhouse import async_client, sync_client
from tracehouse.sinks.routes import spans_route
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, encode_rows, span_row
from tracehouse.sinks.sink import Sink, SinkOptions

MESSAGE_SPANS = 500  # spans per Kafka message, as the SDK's transport sends them


# ---- the peer: what a user writes with clickhouse-connect -------------------------------------------


def peer_row(span: Span, prices: PriceTable, partition: int, offset: int) -> list[Any]:
    """One `spans` row as the Python values clickhouse-connect takes (nested tuples, dicts, lists)."""
    from tracehouse.core.pricing import price_span, priced_version
    from tracehouse.sinks.rows import error_type_of

    llm = span.llm
    usage = span.usage
    prompt = span.prompt
    cost, source = price_span(prices, llm.model if llm else "", usage, span.cost_usd, span.start_time_ns)

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
        priced_version(prices, source),
        usage.cache_write if usage else 0,
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


def each(fn: Callable[[Any], Any], items: list[Any]) -> None:
    """fn over items, dropping each result at once (as the sink drops a message's objects)."""
    for item in items:
        fn(item)


def cpu_us(fn: Callable[[], Any], count: int, runs: int) -> list[float]:
    """CPU µs per item of `fn` in this thread, one figure per run."""
    out = []
    for _ in range(runs):
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

    # 1. CPU per span of each step, in this process, message by message as the sink does it (each step's
    # output dropped after the message, like the sink's), with the heap frozen as the sink freezes it.
    decoded = [decode_batch(m)[0] for m in messages]
    peer_prices = PriceTable()
    encoder = _sink_encoder()
    sink_rows = [[span_row(s, prices, 0, i) for s in spans_] for i, spans_ in enumerate(decoded)]
    gc.collect()
    gc.freeze()
    try:
        costs = {
            "decode (msgpack -> Span, validated)": cpu_us(lambda: each(decode_batch, messages), count, runs),
            "sink: build rows (span_row)": cpu_us(
                lambda: each(lambda spans_: [span_row(s, prices, 0, 0) for s in spans_], decoded), count, runs
            ),
            "sink: encode rows (JSON lines)": cpu_us(lambda: each(encoder, sink_rows), count, runs),
            "peer: build Python lists": cpu_us(
                lambda: each(lambda spans_: [peer_row(s, peer_prices, 0, 0) for s in spans_], decoded), count, runs
            ),
        }
    finally:
        gc.unfreeze()
    sink_rows = [r for rows in sink_rows for r in rows]
    peer_rows = [r for i, spans_ in enumerate(decoded) for r in (peer_row(s, prices, 0, i) for s in spans_)]
    h.table(
        f"Where the time goes: CPU µs per span in this process ({count:,} spans, "
        f"{avg_msgpack:,.0f} B msgpack each), median (min-max) of {runs} runs",
        ["step", "µs/span"],
        [(name, h.spread(values, "{:.2f}")) for name, values in costs.items()],
        caption="message by message, heap frozen as the sink runs; sink = decode + rows + encode, peer = decode + "
        "lists + clickhouse-connect's own Native serialisation (inside its insert: client CPU in the next table)",
    )

    # 2. the insert path, interleaved
    sink_settings = _sink_insert_settings()

    async def run() -> dict[str, list[tuple[float, float, float]]]:
        client = await async_client(settings.clickhouse)
        admin = sync_client(settings.clickhouse)
        sink = Sink(settings, SinkOptions(batch_rows=batch_rows), routes=[route])
        sink.writer.client = client  # the sink's own code from message to insert, without its Kafka consumer
        table = f"`{settings.clickhouse.database}`.spans"
        columns = list(SPAN_COLUMNS)
        never = asyncio.Event()

        async def sink_from_bytes() -> None:
            # ConsumerLoop.add (decode, rows, encode into its lane's pending batch), then ConsumerLoop.flush
            # per full batch: the sink's own pipelining (each lane encodes its next batch while its last one is
            # inserted, lanes insert concurrently). Messages come from 4 partitions, as Kafka hands them.
            sink.consumer.floor.clear()  # each run hands the same offsets over again
            for i, m in enumerate(messages):
                tp = TopicPartition(topics.SPANS, i % 4)
                await sink.consumer.add(tp, i // 4, m)
                lane = sink.consumer.lane(tp)
                if sink.consumer.full(lane):
                    await sink.consumer.flush(lane, never)
            await sink.consumer.flush_all(never)

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
                await sink.writer.insert(route, [encoder(message) for message in chunks(rows, MESSAGE_SPANS)])

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
    return encode_rows


def _sink_insert_settings() -> dict[str, Any]:
    import tracehouse.sinks.sink as sink_module

    return dict((getattr(sink_module, "INSERT_SETTINGS", {}) or {}).get("spans") or {})


# ---- 3: the sink end to end ---------------------------------------------------------------------------


async def _group_at(stack: h.Stack, group: str, start: dict[Any, int]) -> None:
    """Point the sink's new group at the first offset of our load (spans) and at the end of the rest."""
    others = await h.end_offsets(stack.kafka_bootstrap, [topics.TRACES, topics.ROLLUPS, topics.ALERTS])
    offsets = {**others, **{TopicPartition(tp.topic, tp.partition): o for tp, o in start.items()}}
    await h.commit_group(stack.kafka_bootstrap, group, offsets)


def _steady(points: list[tuple[float, int]]) -> float:
    """Spans/s between the first and the last batch landing (nan with a single batch)."""
    (t_first, n_first), (t_last, n_last) = points[0], points[-1]
    return (n_last - n_first) / (t_last - t_first) if t_last > t_first else float("nan")


def sink_in_process(stack: h.Stack, start: dict[Any, int], count: int, batch_rows: int) -> dict[str, float]:
    settings = stack.settings()
    stack.migrate(settings)
    asyncio.run(_group_at(stack, settings.sink_group, start))
    prices = PriceTable()
    base = spans_route(prices)
    first_message: list[float] = []

    def decode(value: bytes, partition: int, offset: int, received_ns: int) -> Any:
        if not first_message:
            first_message.append(time.perf_counter())
        return base.decode(value, partition, offset, received_ns)

    route = dataclasses.replace(base, decode=decode)
    flushes: list[tuple[float, int]] = []
    total = 0

    async def run() -> None:
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
        stored, distinct = client.query("SELECT count(), uniqExact(trace_id, span_id) FROM spans").result_rows[0]
    finally:
        client.close()
    stack.drop(settings)
    if stored != count or distinct != count:
        raise RuntimeError(f"in-process sink: {stored} rows, {distinct} distinct, expected {count}")
    done = flushes[-1][0]
    return {
        "rate": count / (done - first_message[0]),
        "steady": _steady(flushes),
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
    args = ["sink", "--batch-rows", str(batch_rows)]
    sink = ManagedProcess("sink", args, settings.data_dir / "logs", env).start()
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
    return {
        "steady": _steady(seen),
        "wall": seen[-1][0] - started,
        "cpu_us": cpu * 1e6 / count,  # includes interpreter start-up and group join
        "server_us": server * 1e6 / count,
        "batches": len(seen),
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
        h.note(f"  in-process run {r + 1}/{runs}: {inproc[-1]['rate']:,.0f} spans/s")
        if child:
            children.append(sink_child(stack, start, count, batch_rows))
            h.note(f"  child-process run {r + 1}/{runs}: {children[-1]['steady']:,.0f} spans/s")

    def steady(results: list[dict[str, float]]) -> str:  # needs a few batches to mean anything
        return h.spread([x["steady"] for x in results]) if min(x["batches"] for x in results) >= 3 else "-"

    rows = [
        (
            "in process: Sink(...).run(stop)",
            h.spread([x["rate"] for x in inproc]),
            steady(inproc),
            h.spread([x["wall"] for x in inproc], "{:.1f}"),
            h.spread([x["cpu_us"] for x in inproc], "{:.1f}"),
            h.spread([x["server_us"] for x in inproc], "{:.1f}") if stack.clickhouse_pid else "-",
            f"{h.median(x['batches'] for x in inproc):.0f}",
        )
    ]
    if children:
        rows.append(
            (
                "child process: tracehouse sink",
                "-",
                steady(children),
                h.spread([x["wall"] for x in children], "{:.1f}"),
                h.spread([x["cpu_us"] for x in children], "{:.1f}"),
                h.spread([x["server_us"] for x in children], "{:.1f}") if stack.clickhouse_pid else "-",
                f"{h.median(x['batches'] for x in children):.0f}",
            )
        )
    target = 100_000
    best = h.median(x["rate"] for x in inproc)
    h.table(
        f"Sink end to end: {count:,} spans pre-loaded in Kafka ({h.SPANS_PARTITIONS} partitions, "
        f"{MESSAGE_SPANS} spans/message) -> ClickHouse, batch_rows {batch_rows:,}; median (min-max) of {runs} runs",
        [
            "sink",
            "spans/s (first message -> all stored)",
            "spans/s (first -> last batch landing)",
            "wall s from start",
            "sink CPU µs/span",
            "server CPU µs/span",
            "batches",
        ],
        rows,
        caption=f"target {target:,} spans/s into the embedded server: {'met' if best >= target else 'MISSED'} "
        f"({best / target:.2f} of it). Every run: a fresh database and consumer group, every span checked stored "
        "exactly once; the sink, ClickHouse and Kafka share the machine's cores; the child's CPU includes "
        f"its start-up; {h.host_load()}",
    )


# ---- 4: bytes per span and named queries on 1M spans ------------------------------------------------


def load_direct(settings: Settings, count: int, seed: int, *, varied_text: bool = False) -> float:
    """`count` spans over the last hour into `spans` through the sink's row code and insert settings (no
    Kafka); the next chunk is generated while ClickHouse inserts the last. Returns seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    prices = PriceTable()
    insert_settings = _sink_insert_settings()
    client = sync_client(settings.clickhouse, send_receive_timeout=600)
    pool = ThreadPoolExecutor(1)
    chunk = 100_000
    started = time.perf_counter()
    try:
        pending = None
        loaded = 0
        while loaded < count:
            spans = h.make_spans(min(chunk, count - loaded), seed=seed + loaded, spread_s=3300)
            if varied_text:
                h.vary_text(spans, seed=seed + loaded)
            body = encode_rows([span_row(s, prices, i % h.SPANS_PARTITIONS, i) for i, s in enumerate(spans)])
            loaded += len(spans)
            if pending is not None:
                pending.result()
            pending = pool.submit(
                client.raw_insert, "spans", SPAN_COLUMNS, body, settings=insert_settings, fmt=SPAN_FORMAT
            )
        if pending is not None:
            pending.result()
    finally:
        pool.shutdown()
        client.close()
    return time.perf_counter() - started


def on_disk(stack: h.Stack, count: int) -> None:
    """Bytes per span after OPTIMIZE FINAL, for TraceFactory's text and for varied text."""
    out = []
    for label, varied in (("TraceFactory payloads (slices of one fixed text)", False), ("varied text", True)):
        settings = stack.settings()
        stack.migrate(settings)
        load_direct(settings, count, seed=300, varied_text=varied)
        client = sync_client(settings.clickhouse, send_receive_timeout=1800)
        try:
            client.command("OPTIMIZE TABLE spans FINAL")
            disk, raw, rows = client.query(
                "SELECT sum(bytes_on_disk), sum(data_uncompressed_bytes), sum(rows) FROM system.parts"
                " WHERE database = {db:String} AND table = 'spans' AND active",
                parameters={"db": settings.clickhouse.database},
            ).result_rows[0]
            everything = client.command(
                "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {db:String} AND active",
                parameters={"db": settings.clickhouse.database},
            )
        finally:
            client.close()
        stack.drop(settings)
        out.append(
            (label, f"{disk / rows:,.0f}", f"{raw / rows:,.0f}", f"{raw / disk:.1f}x", f"{everything / rows:,.0f}")
        )
    h.table(
        f"On disk: {count:,} spans, after OPTIMIZE TABLE spans FINAL",
        ["payload text", "bytes/span on disk", "uncompressed", "ratio", "all tables, bytes/span"],
        out,
        caption="sum(bytes_on_disk)/sum(rows) FROM system.parts WHERE table = 'spans' AND active. TraceFactory's "
        "prompts are slices of one 40,000-word text, which ZSTD compresses far better than real prompts; 'varied "
        "text' replaces inputs, outputs, messages and documents with words drawn from a 20,000-word Zipf "
        "vocabulary (closer to prose); 'all tables' adds the trace-id lookup, offsets and per-minute tables",
    )


def query_latency(stack: h.Stack, count: int, runs: int, both: bool) -> None:
    settings = stack.settings("queries")
    stack.migrate(settings)
    h.note(f"queries: loading {count:,} spans spread over the last hour...")
    load_s = load_direct(settings, count, seed=100)
    h.note(f"  loaded in {load_s:.1f}s ({count / load_s:,.0f} spans/s)")
    client = sync_client(settings.clickhouse, send_receive_timeout=1800)
    db = settings.clickhouse.database
    try:
        rows = client.command("SELECT count() FROM spans")
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
        before = time_queries(client, trace_ids, runs) if both else {}
        h.note("  OPTIMIZE TABLE spans FINAL...")
        t0 = time.perf_counter()
        client.command("OPTIMIZE TABLE spans FINAL")
        optimize_s = time.perf_counter() - t0
        after = time_queries(client, trace_ids, runs)
    finally:
        client.close()
    limit_ms = 100
    top_n = {"trace", "slowest-calls", "slowest-llm", "expensive-calls", "exceptions"}
    out = []
    for name in after:
        a = after[name]
        target = f"< {limit_ms} ms" if name in top_n else ""
        verdict = ("met" if h.median(a) < limit_ms else "MISSED") if target else ""
        cells = [name]
        if both:
            cells.append(h.spread(before[name], "{:.1f}"))
        out.append((*cells, h.spread(a, "{:.1f}"), target, verdict))
    columns = ["query"]
    if both:
        columns.append(f"as loaded ({parts_before} parts)")
    h.table(
        f"Named queries on {rows:,} spans over the last hour: ms per query (client wall, HTTP included), "
        f"median (min-max) of {runs} runs after a warm-up",
        [*columns, f"after OPTIMIZE FINAL ({optimize_s:.0f}s)", "target", ""],
        out,
        caption="defaults as `tracehouse query NAME` runs them (since 1h); `trace` looks up a different trace id "
        f"each run; loaded at {count / load_s:,.0f} spans/s through the sink's rows and insert settings; "
        f"{h.host_load()}",
    )


def time_queries(client: Any, trace_ids: list[str], runs: int) -> dict[str, list[float]]:
    rng = random.Random(5)
    results: dict[str, list[float]] = {}
    for name, query in sorted(QUERIES.items()):
        times = []
        for r in range(runs + 1):
            values = {"trace_id": rng.choice(trace_ids)} if name == "trace" else {}
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
    parser.add_argument("--query-spans", type=int, default=None, help="spans for the named queries")
    parser.add_argument("--disk-spans", type=int, default=None, help="spans for bytes per span")
    parser.add_argument("--batch-rows", type=int, default=SinkOptions().batch_rows)
    parser.add_argument("--no-child", action="store_true", help="skip the child-process sink runs")
    parser.add_argument("--only", choices=["insert", "e2e", "disk", "queries"], action="append")
    args = parser.parse_args()
    quick = args.quick
    runs = args.runs or (2 if quick else 3)
    e2e_spans = args.spans or (60_000 if quick else 200_000)
    insert_spans = args.insert_spans or (20_000 if quick else 50_000)
    query_spans = args.query_spans or (200_000 if quick else 1_000_000)
    disk_spans = args.disk_spans or (20_000 if quick else 100_000)
    parts = set(args.only or ["insert", "e2e", "disk", "queries"])
    h.console.print(f"sink_throughput ({'quick' if quick else 'full'}): {h.python_info()}, {h.host_load()}")
    started = time.perf_counter()
    with h.Stack(need_kafka="e2e" in parts) as stack:
        if "insert" in parts:
            insert_path(stack, insert_spans, args.batch_rows, runs)
        if "e2e" in parts:
            end_to_end(stack, e2e_spans, args.batch_rows, runs, child=not (args.no_child or quick))
        if "disk" in parts:
            on_disk(stack, disk_spans)
        if "queries" in parts:
            query_latency(stack, query_spans, 5, both=not quick)
    h.note(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
