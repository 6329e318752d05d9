"""OpenInference's structured attributes into schema records: messages (`llm.input_messages.N.message.*`,
with tool calls and content parts), retrieved documents and evaluations/annotations.

The flat lists arrive as groups `{index: {suffix: value}}` (attributes.py); each reader pops what it
types from an item, and the caller gives the leftovers back to `Span.attributes`.
"""

from __future__ import annotations

from typing import Any

from tracehouse.core.schema import Document, Message, Score, ToolCall

from ..payload import SHORT_TEXT_CHARS, attr_text, finite, short, string_map
from .attributes import SpanAttributes, subgroups
from .items import build_score


def _tool_calls(item: dict[str, Any], prefix: str, limit: int) -> list[ToolCall]:
    calls = []
    for index, call in sorted(subgroups(item, prefix).items()):
        arguments = call.pop("tool_call.function.arguments", "")
        calls.append(
            ToolCall(
                id=short(call.pop("tool_call.id", "")),
                name=short(call.pop("tool_call.function.name", "")),
                arguments=attr_text(arguments, limit),
            )
        )
        for suffix, value in call.items():  # e.g. a reasoning signature: it stays in `attributes`
            item[f"{prefix}{index}.{suffix}"] = value
    return calls


def _content_parts(item: dict[str, Any], limit: int) -> str:
    """The text of `message.contents.K.message_content.*` parts; other parts stay on the item."""
    texts = []
    for index, part in sorted(subgroups(item, "message.contents.").items()):
        text = part.get("message_content.text")
        if text is not None and part.get("message_content.type", "text") == "text":
            texts.append(attr_text(text, limit))  # reasoning, images, audio: kept in `attributes`
            del part["message_content.text"]
            part.pop("message_content.type", None)
        for suffix, value in part.items():
            item[f"message.contents.{index}.{suffix}"] = value
    return "".join(texts)


def message_oi(item: dict[str, Any], limit: int) -> Message:
    """An OpenInference message from its `message.*` keys (consumed from `item`)."""
    role = short(item.pop("message.role", ""))
    content = item.pop("message.content", None)
    name = short(item.pop("message.name", ""))
    tool_call_id = short(item.pop("message.tool_call_id", ""))
    if not item:  # the usual message: role and content only
        return Message(role, attr_text(content, limit) if content is not None else "", name, tool_call_id, [])
    text = attr_text(content, limit) if content is not None else _content_parts(item, limit)
    tool_calls = _tool_calls(item, "message.tool_calls.", limit)
    function_name = item.pop("message.function_call_name", None)
    if function_name is not None:  # the legacy single function call
        arguments = item.pop("message.function_call_arguments_json", "")
        tool_calls.append(ToolCall(name=short(function_name), arguments=attr_text(arguments, limit)))
    return Message(role, text, name, tool_call_id, tool_calls)


def _document(item: dict[str, Any], position: int, limit: int) -> Document:
    doc_id = item.pop("document.id", None)
    content = item.pop("document.content", None)
    score = item.get("document.score")
    value = finite(score)
    if value is not None or score is None:
        item.pop("document.score", None)
    metadata: dict[str, str] = {}
    if "document.metadata" in item:
        parsed = string_map(item["document.metadata"], limit)
        if parsed is not None:
            metadata = parsed
            del item["document.metadata"]
    return Document(
        id=attr_text(doc_id, SHORT_TEXT_CHARS) if doc_id is not None else "",
        content=attr_text(content, limit) if content is not None else "",
        score=value,
        position=position,
        metadata=metadata,
    )


def documents_oi(attrs: SpanAttributes, prefix: str) -> list[Document]:
    group = attrs.group(prefix)
    if not group:
        return []
    documents = []
    for index, item in sorted(group.items()):
        documents.append(_document(item, index, attrs.limit))
        if item:
            attrs.give_back_group(prefix, index, item)
    return documents


def scores_oi(attrs: SpanAttributes, prefix: str, head: str) -> list[Score]:
    """OpenInference `evaluations.N.evaluation.*` / `annotations.N.annotation.*`."""
    group = attrs.group(prefix)
    if not group:
        return []
    scores = []
    for index, item in sorted(group.items()):
        scores.append(
            build_score(
                item.pop(f"{head}.name", None),
                item.pop(f"{head}.score", None),
                item.pop(f"{head}.label", None),
                item.pop(f"{head}.annotator_kind", None),
                item.pop(f"{head}.explanation", None),
                attrs.limit,
                head,
            )
        )
        if item:
            attrs.give_back_group(prefix, index, item)
    return scores
