"""The OpenTelemetry GenAI semantic conventions' structured attributes into schema records:
`gen_ai.input.messages` / `gen_ai.output.messages` (JSON with typed parts), `gen_ai.system_instructions`,
`gen_ai.retrieval.documents` and `gen_ai.evaluation.*`.

Each returns None when the value is not the shape the convention gives it; the caller then leaves the
attribute as it was.
"""

from __future__ import annotations

from typing import Any

from tracehouse.core.schema import Document, Message, Score, ToolCall

from ..payload import SHORT_TEXT_CHARS, attr_text, finite, json_value, short
from .items import build_score


def _part_text(value: Any, limit: int) -> str:
    return attr_text(value, limit) if value is not None else ""


def genai_messages(value: Any, limit: int) -> tuple[list[Message], str] | None:
    """`gen_ai.input.messages` / `gen_ai.output.messages`: a JSON array of {role, parts[], name,
    finish_reason}; parts are text, tool_call, tool_call_response, reasoning, and media we do not type.
    Returns None when the value is not such an array (the attribute then stays as it was)."""
    parsed = json_value(value)
    if not isinstance(parsed, list):
        return None
    messages, finish = [], ""
    for entry in parsed:
        if not isinstance(entry, dict):
            return None
        texts: list[str] = []
        calls: list[ToolCall] = []
        tool_call_id = ""
        parts = entry.get("parts")
        if isinstance(parts, list):
            for part in parts:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind == "text":
                    texts.append(_part_text(part.get("content"), limit))
                elif kind == "tool_call":
                    calls.append(
                        ToolCall(
                            id=short(part.get("id") or ""),
                            name=short(part.get("name") or ""),
                            arguments=_part_text(part.get("arguments"), limit),
                        )
                    )
                elif kind == "tool_call_response":
                    tool_call_id = short(part.get("id") or "")
                    response = part.get("response", part.get("result"))
                    texts.append(_part_text(response, limit))
        elif entry.get("content") is not None:  # the pre-parts shape: {"role", "content"}
            texts.append(_part_text(entry.get("content"), limit))
        if not finish and entry.get("finish_reason"):
            finish = short(entry["finish_reason"])
        messages.append(
            Message(
                role=short(entry.get("role") or ""),
                content="".join(texts) if len(texts) != 1 else texts[0],
                name=short(entry.get("name") or ""),
                tool_call_id=tool_call_id,
                tool_calls=calls,
            )
        )
    return messages, finish


def system_instructions(value: Any, limit: int) -> str | None:
    """`gen_ai.system_instructions`: text parts joined; plain text accepted; None if it has other parts."""
    parsed = json_value(value)
    if parsed is None and type(value) is str:
        return attr_text(value, limit)
    if isinstance(parsed, str):
        return attr_text(parsed, limit)
    if not isinstance(parsed, list):
        return None
    texts = []
    for part in parsed:
        if not isinstance(part, dict) or part.get("type", "text") != "text":
            return None
        texts.append(_part_text(part.get("content"), limit))
    return "\n".join(texts)


def documents_genai(value: Any, limit: int) -> list[Document] | None:
    """`gen_ai.retrieval.documents`: a JSON array of {id, score, ...}; other keys become metadata."""
    parsed = json_value(value)
    if not isinstance(parsed, list):
        return None
    documents = []
    for position, entry in enumerate(parsed):
        if not isinstance(entry, dict):
            return None
        entry = dict(entry)
        doc_id = entry.pop("id", None)
        content = entry.pop("content", entry.pop("text", None))
        documents.append(
            Document(
                id=attr_text(doc_id, SHORT_TEXT_CHARS) if doc_id is not None else "",
                content=attr_text(content, limit) if content is not None else "",
                score=finite(entry.pop("score", None)),
                position=position,
                metadata={str(k): attr_text(v, limit) for k, v in entry.items()},
            )
        )
    return documents


def score_genai(values: dict[str, Any], limit: int) -> Score | None:
    """A GenAI evaluation result (`gen_ai.evaluation.*`), on a span or an evaluation event."""
    name = values.get("gen_ai.evaluation.name")
    value = values.get("gen_ai.evaluation.score.value")
    label = values.get("gen_ai.evaluation.score.label")
    if name is None and value is None and label is None:
        return None
    return build_score(name, value, label, None, values.get("gen_ai.evaluation.explanation"), limit, "evaluation")
