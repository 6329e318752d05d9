"""How `tracehouse replay --dlq` reads a dead letter's bytes: one span, a whole span message, or neither."""

from __future__ import annotations

from tracehouse.core.schema import Span, encode_batch, encode_span
from tracehouse.pipeline.replay_dlq import decode_letter


def span(n: int) -> Span:
    return Span(
        trace_id=f"{n:032x}", span_id=f"{n:016x}", name="step", service="svc",
        start_time_ns=1_700_000_000_000_000_000, end_time_ns=1_700_000_000_001_000_000,
    )  # fmt: skip


def test_one_span_and_a_whole_message_decode() -> None:
    assert decode_letter(encode_span(span(1))) == ([span(1)], [])
    assert decode_letter(encode_batch([span(2), span(3)])) == ([span(2), span(3)], [])


def test_what_still_fails_says_why() -> None:
    spans, reasons = decode_letter(b"\x81\xa1x\x01")  # {"x": 1}
    assert spans == [] and len(reasons) == 1 and reasons[0]
    spans, reasons = decode_letter(b"\xc1 not msgpack")
    assert spans == [] and len(reasons) == 1
    bad = encode_span(span(4)).replace(b"0" * 16, b"Z" * 16, 1)  # a span id that is not hex
    spans, reasons = decode_letter(bad)
    assert spans == [] and len(reasons) == 1
