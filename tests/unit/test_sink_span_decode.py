"""sinks/span_decode.py: the sink's faster decoding of a spans message returns what core.schema's does."""

from __future__ import annotations

import msgspec
import pytest

from tracehouse.core.schema import SchemaError, Span, decode_batch, encode_batch, encode_span
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.sinks import span_decode
from tracehouse.sinks.span_decode import decode_spans, ids_valid


def spans(count: int = 40) -> list[Span]:
    factory = TraceFactory(TrafficOptions(seed=5, prompt_bytes=256))
    out: list[Span] = []
    while len(out) < count:
        out.extend(factory.any())
    return out[:count]


def test_the_fast_path_implements_the_schemas_own_id_rules() -> None:
    """If core.schema's id patterns change, the fast path turns itself off instead of checking old rules."""
    assert span_decode.FAST_PATH
    assert span_decode._SpanIdsUnchecked.__struct_fields__ == Span.__struct_fields__


def test_valid_spans_decode_the_same_as_the_schema_decodes_them() -> None:
    message = encode_batch(spans())
    fast, rejected = decode_spans(message)
    strict, strict_rejected = decode_batch(message)
    assert rejected == strict_rejected == []
    assert [encode_span(s) for s in fast] == [encode_span(s) for s in strict]
    assert all(isinstance(s, Span) for s in fast)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", "X" * 32),  # not hex
        ("trace_id", "0" * 31),  # too short
        ("trace_id", "é" * 32),  # not ASCII
        ("span_id", "0123456789ABCDEF"),  # upper case
        ("span_id", ""),
        ("parent_span_id", "0" * 15),
    ],
)
def test_a_bad_id_is_rejected_with_the_schemas_reason(field: str, value: str) -> None:
    batch = [msgspec.structs.replace(s) for s in spans(10)]
    setattr(batch[3], field, value)
    message = encode_batch(batch)
    assert decode_spans(message) == decode_batch(message)
    good, rejected = decode_spans(message)
    assert len(good) == 9 and len(rejected) == 1
    assert not ids_valid(batch)


def test_an_unreadable_message_raises_as_the_schema_does() -> None:
    with pytest.raises(SchemaError) as fast:
        decode_spans(b"\x93not a batch")
    with pytest.raises(SchemaError) as strict:
        decode_batch(b"\x93not a batch")
    assert fast.value.reason == strict.value.reason


def test_a_span_that_is_its_own_parent_is_still_rejected() -> None:
    """`Span.__post_init__` is inherited by the fast path's type."""
    batch = [msgspec.structs.replace(s) for s in spans(4)]
    batch[1].parent_span_id = batch[1].span_id
    message = encode_batch(batch)
    assert decode_spans(message) == decode_batch(message)
    assert len(decode_spans(message)[1]) == 1
