"""The worker applies the same time rule as the sink (core/timestamps.py), on the processor alone."""

from __future__ import annotations

import asyncio
from typing import Any

from tracehouse.core.schema import Span, encode_batch
from tracehouse.pipeline.partition_windows import windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor

NOW_NS = 1_790_000_000_000_000_000
YEAR_2250_NS = 8_835_000_000_000_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class _Sent:
    """What a Faust topic is to the processor (its `Sendable` protocol): here, a list."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    async def send(self, *, key: Any = None, value: Any = None, partition: int | None = None) -> None:
        self.values.append(value)


def _span(span_id: int, start_ns: int) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=f"{span_id:016x}",
        parent_span_id="" if span_id == 1 else f"{1:016x}",
        name=f"s{span_id}",
        start_time_ns=start_ns,
        end_time_ns=start_ns + 5_000_000,
        service="svc",
    )


def test_a_span_from_the_year_2250_is_left_out_of_its_trace_and_windows() -> None:
    dlq = _Sent()
    processor = SpanProcessor(
        traces_out=_Sent(),
        partials_out=_Sent(),
        dlq_out=dlq,
        windows_factory=windows_factory(),
        options=ProcessorOptions(checkpoint_interval_s=3600),
    )
    processor.attach(None, None)
    state = processor._partition(0, None, 0)
    value = encode_batch([_span(1, NOW_NS), _span(2, NOW_NS + 1_000_000), _span(3, YEAR_2250_NS)])

    asyncio.run(processor.on_message(state, 0, value, received_ns=NOW_NS))

    assert processor.stats.spans == 2 and processor.stats.refused_times == 1
    assert dlq.values == []  # the sink dead-letters it, once, from the same record
    [record] = state.assembler.due(now=10**9)
    assert record.span_count == 2 and record.end_time_ns < YEAR_2250_NS
