"""The LLM call of a span (model, provider, parameters, messages, finish reason, system prompt), read
across the vocabularies in the order of precedence vocabulary.py gives."""

from __future__ import annotations

from typing import Any

from tracehouse.core.schema import LLMCall, Message

from ..payload import attr_text, finite, json_value, short, str_list, uint32
from .attributes import SpanAttributes, typed
from .genai import genai_messages, system_instructions
from .items import flat_messages, text_items
from .openinference import message_oi
from .openllmetry import message_openllmetry
from .vocabulary import (
    FINISH,
    GENAI_INPUT,
    GENAI_OUTPUT,
    INVOCATION,
    MAX_TOKENS,
    MODEL,
    OI_CHOICES,
    OI_INPUT,
    OI_OUTPUT,
    OI_PROMPTS,
    OL_COMPLETION,
    OL_PROMPT,
    PROVIDER,
    STOP,
    SYSTEM_INSTRUCTIONS,
    TEMPERATURE,
    TOP_P,
)

_PARAM_MAX_TOKENS = (
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_new_tokens",
    "maxOutputTokens",
)
_PARAM_TOP_P = ("top_p", "topP")
_PARAM_STOP = ("stop", "stop_sequences", "stopSequences")


def _first_param(params: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = params.get(name)
        if value is not None:
            return value
    return None


def read_llm(attrs: SpanAttributes, kind: str, span_input: str) -> tuple[LLMCall | None, str]:
    """The LLM call's model, parameters and messages; also the input text when only messages give it.

    Returns (llm or None when the span has none of it, the input to use when the span had none)."""
    limit = attrs.limit
    model = attrs.take(MODEL)
    provider = attrs.take(PROVIDER)

    invocation = attrs.take(INVOCATION)
    params: dict[str, Any] = {}
    invocation_text = ""
    if invocation is not None:
        parsed = json_value(invocation)
        if isinstance(parsed, dict):
            params = parsed
        invocation_text = attr_text(invocation, limit)

    # Each parameter from its attribute, else from the invocation parameters; a span has few of them, so
    # the absent ones are skipped on the section bits and an empty `params` (no calls that find nothing).
    flags = attrs.flags
    temperature = typed(attrs, TEMPERATURE, finite) if flags & TEMPERATURE.bit else None
    if temperature is None and params:
        temperature = finite(params.get("temperature"))
    max_tokens = typed(attrs, MAX_TOKENS, uint32) if flags & MAX_TOKENS.bit else None
    if max_tokens is None and params:
        max_tokens = uint32(_first_param(params, _PARAM_MAX_TOKENS))
    top_p = typed(attrs, TOP_P, finite) if flags & TOP_P.bit else None
    if top_p is None and params:
        top_p = finite(_first_param(params, _PARAM_TOP_P))
    stop = typed(attrs, STOP, str_list) if flags & STOP.bit else None
    if stop is None:
        stop = (str_list(_first_param(params, _PARAM_STOP)) if params else None) or []

    groups = attrs.groups  # the flattened lists (`group` pops from this dict): none on a GenAI span
    input_messages: list[Message] = []
    output_messages: list[Message] = []
    finish = ""
    if groups:
        input_messages, _ = flat_messages(attrs, OI_INPUT, message_oi)
        output_messages, finish = flat_messages(attrs, OI_OUTPUT, message_oi)
        if not input_messages:
            input_messages = text_items(attrs, OI_PROMPTS, "prompt.text", "user")
        if not output_messages:
            output_messages = text_items(attrs, OI_CHOICES, "completion.text", "assistant")
    new_input = ""
    if not input_messages:
        raw = attrs.peek(GENAI_INPUT)
        parsed_messages = genai_messages(raw, limit) if raw is not None else None
        if parsed_messages is not None:
            input_messages = parsed_messages[0]
            attrs.take(GENAI_INPUT)
            if span_input:
                attrs.give_back("gen_ai.input.messages", raw)
            else:
                new_input = attr_text(raw, limit)
    if not output_messages:
        raw = attrs.peek(GENAI_OUTPUT)
        parsed_messages = genai_messages(raw, limit) if raw is not None else None
        if parsed_messages is not None:
            output_messages, genai_finish = parsed_messages
            finish = finish or genai_finish
            # the raw JSON stays (or becomes the output) like the input's; see read_payloads
    if not input_messages and groups:
        input_messages, _ = flat_messages(attrs, OL_PROMPT, message_openllmetry)
    if not output_messages and groups:
        output_messages, finish_ol = flat_messages(attrs, OL_COMPLETION, message_openllmetry, "finish_reason")
        finish = finish or finish_ol

    finish_value = attrs.take(FINISH)
    if finish_value is not None:
        reasons = str_list(finish_value) or []
        finish = short(",".join(reasons)) if reasons else finish

    system_prompt = ""
    instructions = attrs.peek(SYSTEM_INSTRUCTIONS)
    if instructions is not None:
        text = system_instructions(instructions, limit)
        if text is not None:
            attrs.take(SYSTEM_INSTRUCTIONS)
            system_prompt = text
    if not system_prompt:
        for message in input_messages:
            if message.role in ("system", "developer"):
                system_prompt = message.content
                break

    has_llm = (
        model is not None
        or provider is not None
        or invocation is not None
        or temperature is not None
        or max_tokens is not None
        or top_p is not None
        or stop
        or input_messages
        or output_messages
        or finish
        or system_prompt
    )
    if not has_llm and kind != "LLM":
        return None, new_input
    return (
        LLMCall(
            short(model) if model is not None else "",
            short(provider) if provider is not None else "",
            temperature,
            max_tokens,
            top_p,
            stop,
            system_prompt,
            input_messages,
            output_messages,
            finish,
            invocation_text,
        ),
        new_input,
    )
