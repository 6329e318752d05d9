"""Shrinking a span that alone exceeds a Kafka message's size, instead of losing it.

The SDK caps each text at `max_payload_bytes`, but a span can still grow past a message limit through
the number of its parts (60 retrieved documents of 32 KiB, a long chat history). Kafka refuses such a
message outright; retrying it would only block the spans queued behind it. So the transport cuts every
long text in the span (attribute and resource values, inputs, messages, tool-call arguments, documents
and their metadata) to a shrinking per-text budget until the span fits, marks the cut texts like the
SDK does, records the original encoded size in `tracehouse.span.truncated_from`, and gives up (the caller
counts the span as failed, or the receiver refuses it) only if even tiny budgets do not fit. Too many
parts (attributes, events) are the business of `span_limits`, which runs first.

The same path repairs a span msgpack cannot encode at all: a string holding a lone surrogate (from
`surrogateescape` decoding, say) in a short attribute the SDK's fast paths did not inspect.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tracehouse.core.schema import Span, encode_span

from .payload import fit

_MIN_BUDGET = 64
TRUNCATED_FROM = "tracehouse.span.truncated_from"  # the span's encoded size before its texts were cut


def _cut(text: str, budget: int) -> str:
    return text if len(text) <= budget // 4 else fit(text, budget)[0]


def _cut_values(values: dict[str, str], budget: int) -> dict[str, str]:
    return {k: _cut(v, budget) for k, v in values.items()}


def _cut_struct(obj: Any, budget: int, fields: tuple[str, ...]) -> Any:
    changes = {name: _cut(getattr(obj, name), budget) for name in fields}
    return msgspec.structs.replace(obj, **changes)


def _cut_message(message: Any, budget: int) -> Any:
    calls = [_cut_struct(c, budget, ("arguments",)) for c in message.tool_calls]
    return msgspec.structs.replace(message, content=_cut(message.content, budget), tool_calls=calls)


def _cut_document(document: Any, budget: int) -> Any:
    return msgspec.structs.replace(
        document,
        id=_cut(document.id, budget),
        content=_cut(document.content, budget),
        metadata=_cut_values(document.metadata, budget),
    )


def _shrunk(span: Span, budget: int) -> Span:
    llm = span.llm
    if llm is not None:
        llm = msgspec.structs.replace(
            llm,
            system_prompt=_cut(llm.system_prompt, budget),
            invocation_parameters=_cut(llm.invocation_parameters, budget),
            input_messages=[_cut_message(m, budget) for m in llm.input_messages],
            output_messages=[_cut_message(m, budget) for m in llm.output_messages],
        )
    prompt = span.prompt
    if prompt is not None:
        prompt = msgspec.structs.replace(
            prompt, template=_cut(prompt.template, budget), variables=_cut_values(prompt.variables, budget)
        )
    return msgspec.structs.replace(
        span,
        input=_cut(span.input, budget),
        output=_cut(span.output, budget),
        status_message=_cut(span.status_message, budget),
        attributes=_cut_values(span.attributes, budget),
        resource=_cut_values(span.resource, budget),
        events=[msgspec.structs.replace(e, attributes=_cut_values(e.attributes, budget)) for e in span.events],
        llm=llm,
        prompt=prompt,
        documents=[_cut_document(d, budget) for d in span.documents],
        scores=[_cut_struct(s, budget, ("comment",)) for s in span.scores],
    )


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def sanitized(span: Span) -> Span:
    """The span with every string made encodable (lone surrogates replaced by "?")."""
    return msgspec.convert(_clean(msgspec.to_builtins(span)), Span)


def shrink_to_fit(span: Span, max_bytes: int) -> tuple[Span, bytes] | None:
    """Return the span (repaired or shrunk if needed) and its msgpack encoding of at most `max_bytes`,
    or None when that is impossible."""
    try:
        data = encode_span(span)
    except Exception:  # a string holding lone surrogates that slipped past the SDK
        try:
            span = sanitized(span)
            data = encode_span(span)
        except Exception:
            return None
    if len(data) <= max_bytes:
        return span, data
    original = len(data)
    budget = max(max_bytes // 4, _MIN_BUDGET)
    while budget >= _MIN_BUDGET:
        try:
            smaller = _shrunk(span, budget)
            smaller.attributes[TRUNCATED_FROM] = str(original)
            data = encode_span(smaller)
        except Exception:
            return None
        if len(data) <= max_bytes:
            return smaller, data
        budget //= 4
    return None
