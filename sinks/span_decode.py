"""Decoding a `tracehouse.spans` message for the sink, with the id checks done once per message.

core.schema's `Span` checks its three ids with regular expressions (`^[0-9a-f]{32}$` and the like), and
msgspec runs them span by span: three regex calls a span, the largest single cost of decoding one
(measured: ~40 % of `decode_batch` on the benchmark's spans, 1.5-2 µs of the sink's CPU per span). Here the
message is decoded into a subclass of `Span` whose ids are plain strings, and the ids of all its spans
are then checked at once with C-speed string operations (the lengths as a set, the characters with
`bytes.translate`). Only a message that fails (or does not decode) takes the strict path,
`core.schema.decode_batch`, which rejects exactly what it always did, with the same reasons: the rule
stays the schema's, and this is only a faster way to find that a message keeps it.

The rules checked here are the schema's: at import they are compared with `Span`'s own patterns, and if
the schema ever says otherwise the fast path is off (every message goes the strict way) rather than wrong.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Callable

import msgspec

from tracehouse.core.schema import (
    MAX_BATCH_BYTES,
    MAX_SPANS_PER_BATCH,
    RejectedSpan,
    Span,
    SpanBatch,
    decode_batch,
)


class _SpanIdsUnchecked(Span, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """`Span` with its ids as plain strings (checked per message instead). Everything else is inherited:
    the other fields' constraints, `__post_init__`, the properties; `isinstance(x, Span)` holds."""

    trace_id: str
    span_id: str
    parent_span_id: str = ""


class _BatchIdsUnchecked(SpanBatch, omit_defaults=True, gc=False):
    spans: list[_SpanIdsUnchecked]


_HEX = b"0123456789abcdef"
# field -> (the schema's pattern this check implements, the lengths it allows)
_ID_RULES: dict[str, tuple[str, frozenset[int]]] = {
    "trace_id": ("^[0-9a-f]{32}$", frozenset({32})),
    "span_id": ("^[0-9a-f]{16}$", frozenset({16})),
    "parent_span_id": ("^([0-9a-f]{16})?$", frozenset({0, 16})),
}


def _schema_pattern(field: str) -> str | None:
    hint = typing.get_type_hints(Span, include_extras=True)[field]
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.pattern is not None:
            return meta.pattern
    return None


FAST_PATH = all(_schema_pattern(field) == pattern for field, (pattern, _) in _ID_RULES.items())

_checks: list[tuple[Callable[[Span], str], frozenset[int]]] = [
    (operator.attrgetter(field), lengths) for field, (_, lengths) in _ID_RULES.items()
]
_decoder = msgspec.msgpack.Decoder(_BatchIdsUnchecked)


def ids_valid(spans: list[Span]) -> bool:
    """True when every span's ids keep the schema's patterns: the right lengths, lowercase hex only."""
    for get, lengths in _checks:
        ids = list(map(get, spans))
        if not set(map(len, ids)) <= lengths:
            return False
        if "".join(ids).encode().translate(None, _HEX):  # a character other than 0-9 a-f (or non-ASCII)
            return False
    return True


def decode_spans(data: bytes) -> tuple[list[Span], list[RejectedSpan]]:
    """What `core.schema.decode_batch` returns for `data` (valid spans, rejected ones; SchemaError when the
    message is unreadable), the common case faster (see the module docstring)."""
    if FAST_PATH and len(data) <= MAX_BATCH_BYTES:
        try:
            spans: list[Span] = _decoder.decode(data).spans  # type: ignore[assignment]
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            if len(spans) <= MAX_SPANS_PER_BATCH and ids_valid(spans):
                return spans, []
    return decode_batch(data)
