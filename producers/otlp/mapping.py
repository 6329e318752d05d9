"""OpenTelemetry spans onto tracehouse's `Span`: OpenInference and GenAI vocabularies, as pure functions.

Two attribute vocabularies describe LLM work over OTLP, and instrumentations mix them:

- OpenInference (Arize; Phoenix's instrumentors): `openinference.span.kind`, `input.value`,
  `llm.model_name`, flattened lists such as `llm.input_messages.0.message.role` and
  `retrieval.documents.3.document.score`, `llm.token_count.*`, `llm.prompt_template.*`.
- OpenTelemetry GenAI semantic conventions (and OpenLLMetry's older dialect of them):
  `gen_ai.operation.name`, `gen_ai.request.*`, `gen_ai.usage.*`, `gen_ai.input.messages` as JSON with
  typed parts, or `gen_ai.prompt.0.role` / `gen_ai.completion.0.content` in OpenLLMetry.

`map_span` reads both into typed fields (kind, model, tokens, parameters, messages, documents, template,
session, scores). The rule that keeps it honest: every attribute is either *consumed* into a typed field
or kept in `Span.attributes` as text (lists and maps as JSON). Nothing is dropped silently; the few
deliberate exceptions leave a visible marker (embedding vectors are replaced by their length). Attributes
that classify rather than carry data stay even when used (`gen_ai.operation.name`, `llm.request.type`,
`traceloop.span.kind`, `error.type`), and when two attributes compete for one field (a request and a
response model), the loser stays in `attributes`.

A span that cannot be stored (bad ids, missing or inverted times) raises `SpanRejected` with a reason the
receiver reports in `partial_success`; anything else degrades to a smaller, still-valid span, because
one odd attribute must not cost a user the span. Every text is cut at `limit` bytes with the SDK's
visible truncation marker, and every bounded field is clamped to what the schema and ClickHouse accept,
so a mapped span always passes the pipeline's validation.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

import msgspec

from tracehouse.core.schema import (
    SPAN_KINDS,
    Document,
    Event,
    LLMCall,
    Message,
    PromptTemplate,
    Score,
    Span,
    TokenUsage,
    ToolCall,
)

from ..payload import DEFAULT_MAX_PAYLOAD_BYTES, SHORT_TEXT_CHARS, fit, short, to_json_text
from ..span_limits import (
    DROPPED_LINKS,
    SpanLimits,
    default_span_limits,
    dropped_events_marker,
    kept_attributes,
    kept_events,
)
from .records import OTEL_SPAN_KINDS, OTEL_STATUS, Origin, OtlpEvent, OtlpLink, OtlpSpan

__all__ = ["SpanRejected", "attribute_text", "map_span", "origin_for"]

MIN_TIME_NS = 946_684_800_000_000_000  # the schema's TimeNs lower bound (2000-01-01)
MAX_TIME_NS = 9_223_372_036_854_775_807
MAX_UINT32 = 4_294_967_295  # token and max_tokens columns are UInt32

_is_trace_id = re.compile(r"[0-9a-f]{32}").fullmatch
_is_span_id = re.compile(r"[0-9a-f]{16}").fullmatch
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_RATE_LIMIT = re.compile(
    r"rate[\s_.-]?limit|too[\s_.-]?many[\s_.-]?requests|throttl|resource[\s_.-]?exhausted|\b429\b", re.I
)
_json_decode = msgspec.json.decode


class SpanRejected(ValueError):
    """A span that cannot be stored; `reason` says why, in words a sender can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- values -------------------------------------------------------------------------------------


def attribute_text(value: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """An attribute value as the text `Span.attributes` holds: strings as they are, booleans as
    true/false, numbers via `str`, bytes as base64, arrays and maps as JSON; cut at `limit` bytes."""
    kind = type(value)
    if kind is str:
        if len(value) <= limit and value.isascii():
            return value
        return fit(value, limit)[0]
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    if value is None:
        return ""
    if kind is bytes:
        return fit(base64.b64encode(value).decode("ascii"), limit)[0]
    return fit(to_json_text(value), limit)[0]


def _finite(value: Any) -> float | None:
    """A float field (temperature, score, cost) from a number or numeric text; NaN and inf are None."""
    if value is None or type(value) is bool:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _uint32(value: Any) -> int | None:
    """A count for a UInt32 column: ints, integral floats and numeric text; anything else is None."""
    if type(value) is int:
        number = value
    elif value is None or type(value) is bool:
        return None
    else:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(as_float) or as_float != int(as_float):
            return None
        number = int(as_float)
    return number if 0 <= number <= MAX_UINT32 else None


def _str(value: Any, limit: int) -> str:
    """A payload text field (content, input, arguments): text as is, anything else as JSON."""
    if type(value) is str:
        return value if len(value) <= limit and value.isascii() else fit(value, limit)[0]
    return attribute_text(value, limit)


def _short(value: Any) -> str:
    """A ShortText field (model, role, session id): cut to the schema's 1024 characters."""
    if type(value) is str and len(value) <= SHORT_TEXT_CHARS and value.isascii():
        return value
    if type(value) is not str:
        value = attribute_text(value, 4 * SHORT_TEXT_CHARS)
    return short(value)


def _json_value(value: Any) -> Any:
    """A JSON-carrying attribute as Python data: structured values as they are, text parsed as JSON;
    None when the text is not JSON."""
    if type(value) is str:
        try:
            return _json_decode(value)
        except (msgspec.DecodeError, RecursionError):
            return None
    return value


def _str_list(value: Any) -> list[str] | None:
    """A list of strings from an array attribute, a JSON array text or a single string."""
    if isinstance(value, list):
        return [_short(v) for v in value if v is not None]
    if type(value) is str:
        if value.startswith("["):
            parsed = _json_value(value)
            if isinstance(parsed, list):
                return [_short(v) for v in parsed if v is not None]
        return [_short(value)] if value else []
    return None


def _string_map(value: Any, limit: int) -> dict[str, str] | None:
    """A JSON object (text or kvlist) as a dict of texts; None when it is not an object."""
    parsed = _json_value(value)
    if not isinstance(parsed, dict):
        return None
    return {str(k): attribute_text(v, limit) for k, v in parsed.items()}


# ---- the vocabularies ---------------------------------------------------------------------------

_OI_KINDS = frozenset(SPAN_KINDS) - {"UNKNOWN"}
_OI_KIND_ALIASES = {"RETRIEVAL": "RETRIEVER", "RERANK": "RERANKER", "EMBEDDINGS": "EMBEDDING"}
_GENAI_OPERATIONS = {
    "chat": "LLM",
    "text_completion": "LLM",
    "generate_content": "LLM",
    "embeddings": "EMBEDDING",
    "execute_tool": "TOOL",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
    "retrieval": "RETRIEVER",
    "invoke_workflow": "CHAIN",
}
_TRACELOOP_KINDS = {"workflow": "CHAIN", "task": "CHAIN", "agent": "AGENT", "tool": "TOOL"}
_REQUEST_TYPES = {"chat": "LLM", "completion": "LLM", "embedding": "EMBEDDING", "rerank": "RERANKER"}


class _Keys(tuple):
    """The candidate keys of one typed field, first present wins. `bit` is set in `_Attrs.flags` when
    any of them is present, so a field none of whose keys a span has costs one AND instead of a dict
    probe per candidate (a GenAI span has none of OpenInference's keys, and the other way round)."""

    bit: int


_ALL_KEYS: list[_Keys] = []


def _keys(*keys: str) -> _Keys:
    group = _Keys(keys)
    group.bit = 1 << (16 + len(_ALL_KEYS))  # bits 0-15 are the sections below
    _ALL_KEYS.append(group)
    return group


# Candidates for each typed field, first match wins; the others stay in `attributes`.
_MODEL = _keys(
    "llm.model_name",
    "llm.response.model_name",
    "gen_ai.response.model",
    "gen_ai.request.model",
    "llm.request.model_name",
    "embedding.model_name",
    "reranker.model_name",
)
_PROVIDER = _keys("llm.provider", "gen_ai.provider.name", "llm.system", "gen_ai.system")
_INPUT_TOKENS = _keys("llm.token_count.prompt", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_TOKENS = _keys(
    "llm.token_count.completion",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
)
_TOTAL_TOKENS = _keys("llm.token_count.total", "gen_ai.usage.total_tokens", "llm.usage.total_tokens")
_CACHED_TOKENS = _keys(
    "llm.token_count.prompt_details.cache_read",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
    "gen_ai.usage.cached_input_tokens",
    "gen_ai.usage.cached_tokens",
)
_REASONING_TOKENS = _keys(
    "llm.token_count.completion_details.reasoning",
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "gen_ai.usage.output_tokens.reasoning",
    "llm.usage.reasoning_tokens",
)
_COST = _keys("llm.cost.total", "gen_ai.usage.cost")
_TEMPERATURE = _keys("gen_ai.request.temperature")
_MAX_TOKENS = _keys("gen_ai.request.max_tokens")
_TOP_P = _keys("gen_ai.request.top_p")
_STOP = _keys("gen_ai.request.stop_sequences", "llm.chat.stop_sequences")
_FINISH = _keys("llm.finish_reason", "gen_ai.response.finish_reasons", "llm.response.finish_reason")
_INPUT = _keys("input.value", "traceloop.entity.input")
_OUTPUT = _keys("output.value", "traceloop.entity.output")
_SESSION = _keys("session.id", "gen_ai.conversation.id", "traceloop.association.properties.session_id")
_USER = _keys("user.id", "enduser.id", "traceloop.association.properties.user_id")
_TEMPLATE_NAME = _keys("llm.prompt_template.name", "gen_ai.prompt.name", "traceloop.prompt.key", "prompt.id")
_TEMPLATE_VERSION = _keys("llm.prompt_template.version", "traceloop.prompt.version")
_TEMPLATE_TEXT = _keys("llm.prompt_template.template", "traceloop.prompt.template")
_TEMPLATE_VARIABLES = _keys("llm.prompt_template.variables", "traceloop.prompt.template_variables")
_INVOCATION = _keys("llm.invocation_parameters")
_SYSTEM_INSTRUCTIONS = _keys("gen_ai.system_instructions")
_GENAI_INPUT = _keys("gen_ai.input.messages")
_GENAI_OUTPUT = _keys("gen_ai.output.messages")
_TOOL_ARGUMENTS = _keys("gen_ai.tool.call.arguments")
_TOOL_RESULT = _keys("gen_ai.tool.call.result")
_METADATA = _keys("metadata")
_GENAI_DOCUMENTS = _keys("gen_ai.retrieval.documents")
_TAGS = _keys("tag.tags")
_ERROR_TYPE = _keys("error.type")

# Read to decide the kind, and kept in `attributes` (they say more than the kind does).
_CLASSIFIERS = ("gen_ai.operation.name", "traceloop.span.kind", "llm.request.type")

# Lists given flat (`prefix.N.suffix`) or, by newer SDKs, as one array of maps under `prefix`.
_OI_INPUT = "llm.input_messages."
_OI_OUTPUT = "llm.output_messages."
_OI_PROMPTS = "llm.prompts."
_OI_CHOICES = "llm.choices."
_OL_PROMPT = "gen_ai.prompt."
_OL_COMPLETION = "gen_ai.completion."
_DOCUMENTS = "retrieval.documents."
_RERANKED = "reranker.output_documents."
_EVALUATIONS = "evaluations."
_ANNOTATIONS = "annotations."
_EMBEDDINGS = "embedding.embeddings."
_INDEXED = (
    _OI_INPUT,
    _OI_OUTPUT,
    _OI_PROMPTS,
    _OI_CHOICES,
    _OL_PROMPT,
    _OL_COMPLETION,
    _DOCUMENTS,
    _RERANKED,
    _EVALUATIONS,
    _ANNOTATIONS,
    _EMBEDDINGS,
)

# Which part of the mapping each known key feeds, as bits: `_Attrs` ORs them while sorting, and
# `map_span` skips every part whose keys are absent (probing ~80 absent keys cost more than mapping
# a whole LLM span's present ones).
_IO, _LLM, _USAGE, _COST_BIT, _TEMPLATE, _DOCS, _SCORES, _MISC, _ARRAY = (1 << n for n in range(9))
_SECTIONS: dict[int, tuple[str, ...]] = {
    0: ("openinference.span.kind", *_CLASSIFIERS),  # read by `_kind`, which always runs
    _IO: (*_INPUT, *_OUTPUT, "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"),
    _LLM: (
        *_MODEL, *_PROVIDER, *_INVOCATION, *_TEMPERATURE, *_MAX_TOKENS, *_TOP_P, *_STOP, *_FINISH,
        *_SYSTEM_INSTRUCTIONS, "gen_ai.input.messages", "gen_ai.output.messages",
    ),
    _USAGE: (*_INPUT_TOKENS, *_OUTPUT_TOKENS, *_TOTAL_TOKENS, *_CACHED_TOKENS, *_REASONING_TOKENS),
    _COST_BIT: _COST,
    _TEMPLATE: (*_TEMPLATE_NAME, *_TEMPLATE_VERSION, *_TEMPLATE_TEXT, *_TEMPLATE_VARIABLES),
    _DOCS: ("gen_ai.retrieval.documents",),
    _SCORES: (
        "gen_ai.evaluation.name", "gen_ai.evaluation.score.value", "gen_ai.evaluation.score.label",
        "gen_ai.evaluation.explanation",
    ),
    _MISC: (*_SESSION, *_USER, "tag.tags", "metadata", "error.type"),
    _ARRAY: tuple(prefix[:-1] for prefix in _INDEXED),  # the array-of-maps form of the indexed lists
}  # fmt: skip
_KNOWN: dict[str, int] = {}
for _bit, _section in _SECTIONS.items():
    for _key in _section:
        _KNOWN[_key] = _KNOWN.get(_key, 0) | _bit
for _group in _ALL_KEYS:  # every candidate is a known key (a KeyError here is a key missing above)
    for _key in _group:
        _KNOWN[_key] |= _group.bit
_LLM_GROUPS = (_OI_INPUT, _OI_OUTPUT, _OI_PROMPTS, _OI_CHOICES, _OL_PROMPT, _OL_COMPLETION)
_ARRAY_FORMS = tuple((prefix, prefix[:-1]) for prefix in _INDEXED)
_indexed_key = re.compile(
    "(" + "|".join(re.escape(prefix) for prefix in _INDEXED) + r")([0-9]{1,9})\.(.+)", re.S
).fullmatch


_UNSEEN: Any = object()
# Where each attribute key goes, decided once per distinct key (instrumentations send the same few
# hundred keys again and again) instead of once per span: an int is a known key's bits, a
# (prefix, index, suffix) tuple a member of an indexed list, None an attribute no field reads.
# Bounded so that senders of ever-new or huge keys cannot grow it: at most `_ROUTES_MAX` keys of at
# most `_ROUTED_KEY_CHARS` characters (a few MB at worst); past the count it starts over, and a longer
# key is routed every time, as every key was before.
_ROUTES: dict[str, int | tuple[str, int, str] | None] = {}
_ROUTES_MAX = 16_384
_ROUTED_KEY_CHARS = 200


def _route(key: str) -> int | tuple[str, int, str] | None:
    """Decide (and remember) where `key` goes; see `_ROUTES`."""
    route: int | tuple[str, int, str] | None = _KNOWN.get(key)
    if route is None and key.startswith(_INDEXED) and (match := _indexed_key(key)) is not None:
        prefix, index, suffix = match.groups()
        route = (prefix, int(index), suffix)
    if len(key) <= _ROUTED_KEY_CHARS:
        if len(_ROUTES) >= _ROUTES_MAX:
            _ROUTES.clear()
        _ROUTES[key] = route
    return route


class _Attrs:
    """One span's attributes, sorted into known keys, indexed groups and the rest, in one pass.

    `take` consumes a known key; whatever is not taken by the end goes back into `rest`, so an
    attribute is never lost because the mapping looked at it and chose another.
    """

    __slots__ = ("flags", "groups", "known", "limit", "rest")

    def __init__(self, attributes: dict[str, Any], limit: int) -> None:
        self.limit = limit
        known: dict[str, Any] = {}
        rest: dict[str, str] = {}
        groups: dict[str, dict[int, dict[str, Any]]] = {}
        flags = 0
        routes = _ROUTES
        for key, value in attributes.items():
            route = routes.get(key, _UNSEEN)
            if route is _UNSEEN:
                route = _route(key)
            if route is None:  # an attribute no field reads: kept as text (inline: most are short ASCII)
                if type(value) is str and len(value) <= limit and value.isascii():
                    rest[key] = value
                else:
                    rest[key] = attribute_text(value, limit)
            elif type(route) is int:
                known[key] = value
                flags |= route
            else:
                prefix, index, suffix = route
                group = groups.get(prefix)
                if group is None:
                    groups[prefix] = {index: {suffix: value}}
                else:
                    item = group.get(index)
                    if item is None:
                        group[index] = {suffix: value}
                    else:
                        item[suffix] = value
        self.known = known
        self.rest = rest
        self.groups = groups
        self.flags = flags
        if flags & _ARRAY:
            for prefix, key in _ARRAY_FORMS:  # the array-of-maps form joins the flat form's groups
                items = known.get(key)
                if isinstance(items, list) and items and all(isinstance(i, dict) for i in items):
                    del known[key]
                    group = groups.setdefault(prefix, {})
                    for index, entry in enumerate(items):
                        group.setdefault(index, {}).update(entry)

    def take(self, keys: _Keys) -> Any:
        """The value of the first of `keys` present with a non-empty value, consumed; else None."""
        if not self.flags & keys.bit:
            return None
        known = self.known
        for key in keys:
            value = known.get(key)
            if value is not None and value != "":
                del known[key]
                return value
        return None

    def peek(self, keys: _Keys) -> Any:
        if not self.flags & keys.bit:
            return None
        known = self.known
        for key in keys:
            value = known.get(key)
            if value is not None and value != "":
                return value
        return None

    def give_back(self, key: str, value: Any) -> None:
        """Keep an attribute that was taken but could not be used (say, a temperature that is text)."""
        self.rest[key] = attribute_text(value, self.limit)

    def group(self, prefix: str) -> dict[int, dict[str, Any]] | None:
        return self.groups.pop(prefix, None)

    def give_back_group(self, prefix: str, index: int, leftover: dict[str, Any]) -> None:
        """Keep the parts of one list item that no typed field holds (an image part, a tool schema)."""
        limit = self.limit
        for suffix, value in leftover.items():
            self.rest[f"{prefix}{index}.{suffix}"] = attribute_text(value, limit)

    def finish(self) -> dict[str, str]:
        """`rest` plus everything known but not consumed, and every group nobody read."""
        rest, limit = self.rest, self.limit
        for key, value in self.known.items():
            rest[key] = attribute_text(value, limit)
        self.known = {}
        for prefix, group in self.groups.items():
            for index, leftover in group.items():
                self.give_back_group(prefix, index, leftover)
        self.groups = {}
        return rest


def _subgroups(item: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """Pop `prefix.M.suffix` keys of one list item into {M: {suffix: value}} (tool calls in a message)."""
    found: dict[int, dict[str, Any]] = {}
    for key in [k for k in item if k.startswith(prefix)]:
        index, _, suffix = key[len(prefix) :].partition(".")
        if suffix and index.isascii() and index.isdigit() and len(index) <= 9:
            found.setdefault(int(index), {})[suffix] = item.pop(key)
    return found


# ---- kind ---------------------------------------------------------------------------------------


def _kind(attrs: _Attrs) -> str:
    known = attrs.known
    declared = known.get("openinference.span.kind")
    if declared is not None:
        upper = str(declared).strip().upper()
        upper = _OI_KIND_ALIASES.get(upper, upper)
        if upper in _OI_KINDS:
            del known["openinference.span.kind"]  # fully said by `kind`
            return upper
        return "UNKNOWN"  # e.g. PROMPT: the attribute stays, so nothing is lost
    operation = known.get("gen_ai.operation.name")
    if operation is not None:
        kind = _GENAI_OPERATIONS.get(str(operation).strip().lower())
        if kind:
            return kind
    for key, table in (("traceloop.span.kind", _TRACELOOP_KINDS), ("llm.request.type", _REQUEST_TYPES)):
        value = known.get(key)
        if value is not None:
            kind = table.get(str(value).strip().lower())
            if kind:
                return kind
    if "gen_ai.request.model" in known or "gen_ai.system" in known or "gen_ai.provider.name" in known:
        return "LLM"  # GenAI spans from before `gen_ai.operation.name` existed
    return "UNKNOWN"


# ---- messages -----------------------------------------------------------------------------------


def _tool_calls_oi(item: dict[str, Any], prefix: str, limit: int) -> list[ToolCall]:
    calls = []
    for index, call in sorted(_subgroups(item, prefix).items()):
        arguments = call.pop("tool_call.function.arguments", "")
        calls.append(
            ToolCall(
                id=_short(call.pop("tool_call.id", "")),
                name=_short(call.pop("tool_call.function.name", "")),
                arguments=_str(arguments, limit),
            )
        )
        for suffix, value in call.items():  # e.g. a reasoning signature: it stays in `attributes`
            item[f"{prefix}{index}.{suffix}"] = value
    return calls


def _content_parts_oi(item: dict[str, Any], limit: int) -> str:
    """The text of `message.contents.K.message_content.*` parts; other parts stay on the item."""
    texts = []
    for index, part in sorted(_subgroups(item, "message.contents.").items()):
        text = part.get("message_content.text")
        if text is not None and part.get("message_content.type", "text") == "text":
            texts.append(_str(text, limit))  # reasoning, images, audio: kept in `attributes`
            del part["message_content.text"]
            part.pop("message_content.type", None)
        for suffix, value in part.items():
            item[f"message.contents.{index}.{suffix}"] = value
    return "".join(texts)


def _message_oi(item: dict[str, Any], limit: int) -> Message:
    """An OpenInference message from its `message.*` keys (consumed from `item`)."""
    role = _short(item.pop("message.role", ""))
    content = item.pop("message.content", None)
    name = _short(item.pop("message.name", ""))
    tool_call_id = _short(item.pop("message.tool_call_id", ""))
    if not item:  # the usual message: role and content only
        return Message(role, _str(content, limit) if content is not None else "", name, tool_call_id, [])
    text = _str(content, limit) if content is not None else _content_parts_oi(item, limit)
    tool_calls = _tool_calls_oi(item, "message.tool_calls.", limit)
    function_name = item.pop("message.function_call_name", None)
    if function_name is not None:  # the legacy single function call
        arguments = item.pop("message.function_call_arguments_json", "")
        tool_calls.append(ToolCall(name=_short(function_name), arguments=_str(arguments, limit)))
    return Message(role, text, name, tool_call_id, tool_calls)


def _message_openllmetry(item: dict[str, Any], limit: int) -> Message:
    """An OpenLLMetry `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` message (consumed from `item`)."""
    calls = []
    for index, call in sorted(_subgroups(item, "tool_calls.").items()):
        calls.append(
            ToolCall(
                id=_short(call.pop("id", "")),
                name=_short(call.pop("name", "")),
                arguments=_str(call.pop("arguments", ""), limit),
            )
        )
        for suffix, value in call.items():
            item[f"tool_calls.{index}.{suffix}"] = value
    function_name = item.pop("function_call.name", None)
    if function_name is not None:
        arguments = item.pop("function_call.arguments", "")
        calls.append(ToolCall(name=_short(function_name), arguments=_str(arguments, limit)))
    content = item.pop("content", "")
    return Message(
        role=_short(item.pop("role", "")),
        content=_str(content, limit) if content is not None else "",
        name=_short(item.pop("name", "")),
        tool_call_id=_short(item.pop("tool_call_id", "")),
        tool_calls=calls,
    )


def _flat_messages(
    attrs: _Attrs, prefix: str, build: Any, finish_key: str | None = None
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
                finish = _short(value)
        messages.append(build(item, attrs.limit))
        if item:
            attrs.give_back_group(prefix, index, item)
    return messages, finish


def _text_items(attrs: _Attrs, prefix: str, suffix: str, role: str) -> list[Message]:
    """The legacy completions API: `llm.prompts.N.prompt.text`, `llm.choices.N.completion.text`."""
    group = attrs.group(prefix)
    if not group:
        return []
    messages = []
    for index, item in sorted(group.items()):
        text = item.pop(suffix, None)
        if text is not None:
            messages.append(Message(role=role, content=_str(text, attrs.limit)))
        if item:
            attrs.give_back_group(prefix, index, item)
    return messages


def _part_text(value: Any, limit: int) -> str:
    return _str(value, limit) if value is not None else ""


def _genai_messages(value: Any, limit: int) -> tuple[list[Message], str] | None:
    """`gen_ai.input.messages` / `gen_ai.output.messages`: a JSON array of {role, parts[], name,
    finish_reason}; parts are text, tool_call, tool_call_response, reasoning, and media we do not type.
    Returns None when the value is not such an array (the attribute then stays as it was)."""
    parsed = _json_value(value)
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
                            id=_short(part.get("id") or ""),
                            name=_short(part.get("name") or ""),
                            arguments=_part_text(part.get("arguments"), limit),
                        )
                    )
                elif kind == "tool_call_response":
                    tool_call_id = _short(part.get("id") or "")
                    response = part.get("response", part.get("result"))
                    texts.append(_part_text(response, limit))
        elif entry.get("content") is not None:  # the pre-parts shape: {"role", "content"}
            texts.append(_part_text(entry.get("content"), limit))
        if not finish and entry.get("finish_reason"):
            finish = _short(entry["finish_reason"])
        messages.append(
            Message(
                role=_short(entry.get("role") or ""),
                content="".join(texts) if len(texts) != 1 else texts[0],
                name=_short(entry.get("name") or ""),
                tool_call_id=tool_call_id,
                tool_calls=calls,
            )
        )
    return messages, finish


def _system_instructions(value: Any, limit: int) -> str | None:
    """`gen_ai.system_instructions`: text parts joined; plain text accepted; None if it has other parts."""
    parsed = _json_value(value)
    if parsed is None and type(value) is str:
        return _str(value, limit)
    if isinstance(parsed, str):
        return _str(parsed, limit)
    if not isinstance(parsed, list):
        return None
    texts = []
    for part in parsed:
        if not isinstance(part, dict) or part.get("type", "text") != "text":
            return None
        texts.append(_part_text(part.get("content"), limit))
    return "\n".join(texts)


# ---- documents and scores -----------------------------------------------------------------------


def _document_oi(item: dict[str, Any], position: int, limit: int) -> Document:
    doc_id = item.pop("document.id", None)
    content = item.pop("document.content", None)
    score = item.get("document.score")
    value = _finite(score)
    if value is not None or score is None:
        item.pop("document.score", None)
    metadata: dict[str, str] = {}
    if "document.metadata" in item:
        parsed = _string_map(item["document.metadata"], limit)
        if parsed is not None:
            metadata = parsed
            del item["document.metadata"]
    return Document(
        id=attribute_text(doc_id, SHORT_TEXT_CHARS) if doc_id is not None else "",
        content=_str(content, limit) if content is not None else "",
        score=value,
        position=position,
        metadata=metadata,
    )


def _documents_oi(attrs: _Attrs, prefix: str) -> list[Document]:
    group = attrs.group(prefix)
    if not group:
        return []
    documents = []
    for index, item in sorted(group.items()):
        documents.append(_document_oi(item, index, attrs.limit))
        if item:
            attrs.give_back_group(prefix, index, item)
    return documents


def _documents_genai(value: Any, limit: int) -> list[Document] | None:
    """`gen_ai.retrieval.documents`: a JSON array of {id, score, ...}; other keys become metadata."""
    parsed = _json_value(value)
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
                id=attribute_text(doc_id, SHORT_TEXT_CHARS) if doc_id is not None else "",
                content=_str(content, limit) if content is not None else "",
                score=_finite(entry.pop("score", None)),
                position=position,
                metadata={str(k): attribute_text(v, limit) for k, v in entry.items()},
            )
        )
    return documents


def _score(name: Any, value: Any, label: Any, source: Any, comment: Any, limit: int, default: str) -> Score:
    return Score(
        name=_short(name) if name not in (None, "") else default,
        value=_finite(value),
        label=_short(label) if label is not None else "",
        source=_short(source).lower() if source is not None else "",
        comment=_str(comment, limit) if comment is not None else "",
    )


def _scores_oi(attrs: _Attrs, prefix: str, head: str) -> list[Score]:
    """OpenInference `evaluations.N.evaluation.*` / `annotations.N.annotation.*`."""
    group = attrs.group(prefix)
    if not group:
        return []
    scores = []
    for index, item in sorted(group.items()):
        scores.append(
            _score(
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


def _score_genai(values: dict[str, Any], limit: int) -> Score | None:
    """A GenAI evaluation result (`gen_ai.evaluation.*`), on a span or an evaluation event."""
    name = values.get("gen_ai.evaluation.name")
    value = values.get("gen_ai.evaluation.score.value")
    label = values.get("gen_ai.evaluation.score.label")
    if name is None and value is None and label is None:
        return None
    return _score(name, value, label, None, values.get("gen_ai.evaluation.explanation"), limit, "evaluation")


# ---- LLM parameters -----------------------------------------------------------------------------

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


def _llm(attrs: _Attrs, kind: str, span_input: str) -> tuple[LLMCall | None, str]:
    """The LLM call's model, parameters and messages; also the input text when only messages give it.

    Returns (llm or None when the span has none of it, the input to use when the span had none)."""
    limit = attrs.limit
    model = attrs.take(_MODEL)
    provider = attrs.take(_PROVIDER)

    invocation = attrs.take(_INVOCATION)
    params: dict[str, Any] = {}
    invocation_text = ""
    if invocation is not None:
        parsed = _json_value(invocation)
        if isinstance(parsed, dict):
            params = parsed
        invocation_text = _str(invocation, limit)

    temperature = _typed(attrs, _TEMPERATURE, _finite)
    if temperature is None:
        temperature = _finite(params.get("temperature"))
    max_tokens = _typed(attrs, _MAX_TOKENS, _uint32)
    if max_tokens is None:
        max_tokens = _uint32(_first_param(params, _PARAM_MAX_TOKENS))
    top_p = _typed(attrs, _TOP_P, _finite)
    if top_p is None:
        top_p = _finite(_first_param(params, _PARAM_TOP_P))
    stop = _typed(attrs, _STOP, _str_list)
    if stop is None:
        stop = _str_list(_first_param(params, _PARAM_STOP)) or []

    input_messages, _ = _flat_messages(attrs, _OI_INPUT, _message_oi)
    output_messages, finish = _flat_messages(attrs, _OI_OUTPUT, _message_oi)
    if not input_messages:
        input_messages = _text_items(attrs, _OI_PROMPTS, "prompt.text", "user")
    if not output_messages:
        output_messages = _text_items(attrs, _OI_CHOICES, "completion.text", "assistant")
    new_input = ""
    if not input_messages:
        raw = attrs.peek(_GENAI_INPUT)
        parsed_messages = _genai_messages(raw, limit) if raw is not None else None
        if parsed_messages is not None:
            input_messages = parsed_messages[0]
            attrs.take(_GENAI_INPUT)
            if span_input:
                attrs.give_back("gen_ai.input.messages", raw)
            else:
                new_input = _str(raw, limit)
    if not output_messages:
        raw = attrs.peek(_GENAI_OUTPUT)
        parsed_messages = _genai_messages(raw, limit) if raw is not None else None
        if parsed_messages is not None:
            output_messages, genai_finish = parsed_messages
            finish = finish or genai_finish
            # the raw JSON stays (or becomes the output) like the input's; see _payloads
    if not input_messages:
        input_messages, _ = _flat_messages(attrs, _OL_PROMPT, _message_openllmetry)
    if not output_messages:
        output_messages, finish_ol = _flat_messages(
            attrs, _OL_COMPLETION, _message_openllmetry, "finish_reason"
        )
        finish = finish or finish_ol

    finish_value = attrs.take(_FINISH)
    if finish_value is not None:
        reasons = _str_list(finish_value) or []
        finish = _short(",".join(reasons)) if reasons else finish

    system_prompt = ""
    instructions = attrs.peek(_SYSTEM_INSTRUCTIONS)
    if instructions is not None:
        text = _system_instructions(instructions, limit)
        if text is not None:
            attrs.take(_SYSTEM_INSTRUCTIONS)
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
            _short(model) if model is not None else "",
            _short(provider) if provider is not None else "",
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


def _typed(attrs: _Attrs, keys: _Keys, convert: Any) -> Any:
    """Take the first of `keys` and convert it; a value that does not convert stays in `attributes`."""
    if not attrs.flags & keys.bit:
        return None
    known = attrs.known
    for key in keys:
        value = known.get(key)
        if value is None or value == "":
            continue
        del known[key]
        converted = convert(value)
        if converted is None:
            attrs.give_back(key, value)
            continue
        return converted
    return None


def _usage(attrs: _Attrs) -> TokenUsage | None:
    input_tokens = _typed(attrs, _INPUT_TOKENS, _uint32)
    output_tokens = _typed(attrs, _OUTPUT_TOKENS, _uint32)
    cached = _typed(attrs, _CACHED_TOKENS, _uint32)
    reasoning = _typed(attrs, _REASONING_TOKENS, _uint32)
    total = _typed(attrs, _TOTAL_TOKENS, _uint32)
    if input_tokens is None and output_tokens is None and cached is None and reasoning is None and total is None:
        return None
    input_tokens, output_tokens = input_tokens or 0, output_tokens or 0
    cached, reasoning = cached or 0, reasoning or 0
    if not total:
        total = min(input_tokens + output_tokens, MAX_UINT32)
    return TokenUsage(input_tokens, output_tokens, cached, reasoning, total)


def _prompt_template(attrs: _Attrs) -> PromptTemplate | None:
    limit = attrs.limit
    name = attrs.take(_TEMPLATE_NAME)
    version = attrs.take(_TEMPLATE_VERSION)
    template = attrs.take(_TEMPLATE_TEXT)
    variables: dict[str, str] = {}
    raw = attrs.peek(_TEMPLATE_VARIABLES)
    if raw is not None:
        parsed = _string_map(raw, limit)
        if parsed is not None:
            variables = parsed
            attrs.take(_TEMPLATE_VARIABLES)
    if name is None and version is None and template is None and not variables:
        return None
    return PromptTemplate(
        name=_short(name) if name is not None else "",
        version=_short(version) if version is not None else "",
        template=_str(template, limit) if template is not None else "",
        variables=variables,
    )


# ---- events, errors, ids ------------------------------------------------------------------------


def _events(events: list[OtlpEvent], start_ns: int, limit: int) -> list[Event]:
    out = []
    for event in events:
        time_ns = event.time_ns
        if not MIN_TIME_NS <= time_ns <= MAX_TIME_NS:
            time_ns = start_ns  # a missing or impossible time: the span's start keeps it in the row
        attributes = {k: attribute_text(v, limit) for k, v in event.attributes.items()}
        if event.dropped_attributes_count:
            attributes["otel.dropped_attributes_count"] = str(event.dropped_attributes_count)
        out.append(Event(name=_short(event.name) or "event", time_ns=time_ns, attributes=attributes))
    return out


def _error_type(explicit: Any, events: list[Event], status: str, message: str) -> str | None:
    """`error.type`: "rate_limit" when the span's error says so (question 3 groups on it), else the
    sender's own value; None to leave it unset (the sink then falls back to the exception's type)."""
    if explicit is not None and explicit != "":
        text = attribute_text(explicit, SHORT_TEXT_CHARS)
        return "rate_limit" if _RATE_LIMIT.search(text) else text
    for event in events:
        if event.name == "exception":
            attributes = event.attributes
            if _RATE_LIMIT.search(attributes.get("exception.type", "")) or _RATE_LIMIT.search(
                attributes.get("exception.message", "")
            ):
                return "rate_limit"
    if status == "ERROR" and message and _RATE_LIMIT.search(message):
        return "rate_limit"
    return None


def _link(link: OtlpLink, limit: int) -> dict[str, Any]:
    out = {"trace_id": link.trace_id, "span_id": link.span_id, "trace_state": link.trace_state,
           "attributes": {k: attribute_text(v, limit) for k, v in link.attributes.items()}}  # fmt: skip
    if link.dropped_attributes_count:
        out["dropped_attributes_count"] = link.dropped_attributes_count
    return out


def _links(links: list[OtlpLink], limit: int) -> str:
    return fit(to_json_text([_link(link, limit) for link in links]), limit)[0]


def _check_ids(span: OtlpSpan) -> str:
    """Validate the ids; returns the parent span id to store ("" for a root)."""
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if not _is_trace_id(trace_id) or trace_id == _ZERO_TRACE:
        raise SpanRejected(f"invalid trace id {trace_id[:64]!r}: need 16 bytes, not all zero")
    if not _is_span_id(span_id) or span_id == _ZERO_SPAN:
        raise SpanRejected(
            f"invalid span id {span_id[:64]!r} in trace {trace_id}: need 8 bytes, not all zero"
        )
    if not parent or parent == _ZERO_SPAN:
        return ""
    if not _is_span_id(parent):
        raise SpanRejected(f"invalid parent span id {parent[:64]!r} of span {span_id}: need 8 bytes")
    if parent == span_id:
        raise SpanRejected(f"span {span_id} names itself as its parent")
    return parent


def _check_times(span: OtlpSpan) -> None:
    start, end = span.start_time_ns, span.end_time_ns
    if not MIN_TIME_NS <= start <= MAX_TIME_NS:
        raise SpanRejected(
            f"span {span.span_id}: start_time_unix_nano {start} is missing or outside 2000..2262"
        )
    if not MIN_TIME_NS <= end <= MAX_TIME_NS:
        raise SpanRejected(f"span {span.span_id}: end_time_unix_nano {end} is missing or outside 2000..2262")
    if end < start:
        raise SpanRejected(f"span {span.span_id}: end_time_unix_nano {end} is before its start {start}")


def _payloads(attrs: _Attrs, kind: str) -> tuple[str, str]:
    """The span's input and output texts: OpenInference `input.value`, OpenLLMetry entity values, or a
    GenAI tool call's arguments and result."""
    limit = attrs.limit
    value = attrs.take(_INPUT)
    span_input = _str(value, limit) if value is not None else ""
    value = attrs.take(_OUTPUT)
    span_output = _str(value, limit) if value is not None else ""
    if kind == "TOOL" or "gen_ai.tool.call.arguments" in attrs.known:
        if not span_input:
            value = attrs.take(_TOOL_ARGUMENTS)
            span_input = _str(value, limit) if value is not None else ""
        if not span_output:
            value = attrs.take(_TOOL_RESULT)
            span_output = _str(value, limit) if value is not None else ""
    return span_input, span_output


def _metadata(attrs: _Attrs) -> None:
    """OpenInference `metadata` (a JSON object) flattened to `metadata.<key>` attributes, so SQL can
    filter on one key; kept whole when it is not an object."""
    value = attrs.peek(_METADATA)
    if value is None:
        return
    parsed = _json_value(value)
    if isinstance(parsed, dict):
        attrs.take(_METADATA)
        limit = attrs.limit
        for key, item in parsed.items():
            attrs.rest[f"metadata.{key}"] = attribute_text(item, limit)


def _embedding_vectors(attrs: _Attrs) -> None:
    """Embedding vectors are replaced by their length: kilobytes of floats per span answer none of the
    questions tracing is for. The text embedded and everything else stays."""
    group = attrs.groups.get(_EMBEDDINGS)
    if not group:
        return
    for item in group.values():
        vector = item.get("embedding.vector")
        if isinstance(vector, list):
            item["embedding.vector"] = f"[{len(vector)} floats omitted]"


def _documents(attrs: _Attrs) -> list[Document]:
    """Retrieved documents (question 4): OpenInference retriever or reranker output, or GenAI's."""
    documents = _documents_oi(attrs, _DOCUMENTS)
    reranked = _documents_oi(attrs, _RERANKED)
    if reranked and not documents:
        documents = reranked
    elif reranked:  # both on one span: keep the reranker's where SQL finds them too
        attrs.rest["reranker.output_documents"] = to_json_text([msgspec.to_builtins(d) for d in reranked])
    if not documents:
        raw = attrs.peek(_GENAI_DOCUMENTS)
        parsed = _documents_genai(raw, attrs.limit) if raw is not None else None
        if parsed is not None:
            documents = parsed
            attrs.take(_GENAI_DOCUMENTS)
    return documents


def _scores(attrs: _Attrs) -> list[Score]:
    """Evaluations attached to the span: OpenInference evaluations/annotations, GenAI evaluation."""
    scores = _scores_oi(attrs, _EVALUATIONS, "evaluation") + _scores_oi(attrs, _ANNOTATIONS, "annotation")
    genai = _score_genai(attrs.known, attrs.limit)
    if genai is not None:
        scores.append(genai)
        for key in _SECTIONS[_SCORES]:
            attrs.known.pop(key, None)
    return scores


def _grouping(attrs: _Attrs) -> tuple[Any, Any, list[str], Any]:
    """Session, user, tags, metadata (flattened into attributes) and the sender's `error.type`."""
    session = attrs.take(_SESSION)
    user = attrs.take(_USER)
    tags: list[str] = []
    value = attrs.peek(_TAGS)
    if value is not None:
        parsed = _str_list(value)
        if parsed is not None:
            tags = list(dict.fromkeys(t for t in parsed if t))
            attrs.take(_TAGS)
    _metadata(attrs)
    return session, user, tags, attrs.take(_ERROR_TYPE)


# ---- the mapping --------------------------------------------------------------------------------


def origin_for(
    resource_attributes: dict[str, Any],
    scope_name: str = "",
    scope_version: str = "",
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
    scope_attributes: dict[str, Any] | None = None,
    limits: SpanLimits | None = None,
) -> Origin:
    """What the spans of one resource and scope share: the service and the stringified resource, each
    held to the attribute count limit (once here, not once per span)."""
    most = (limits or default_span_limits()).attributes
    resource = {str(k): attribute_text(v, limit) for k, v in resource_attributes.items()}
    service = resource.get("service.name") or "unknown_service"
    if len(resource) > most:
        resource = kept_attributes(resource, most)[0]
    scope = {f"otel.scope.attributes.{k}": attribute_text(v, limit) for k, v in (scope_attributes or {}).items()}
    if len(scope) > most:
        scope = dict(list(scope.items())[:most])
    return Origin(
        service=_short(service) or "unknown_service",
        resource=resource,
        scope_name=_short(scope_name),
        scope_version=_short(scope_version),
        scope_attributes=scope,
    )


def map_span(
    span: OtlpSpan, origin: Origin, limit: int = DEFAULT_MAX_PAYLOAD_BYTES, limits: SpanLimits | None = None
) -> Span:
    """Map one decoded OTLP span onto tracehouse's `Span`; raises SpanRejected when it cannot be stored.

    Of the span limits, the link and event counts apply here (links become one JSON text, and mapping
    100,000 events to drop most of them would be wasted); the others are applied to the mapped span by
    `span_limits.fit_span`, which the receiver calls next."""
    if limits is None:
        limits = default_span_limits()
    parent = _check_ids(span)
    _check_times(span)

    attrs = _Attrs(span.attributes, limit)
    flags, groups = attrs.flags, attrs.groups
    kind = _kind(attrs)
    span_input, span_output = _payloads(attrs, kind) if flags & _IO else ("", "")
    if _EMBEDDINGS in groups:
        _embedding_vectors(attrs)
    llm = None
    if flags & _LLM or kind == "LLM" or (groups and any(g in groups for g in _LLM_GROUPS)):
        llm, messages_input = _llm(attrs, kind, span_input)
        if messages_input and not span_input:
            span_input = messages_input
        if not span_output and llm is not None and llm.output_messages:
            raw = attrs.peek(_GENAI_OUTPUT)
            if raw is not None:
                attrs.take(_GENAI_OUTPUT)
                span_output = _str(raw, limit)
    usage = _usage(attrs) if flags & _USAGE else None
    cost = _typed(attrs, _COST, _finite) if flags & _COST_BIT else None
    prompt = _prompt_template(attrs) if flags & _TEMPLATE else None
    documents = _documents(attrs) if flags & _DOCS or _DOCUMENTS in groups or _RERANKED in groups else []
    scores: list[Score] = (
        _scores(attrs) if flags & _SCORES or _EVALUATIONS in groups or _ANNOTATIONS in groups else []
    )
    session = user = explicit_error = None
    tags: list[str] = []
    if flags & _MISC:
        session, user, tags, explicit_error = _grouping(attrs)

    status_code = span.status_code
    status = OTEL_STATUS[status_code] if 0 <= status_code < len(OTEL_STATUS) else "UNSET"
    status_message = _str(span.status_message, limit) if span.status_message else ""
    events: list[Event] = []
    dropped_events = 0
    if span.events:
        otlp_events, dropped_events = kept_events(span.events, limits.events)
        events = _events(otlp_events, span.start_time_ns, limit)
        for event in otlp_events:
            if event.name == "gen_ai.evaluation.result":
                score = _score_genai(event.attributes, limit)
                if score is not None:
                    scores.append(score)

    attributes = attrs.finish()
    if explicit_error is not None or events or status == "ERROR":
        error_type = _error_type(explicit_error, events, status, status_message)
        if error_type is not None:
            attributes["error.type"] = error_type
    if origin.scope_name:
        attributes["otel.scope.name"] = origin.scope_name
        if origin.scope_version:
            attributes["otel.scope.version"] = origin.scope_version
    if origin.scope_attributes:
        attributes.update(origin.scope_attributes)
    if span.kind > 1:
        attributes["otel.span_kind"] = (
            OTEL_SPAN_KINDS[span.kind] if span.kind < len(OTEL_SPAN_KINDS) else str(span.kind)
        )
    if span.links:
        links = span.links
        most = limits.links
        if len(links) > most:
            attributes[DROPPED_LINKS] = str(len(links) - most)
            links = links[:most]
        attributes["otel.links"] = _links(links, limit)
    if span.trace_state:
        attributes["otel.trace_state"] = _short(span.trace_state)
    if span.dropped_attributes_count:
        attributes["otel.dropped_attributes_count"] = str(span.dropped_attributes_count)
    if span.dropped_events_count:
        attributes["otel.dropped_events_count"] = str(span.dropped_events_count)
    if span.dropped_links_count:
        attributes["otel.dropped_links_count"] = str(span.dropped_links_count)
    if dropped_events:
        attributes = dropped_events_marker(attributes, dropped_events)

    # Positional: msgspec builds a Struct from 25 keywords ~3x slower than from positions (3.5 µs
    # against 1.2); the order is `Span`'s field order, which only ever grows at the end.
    return Span(
        span.trace_id,
        span.span_id,
        _short(span.name) or "unnamed",
        span.start_time_ns,
        span.end_time_ns,
        parent,
        kind,
        origin.service,
        status,
        status_message,
        span_input,
        span_output,
        attributes,
        origin.resource,
        events,
        llm,
        usage,
        cost,
        prompt,
        documents,
        scores,
        _short(session) if session is not None else "",
        _short(user) if user is not None else "",
        tags,
    )
