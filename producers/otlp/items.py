"""What the vocabulary readers share: a flattened list of messages or texts read in index order (its
leftovers given back to `Span.attributes`), and the one way a score is built."""

from __future__ import annotations

from typing import Any

from tracehouse.core.schema import Message, Score

from ..payload import attr_text, finite, short
from .attributes import SpanAttributes


def flat_messages(
    attrs: SpanAttributes, prefix: str, build: Any, finish_key: str | None = None
) -> tuple[list[Message], str]:
    """Messages from a flattened group, in index order; leftovers go back to `attributes`."""
    group = attrs.group(prefix)
    if not group:
        return [], ""
    messages, finish = [], ""
    for index, item in sorted(group.items()):
        if finish_key is not None and not finish:
            value = item.pop(finish_key, None)
            if value is not None:
                finish = short(value)
        messages.append(build(item, attrs.limit))
        if item:
            attrs.give_back_group(prefix, index, item)
    return messages, finish


def text_items(attrs: SpanAttributes, prefix: str, suffix: str, role: str) -> list[Message]:
    """The legacy completions API: `llm.prompts.N.prompt.text`, `llm.choices.N.completion.text`."""
    group = attrs.group(prefix)
    if not group:
        return []
    messages = []
    for index, item in sorted(group.items()):
        text = item.pop(suffix, None)
        if text is not None:
            messages.append(Message(role=role, content=attr_text(text, attrs.limit)))
        if item:
            attrs.give_back_group(prefix, index, item)
    return messages


def build_score(name: Any, value: Any, label: Any, source: Any, comment: Any, limit: int, default: str) -> Score:
    return Score(
        name=short(name) if name not in (None, "") else default,
        value=finite(value),
        label=short(label) if label is not None else "",
        source=short(source).lower() if source is not None else "",
        comment=attr_text(comment, limit) if comment is not None else "",
    )
