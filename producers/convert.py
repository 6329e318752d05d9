"""Turning what applications hand over (dicts, SDK response objects, LangChain documents) into schema
structs, and the shared empty list those structs use.

LLM SDKs give messages as dicts (OpenAI's wire format), pydantic objects (their Python clients) or
content-part lists (Anthropic, multimodal OpenAI); retrievers give dicts or LangChain-style objects with
`page_content`. Accepting all of them here keeps instrumentation to one call per fact, and every text is
cut at the tracer's byte budget on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracehouse.core.schema import Document, Message, ToolCall

from .payload import attr_text, fit, opt_float, short, to_text


class _SharedEmptyList(list):  # type: ignore[type-arg]
    """The one empty list every built span uses for its empty list fields (events, tags, stop, ...).

    Why: msgspec gives each omitted list field a fresh `[]`, and lists are tracked by Python's cyclic GC.
    With spans queued behind a slow or absent broker, 5-9 tracked empty lists per span made the GC's full
    collections cost the app thread ~3x the span itself (measured: 11.4 µs/span vs 3.0 with this).
    It compares equal to `[]` and encodes as `[]` (msgspec then writes the empty field instead of
    omitting it: ~70 bytes per span before compression). It refuses mutation: in a `redact` hook assign
    a new list (`span.tags = [*span.tags, "x"]`) instead of appending.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("this empty list is shared by spans; assign a new list instead of changing it")

    append = extend = insert = remove = pop = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only  # type: ignore[assignment]


EMPTY_LIST: list[Any] = _SharedEmptyList()


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _content_text(content: Any, limit: int) -> str:
    """Message content as text: str as is, a list of text parts (OpenAI/Anthropic) joined, else JSON."""
    if type(content) is str:
        return fit(content, limit)[0]
    if content is None:
        return ""
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if _field(part, "type") != "text":
                break
            texts.append(str(_field(part, "text", "")))
        else:
            return fit("".join(texts), limit)[0]
    return to_text(content, limit)[0]


def _tool_call(call: Any, limit: int) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    function = _field(call, "function")  # OpenAI: {"id", "type": "function", "function": {name, arguments}}
    source = function if function is not None else call
    arguments = _field(source, "arguments", _field(source, "input", ""))
    return ToolCall(
        id=short(_field(call, "id", "")),
        name=short(_field(source, "name", "")),
        arguments=arguments if type(arguments) is str else to_text(arguments, limit)[0],
    )


def to_message(message: Any, limit: int) -> Message:
    """A chat message from a Message, a dict, a pydantic/SDK object with role/content, or a bare string
    (taken as a user message)."""
    if isinstance(message, Message):
        return message
    if type(message) is str:
        return Message(role="user", content=fit(message, limit)[0])
    tool_calls = _field(message, "tool_calls") or []
    return Message(
        role=short(_field(message, "role", "")),
        content=_content_text(_field(message, "content"), limit),
        name=short(_field(message, "name") or ""),
        tool_call_id=short(_field(message, "tool_call_id") or ""),
        tool_calls=[_tool_call(call, limit) for call in tool_calls] if tool_calls else EMPTY_LIST,
    )


def to_document(doc: Any, position: int, limit: int) -> Document:
    """A retrieved document from a Document, a dict (`content`, `text` or `page_content`), or an object
    such as LangChain's Document; `position` is its rank as given."""
    if isinstance(doc, Document):
        if doc.position == position:
            return doc
        return Document(id=doc.id, content=doc.content, score=doc.score, position=position, metadata=doc.metadata)
    if type(doc) is str:
        return Document(content=fit(doc, limit)[0], position=position)
    content = _field(doc, "content")
    if content is None:
        content = _field(doc, "text")
    if content is None:
        content = _field(doc, "page_content")
    metadata = _field(doc, "metadata") or {}
    doc_id = _field(doc, "id")
    if doc_id is None and isinstance(metadata, Mapping):
        doc_id = metadata.get("id")
    return Document(
        id="" if doc_id is None else str(doc_id),
        content=to_text(content, limit)[0],
        score=opt_float(_field(doc, "score")),
        position=position,
        metadata={str(k): attr_text(v, limit) for k, v in metadata.items()} if isinstance(metadata, Mapping) else {},
    )
