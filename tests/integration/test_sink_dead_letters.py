"""Rows ClickHouse rejects for their content go to the DLQ with the reason; every other row lands once.

The rejection is real: the test changes a column of `spans` the way an operator might (`temperature` to
an integer type) so that ClickHouse cannot parse the two spans that carry a temperature. ClickHouse then
refuses the whole insert; the sink must split the batch down to those two rows, dead-letter them with
ClickHouse's reason and their Kafka origin, and store the rest exactly once.

(A CHECK constraint would be the more natural operator change, but chdb's streaming insert drops rows that
violate one without an error, so the embedded server cannot report it; a ClickHouse server does.)
"""

from __future__ import annotations

import asyncio
import threading
import time

from dead_letters import read_dead_letters
from kafka_groups import start_sink_group_at_end
from waiting import wait_until

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.sink import Sink, SinkOptions


class SinkThread:
    """The sink's own code (`Sink.run`) on an event loop in a thread, so the test can poll ClickHouse
    with blocking calls meanwhile; leaving the block stops it the way SIGTERM does."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(sink.run(self._stop),))

    def __enter__(self) -> Sink:
        self._thread.start()
        return self.sink

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the sink did not stop within 60 s"
        self._loop.close()


async def start_group_at_end(settings: Settings) -> None:
    """The sink sees only what this test sends (the session's topics hold every earlier test's records)."""
    await start_sink_group_at_end(settings)


def test_rows_clickhouse_rejects_go_to_the_dlq_and_the_rest_lands_once(settings: Settings) -> None:
    asyncio.run(migrate(settings.clickhouse))
    client = sync_client(settings.clickhouse)
    client.command("ALTER TABLE spans MODIFY COLUMN temperature Nullable(UInt8)")

    asyncio.run(start_group_at_end(settings))
    run = settings.sink_group
    factory = TraceFactory(TrafficOptions(seed=11, prompt_bytes=256))
    spans = [s for _ in range(300) for s in factory.any()]
    for span in spans:
        span.resource = {"test.run": run}
    llm_spans = [s for s in spans if s.llm is not None]
    for span in llm_spans:
        span.llm.temperature = None  # type: ignore[union-attr]
    poisoned = [llm_spans[3], llm_spans[len(llm_spans) // 2]]
    for span in poisoned:
        span.llm.temperature = 0.5  # type: ignore[union-attr]
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    assert transport.submit_many(spans) == len(spans)
    assert transport.flush(30)
    transport.shutdown()
    good = len(spans) - len(poisoned)

    def stored() -> tuple[int, int]:
        rows, distinct = client.query(
            "SELECT count(), uniqExact(trace_id, span_id) FROM spans"
            " WHERE resource_attributes['test.run'] = {r:String}",
            parameters={"r": run},
        ).result_rows[0]
        return int(rows), int(distinct)

    with SinkThread(Sink(settings, SinkOptions(group_id=settings.sink_group, gc_freeze=False))) as sink:
        assert wait_until(lambda: stored()[0] >= good, timeout=90), stored()
        time.sleep(1.0)  # a duplicate would have landed by now
    assert sink.stats.dead_letters >= len(poisoned)
    assert stored() == (good, good)
    assert (
        client.command(
            "SELECT count() FROM spans WHERE has({ids:Array(String)}, span_id)",
            parameters={"ids": [s.span_id for s in poisoned]},
        )
        == 0
    )

    ids = [s.span_id.encode() for s in poisoned]
    letters = asyncio.run(
        read_dead_letters(
            settings, lambda d: d.stage == "sink" and any(i in d.payload for i in ids), expected=len(poisoned)
        )
    )
    assert len(letters) == len(poisoned)
    for letter in letters:
        assert "ClickHouse rejected the row" in letter.reason and "Code: " in letter.reason, letter.reason
        assert letter.source_topic == topics.SPANS and letter.partition >= 0 and letter.offset >= 0
        assert letter.payload.endswith(b"\n") and letter.payload.count(b"\n") == 1  # exactly the one row
    client.close()
