"""The first slice, end to end on real Kafka and the real ClickHouse engine:
producer -> tracehouse.spans -> worker (validation, DLQ) and sink -> ClickHouse -> SQL."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from dead_letters import read_dead_letters
from kafka_groups import start_groups_at_end
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.schema import DeadLetter, encode_batch
from tracehouse.infra.ports import free_port
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    """A worker and a sink as child processes, on this test's database and consumer groups."""
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = LocalStack(settings).child_env()
    log_dir = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], log_dir, env).start()
    metrics_port = free_port()
    sink = ManagedProcess(
        "sink", ["sink", "--flush-interval", "0.3", "--metrics-port", str(metrics_port)], log_dir, env
    ).start()
    sink.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        yield worker, sink
    finally:
        sink.stop()
        worker.stop()


def test_spans_reach_clickhouse_and_bad_records_reach_the_dlq(
    settings: Settings, pipeline: tuple[ManagedProcess, ManagedProcess]
) -> None:
    factory = TraceFactory(TrafficOptions(seed=7))
    traces = [factory.any() for _ in range(150)]
    spans = [s for t in traces for s in t]
    trace_ids = sorted({s.trace_id for s in spans})

    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    assert transport.submit_many(spans) == len(spans)
    assert transport.flush(30)
    transport.shutdown()
    assert transport.stats.sent == len(spans) and transport.stats.dropped == 0

    # A garbage message and a batch with one invalid span among good ones.
    good = factory.rag()
    bad_span = good[0].__copy__()
    bad_span.end_time_ns = bad_span.start_time_ns - 1
    marker = b"not msgpack at all " + trace_ids[0].encode()

    async def send_bad() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.SPANS, marker)
            await producer.send_and_wait(topics.SPANS, encode_batch([bad_span, *good[1:]]))
        finally:
            await producer.stop()

    asyncio.run(send_bad())
    expected = len(spans) + len(good) - 1

    client = sync_client(settings.clickhouse)
    all_ids = [*trace_ids, good[0].trace_id]

    def landed() -> int:
        rows = client.query(
            "SELECT count() FROM spans WHERE has({ids:Array(String)}, trace_id)", parameters={"ids": all_ids}
        ).result_rows
        return int(rows[0][0])

    assert wait_until(lambda: landed() >= expected, timeout=90), f"only {landed()} of {expected} landed"
    time.sleep(1.5)  # anything extra (a duplicate) would have arrived by now
    assert landed() == expected
    distinct = client.query(
        "SELECT uniqExact(trace_id, span_id) FROM spans WHERE has({ids:Array(String)}, trace_id)",
        parameters={"ids": all_ids},
    ).result_rows[0][0]
    assert distinct == expected

    # What SQL finds: the fields the six questions need came through.
    one = traces[0]
    root = next(s for s in one if not s.parent_span_id)
    row = client.query(
        "SELECT name, kind, service, status, duration_ns FROM spans"
        " WHERE trace_id = {t:String} AND span_id = {s:String}",
        parameters={"t": root.trace_id, "s": root.span_id},
    ).result_rows
    assert row == [(root.name, root.kind, root.service, root.status, root.end_time_ns - root.start_time_ns)]
    llm = next(s for t in traces for s in t if s.kind == "LLM" and s.status == "OK")
    assert llm.llm is not None and llm.usage is not None
    row = client.query(
        "SELECT model, temperature, input_tokens, output_tokens, cached_tokens, cost_usd > 0, length(input_messages)"
        " FROM spans WHERE span_id = {s:String}",
        parameters={"s": llm.span_id},
    ).result_rows
    assert row == [(llm.llm.model, llm.llm.temperature, llm.usage.input, llm.usage.output, llm.usage.cached, True, 2)]
    retriever = next(s for t in traces for s in t if s.kind == "RETRIEVER")
    docs = client.query(
        "SELECT d.position, d.id, d.score FROM spans ARRAY JOIN documents AS d WHERE span_id = {s:String}"
        " ORDER BY d.position",
        parameters={"s": retriever.span_id},
    ).result_rows
    assert docs == [(d.position, d.id, d.score) for d in retriever.documents]

    # The worker assembled every trace; the sink stored one record per trace with the right totals.
    def traces_landed() -> int:
        return int(
            client.query(
                "SELECT count() FROM traces FINAL WHERE has({ids:Array(String)}, trace_id)",
                parameters={"ids": all_ids},
            ).result_rows[0][0]
        )

    assert wait_until(lambda: traces_landed() >= len(all_ids), timeout=60), traces_landed()
    records = {
        row[0]: row[1:]
        for row in client.query(
            "SELECT trace_id, span_count, error_count, total_tokens, root_name, complete FROM traces FINAL"
            " WHERE has({ids:Array(String)}, trace_id)",
            parameters={"ids": all_ids},
        ).result_rows
    }
    for trace in traces:
        root = next(s for s in trace if not s.parent_span_id)
        expected_record = (
            len(trace),
            sum(s.status == "ERROR" for s in trace),
            sum(s.usage.total for s in trace if s.usage),
            root.name,
            True,
        )
        assert records[trace[0].trace_id] == expected_record
    client.close()

    # The sink's metrics endpoint tells an operator how it is doing.
    _, sink = pipeline
    with urllib.request.urlopen(sink.metrics_url, timeout=5) as response:  # type: ignore[attr-defined]
        metrics = response.read().decode()
    rows_total = next(line for line in metrics.splitlines() if line.startswith("tracehouse_sink_rows_total"))
    assert float(rows_total.split()[-1]) >= expected
    assert 'tracehouse_sink_lag_messages{partition="0",topic="tracehouse.spans"}' in metrics
    assert "# TYPE tracehouse_sink_retries_total counter" in metrics

    # The worker dead-lettered both bad records with their reasons.
    def caused_here(letter: DeadLetter) -> bool:
        return letter.payload == marker or bad_span.span_id.encode() in letter.payload

    letters = asyncio.run(read_dead_letters(settings, caused_here, expected=2))
    reasons = sorted(letter.reason for letter in letters)
    assert len(letters) == 2, reasons
    assert any("not a span batch" in r for r in reasons), reasons
    assert any("end_time_ns" in r for r in reasons), reasons
