"""The whole-stack benchmark's OTLP bodies (tests/benchmarks/otlp_workload.py): a body re-sent with its ids
and times patched into the bytes must decode as the same spans with new ids and current times, so the
benchmark's "every span stored once, every trace id new" holds and its delays are right."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from otlp_workload import (
    ATTRIBUTES_PER_SPAN,
    PHASE_KEY,
    SPANS_PER_BODY,
    SPANS_PER_TRACE,
    TEMPLATE_END_NS,
    BodyPool,
)


def _spans(body: bytes) -> list:  # type: ignore[type-arg]
    request = ExportTraceServiceRequest.FromString(body)
    assert len(request.resource_spans) == 1 and len(request.resource_spans[0].scope_spans) == 1
    return list(request.resource_spans[0].scope_spans[0].spans)


def test_fresh_body_is_the_template_with_new_ids_and_current_times(tmp_path: Path) -> None:
    cache = tmp_path / "bodies.pickle"
    BodyPool(2, seed=3, phase="warmup", cache=cache)
    pool = BodyPool(2, seed=3, phase="max", cache=cache)  # loaded from the cache, another phase
    now = time.time_ns()
    seen_traces: set[bytes] = set()
    seen_spans: set[bytes] = set()
    for template in pool.templates:
        body = bytes(pool.fresh(template, now))
        resource = ExportTraceServiceRequest.FromString(body).resource_spans[0].resource
        assert {a.key: a.value.string_value for a in resource.attributes}[PHASE_KEY] == "max"
        before, after = _spans(template.body), _spans(body)
        assert len(after) == SPANS_PER_BODY == template.spans
        for i, (old, new) in enumerate(zip(before, after, strict=True)):
            root = after[i - i % SPANS_PER_TRACE]
            assert new.start_time_unix_nano == old.start_time_unix_nano - TEMPLATE_END_NS + now
            assert new.end_time_unix_nano == old.end_time_unix_nano - TEMPLATE_END_NS + now
            assert root.start_time_unix_nano <= new.start_time_unix_nano < new.end_time_unix_nano
            assert new.end_time_unix_nano <= root.end_time_unix_nano == now
            assert new.trace_id == root.trace_id and new.trace_id != old.trace_id
            assert new.parent_span_id == (b"" if new is root else root.span_id)
            assert len(new.attributes) == ATTRIBUTES_PER_SPAN
            seen_spans.add(new.span_id)
            # Everything else is the template's, byte for byte.
            for field in ("trace_id", "span_id", "parent_span_id", "start_time_unix_nano", "end_time_unix_nano"):
                setattr(old, field, getattr(new, field))
            assert old == new
        seen_traces |= {s.trace_id for s in after}
    assert len(seen_traces) == 2 * SPANS_PER_BODY // SPANS_PER_TRACE
    assert len(seen_spans) == 2 * SPANS_PER_BODY


def test_the_same_template_sent_twice_shares_no_id() -> None:
    pool = BodyPool(1, seed=5, phase="p")
    first, second = (_spans(bytes(pool.fresh(pool.templates[0], time.time_ns()))) for _ in range(2))
    assert not {s.trace_id for s in first} & {s.trace_id for s in second}
    assert not {s.span_id for s in first} & {s.span_id for s in second}


def test_rate_limited_bodies_carry_one_429_and_only_when_asked() -> None:
    pool = BodyPool(9, seed=1, phase="p")  # every 8th body has a rate-limited LLM call
    calm = {id(pool.next(with_limited=False)) for _ in range(20)}
    assert all(not t.rate_limited for t in pool.templates if id(t) in calm)
    limited = [t for t in pool.templates if t.rate_limited]
    assert limited
    messages = [s.status.message for s in _spans(limited[0].body) if s.status.code == 2]
    assert len(messages) == 1 and "429" in messages[0]
