"""OpenLLMetry's flattened messages (`gen_ai.prompt.N.*`, `gen_ai.completion.N.*`) into `Message`s."""

from __future__ import annotations

from typing import Any

from tracehouse.core.schema import Message, ToolCall

from ..payload import attr_text, short
from .attributes import subgroups


def message_openllmetry(item: dict[str, Any], limit: int) -> Message:
    """An OpenLLMetry `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` message (consumed from `item`)."""
    calls = []
    for index, call in sorted(subgroups(item, "tool_calls.").items()):
        calls.append(
            ToolCall(
                id=short(call.pop("id", "")),
                name=short(call.pop("name", "")),
                arguments=attr_text(call.pop("arguments", ""), limit),
            )
        )
        for suffix, value in call.items():
            item[f"tool_calls.{index}.{suffix}"] = value
    function_name = item.pop("function_call.name", None)
    if function_name is not None:
        arguments = item.pop("function_call.arguments", "")
        calls.append(ToolCall(name=short(function_name), arguments=attr_text(arguments, limit)))
    content = item.pop("content", "")
    return Message(
        role=short(item.pop("role", "")),
        content=attr_text(content, limit) if content is not None else "",
        name=short(item.pop("name", "")),
        tool_call_id=short(item.pop("tool_call_id", "")),
        tool_calls=calls,
    )
