"""The worker's span decoder (pipeline/span_view.py) against the full one (core.schema.decode_batch): the same
spans accepted with the same values, the same spans rejected with the same reasons and bytes, the same
messages refused; on valid input and on hostile input."""

from __future__ import annotations

import types
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_schema import T0, full_span

from tracehouse.core import schema
from tracehouse.core.schema import SchemaError, Span, decode_batch, encode_batch, encode_span
from tracehouse.pipeline.span_view import WorkSpan, decode_work_batch, usage_total

# ---- the two schemas are the same, field for field ----------------------------------------------------------


def _same_type(full: msgspec.inspect.Type, work: msgspec.inspect.Type, seen: set[tuple[type, type]]) -> None:
    """`work` accepts what `full` accepts: the same type, except list[X] read as tuple[X, ...]."""
    if isinstance(full, msgspec.inspect.ListType):
        assert isinstance(work, msgspec.inspect.VarTupleType), (full, work)
        assert (full.min_length, full.max_length) == (work.min_length, work.max_length)
        _same_type(full.item_type, work.item_type, seen)
    elif isinstance(full, msgspec.inspect.StructType):
        assert isinstance(work, msgspec.inspect.StructType), (full, work)
        _same_struct(full, work, seen)
    elif isinstance(full, msgspec.inspect.UnionType):
        assert isinstance(work, msgspec.inspect.UnionType) and len(full.types) == len(work.types), (full, work)
        for a, b in zip(full.types, work.types, strict=True):
            _same_type(a, b, seen)
    elif isinstance(full, msgspec.inspect.DictType):
        assert isinstance(work, msgspec.inspect.DictType), (full, work)
        assert full == work
    else:
        assert full == work, (full, work)


_IDS = {
    "trace_id": ("^[0-9a-f]{32}$", (32, 32)),
    "span_id": ("^[0-9a-f]{16}$", (16, 16)),
    "parent_span_id": ("^([0-9a-f]{16})?$", (None, 16)),
}


def _same_struct(
    full: msgspec.inspect.StructType, work: msgspec.inspect.StructType, seen: set[tuple[type, type]]
) -> None:
    if (full.cls, work.cls) in seen:
        return
    seen.add((full.cls, work.cls))
    assert full.forbid_unknown_fields == work.forbid_unknown_fields
    assert full.array_like == work.array_like
    assert [f.name for f in full.fields] == [f.name for f in work.fields], full.cls
    for a, b in zip(full.fields, work.fields, strict=True):
        assert a.encode_name == b.encode_name and a.required == b.required, (full.cls, a.name)
        if full.cls is Span and a.name in _IDS:  # hex checked per batch (the hypothesis tests hold it)
            full_type = a.type.type if isinstance(a.type, msgspec.inspect.Metadata) else a.type
            assert full_type.pattern == _IDS[a.name][0]
            assert (b.type.min_length, b.type.max_length) == _IDS[a.name][1]
            continue
        if a.default_factory is list:
            assert b.default == (), (full.cls, a.name)
        elif a.default is not msgspec.NODEFAULT or b.default is not msgspec.NODEFAULT:
            assert a.default == b.default, (full.cls, a.name)
        else:
            assert a.default_factory == b.default_factory, (full.cls, a.name)
        _same_type(a.type, b.type, seen)


def test_work_span_declares_every_field_of_span_with_the_same_type() -> None:
    """A field added to Span must be added to WorkSpan too, or the worker would skip validating it."""
    _same_struct(msgspec.inspect.type_info(Span), msgspec.inspect.type_info(WorkSpan), set())


# ---- the two decoders agree ------------------------------------------------------------------------------------


def as_full(span: Span | WorkSpan) -> Span:
    """A decoded span as the full Span it stands for (tuples back to lists, the token total filled in)."""
    if isinstance(span, Span):
        return span
    try:
        return msgspec.convert(msgspec.to_builtins(span), Span)
    except msgspec.ValidationError as exc:
        raise AssertionError(f"the worker's decoder let through a span Span refuses: {exc}") from None


def outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        good, bad = decode(data)
    except SchemaError as exc:
        return "refused", exc.reason
    # compared as bytes: a NaN is not equal to itself
    return "decoded", ([encode_span(as_full(s)) for s in good], [(b.reason, b.payload) for b in bad])


def assert_agree(data: bytes) -> tuple[str, Any]:
    full = outcome(decode_batch, data)
    assert outcome(decode_work_batch, data) == full
    return full


def test_valid_batches_decode_to_work_spans_with_the_same_values() -> None:
    spans = [
        full_span(),
        full_span(span_id="c7ad6b7169203331", kind="RETRIEVER", llm=None, usage=None, events=[]),
        full_span(span_id="d7ad6b7169203331", usage=schema.TokenUsage(input=3, output=4)),
    ]
    data = encode_batch(spans)
    good, bad = decode_work_batch(data)
    assert bad == [] and all(isinstance(s, WorkSpan) for s in good)
    assert [as_full(s) for s in good] == spans
    assert [usage_total(s.usage) for s in good if s.usage] == [1500, 7]
    assert good[1].events == () and good[1].documents != ()  # an absent list costs nothing
    assert_agree(data)


_NASTY = [
    None, True, -1, 0, 2**32, 2**63 - 1, -(2**63), 1.5, float("nan"), "", "x", "X" * 1025, "ÿ", b"\x00",
    [], ["a"], [1], {}, {"a": "b"}, {"a": 1}, {"name": ""},
    # ids: a pattern's `$` also matches before a final newline; upper case; the wrong length; separators
    "0af7651916cd43dd8448eb211c80319c\n", "b7ad6b7169203331\n", "0AF7651916CD43DD8448EB211C80319C",
    "B7AD6B7169203331", "b7ad6b716920333", "b7ad6b71692033310", ",", "b7ad6b71,9203331", " " * 16,
    "0af7651916cd43dd8448eb211c80319", "0af7651916cd43dd8448eb211c80319cc", "b7ad6b7169203331",
]  # fmt: skip
_PATHS = [
    ("trace_id",), ("span_id",), ("parent_span_id",), ("name",), ("kind",), ("service",), ("status",),
    ("start_time_ns",), ("end_time_ns",), ("status_message",), ("input",), ("output",), ("attributes",),
    ("attributes", "k"), ("resource",), ("events",), ("events", 0, "name"), ("events", 0, "time_ns"),
    ("events", 0, "attributes"), ("llm",), ("llm", "model"), ("llm", "provider"), ("llm", "temperature"),
    ("llm", "max_tokens"), ("llm", "top_p"), ("llm", "stop"), ("llm", "stop", 0), ("llm", "system_prompt"),
    ("llm", "input_messages"), ("llm", "input_messages", 0, "role"), ("llm", "input_messages", 1, "content"),
    ("llm", "output_messages", 0, "tool_calls"), ("llm", "output_messages", 0, "tool_calls", 0, "id"),
    ("llm", "finish_reason"), ("llm", "invocation_parameters"), ("usage",), ("usage", "input"),
    ("usage", "output"), ("usage", "cached"), ("usage", "reasoning"), ("usage", "total"), ("cost_usd",),
    ("prompt",), ("prompt", "name"), ("prompt", "version"), ("prompt", "template"), ("prompt", "variables"),
    ("documents",), ("documents", 0, "id"), ("documents", 0, "score"), ("documents", 1, "position"),
    ("documents", 0, "metadata"), ("scores",), ("scores", 0, "name"), ("scores", 0, "value"),
    ("scores", 0, "label"), ("session_id",), ("user_id",), ("tags",), ("tags", 1), ("future_field",),
]  # fmt: skip


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        tree = tree[step]
    last = path[-1]
    if value is _DELETE:
        if isinstance(tree, dict):
            tree.pop(last, None)
        elif isinstance(tree, list) and isinstance(last, int) and last < len(tree):
            del tree[last]
    elif isinstance(tree, list) and isinstance(last, int) and last >= len(tree):
        tree.append(value)
    else:
        tree[last] = value


_DELETE = types.SimpleNamespace()
values = st.one_of(
    st.sampled_from([*_NASTY, _DELETE]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=40),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63)), max_size=3),
)
mutation = st.tuples(st.sampled_from(_PATHS), values)


def _mutated(span_id: int, changes: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    raw = msgspec.to_builtins(full_span(span_id=f"{span_id:016x}"))
    for path, value in changes:
        try:
            _set(raw, path, value)
        except (KeyError, IndexError, TypeError):
            pass  # the path no longer exists (an earlier change replaced its parent)
    return raw


def test_every_odd_value_in_every_field_gets_the_same_verdict_and_reason() -> None:
    """Each of the odd values above in each field, one at a time, in the middle span of three."""
    for path in _PATHS:
        for value in [*_NASTY, _DELETE]:
            raw_spans = [_mutated(i + 1, [(path, value)] if i == 1 else []) for i in range(3)]
            assert_agree(msgspec.msgpack.encode({"spans": raw_spans}))


@settings(max_examples=600, deadline=None)
@given(mutation, st.integers(min_value=0, max_value=2))
def test_one_hostile_field_gets_the_same_verdict_and_reason(change: tuple[tuple[Any, ...], Any], at: int) -> None:
    """One field anywhere in one span of a batch of three is changed to something odd: the worker's
    decoder accepts and rejects exactly what the full decoder does, with its words and bytes. (One
    change at a time: a batch the worker's decoder refuses anywhere goes to the full decoder whole, so a
    field it let through wrongly shows only when everything else in the batch is valid.)"""
    raw_spans = [_mutated(i + 1, [change] if i == at else []) for i in range(3)]
    assert_agree(msgspec.msgpack.encode({"spans": raw_spans}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(mutation, max_size=3), min_size=1, max_size=4))
def test_hostile_batches_get_the_same_verdicts_and_reasons(mutated: list[list[tuple[tuple[Any, ...], Any]]]) -> None:
    """Several changes in several spans of a batch."""
    raw_spans = [_mutated(i + 1, changes) for i, changes in enumerate(mutated)]
    assert_agree(msgspec.msgpack.encode({"spans": raw_spans}))


@pytest.mark.parametrize(
    "envelope",
    [
        {"spans": "nope"},
        {"spans": [], "v": "x"},
        {"spans": [{"unexpected": 1}], "v": 99},
        {"spans": [{"unexpected": 1}], "v": 1},
        {"v": 1},
        [1, 2],
        {"spans": [None, 5, "x"]},
    ],
)
def test_malformed_envelopes_are_refused_alike(envelope: Any) -> None:
    assert_agree(msgspec.msgpack.encode(envelope))


def test_post_init_checks_and_limits_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    backwards = msgspec.to_builtins(full_span()) | {"end_time_ns": T0 - 1}
    own_parent = msgspec.to_builtins(full_span()) | {"parent_span_id": full_span().span_id}
    for bad_span, reason in [
        (backwards, f"end_time_ns ({T0 - 1}) is before start_time_ns ({T0})"),
        (own_parent, "span is its own parent"),
    ]:
        raw = [msgspec.to_builtins(full_span()), bad_span]
        verdict, (good, bad) = assert_agree(msgspec.msgpack.encode({"spans": raw}))
        assert verdict == "decoded" and good == [encode_span(full_span())]
        assert [why for why, _ in bad] == [f"invalid span: {reason}"]
    monkeypatch.setattr(schema, "MAX_SPANS_PER_BATCH", 2)
    assert assert_agree(encode_batch([full_span()] * 3))[0] == "refused"
    monkeypatch.setattr(schema, "MAX_BATCH_BYTES", 100)
    assert assert_agree(encode_batch([full_span()]))[0] == "refused"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_get_the_same_verdict(data: bytes) -> None:
    assert_agree(data)
