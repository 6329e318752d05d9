"""The span's other typed fields, each read across the vocabularies: kind, input and output, token
usage, prompt template, documents, scores, session/user/tags/metadata, and the error type."""

from __future__ import annotations

from typing import Any

import msgspec

from tracehouse.core.error_types import RATE_LIMIT, span_error_type
from tracehouse.core.schema import Document, Event, PromptTemplate, Score, TokenUsage

from ..payload import (
    MAX_UINT32,
    SHORT_TEXT_CHARS,
    attr_text,
    json_value,
    short,
    str_list,
    string_map,
    to_json_text,
    uint32,
)
from .attributes import SpanAttributes, typed
from .genai import documents_genai, score_genai
from .openinference import documents_oi, scores_oi
from .vocabulary import (
    ANNOTATIONS,
    CACHE_WRITE_TOKENS,
    CACHED_TOKENS,
    DOCUMENTS,
    EMBEDDINGS,
    ERROR_TYPE,
    EVALUATIONS,
    GENAI_DOCUMENTS,
    GENAI_OPERATIONS,
    INPUT,
    INPUT_TOKENS,
    METADATA,
    OI_KIND_ALIASES,
    OI_KINDS,
    OUTPUT,
    OUTPUT_TOKENS,
    REASONING_TOKENS,
    REQUEST_TYPES,
    RERANKED,
    SCORES_BIT,
    SECTIONS,
    SESSION,
    TAGS,
    TEMPLATE_NAME,
    TEMPLATE_TEXT,
    TEMPLATE_VARIABLES,
    TEMPLATE_VERSION,
    TOOL_ARGUMENTS,
    TOOL_RESULT,
    TOTAL_TOKENS,
    TRACELOOP_KINDS,
    USER,
)

# The values instrumentations actually send, spelled as sent, to their kind: one look-up for them,
# and the normalising (`str`, `strip`, case) only for the rest.
_OI_KIND_SPELLED = {kind: kind for kind in OI_KINDS} | {k: v for k, v in OI_KIND_ALIASES.items() if v in OI_KINDS}


def read_kind(attrs: SpanAttributes) -> str:
    known = attrs.known
    declared = known.get("openinference.span.kind")
    if declared is not None:
        kind = _OI_KIND_SPELLED.get(declared) if type(declared) is str else None
        if kind is None:
            upper = str(declared).strip().upper()
            kind = OI_KIND_ALIASES.get(upper, upper)
            if kind not in OI_KINDS:
                return "UNKNOWN"  # e.g. PROMPT: the attribute stays, so nothing is lost
        del known["openinference.span.kind"]  # fully said by `kind`
        return kind
    operation = known.get("gen_ai.operation.name")
    if operation is not None:
        kind = GENAI_OPERATIONS.get(operation) if type(operation) is str else None
        if kind is None:
            kind = GENAI_OPERATIONS.get(str(operation).strip().lower())
        if kind:
            return kind
    for key, table in (("traceloop.span.kind", TRACELOOP_KINDS), ("llm.request.type", REQUEST_TYPES)):
        value = known.get(key)
        if value is not None:
            kind = table.get(str(value).strip().lower())
            if kind:
                return kind
    if "gen_ai.request.model" in known or "gen_ai.system" in known or "gen_ai.provider.name" in known:
        return "LLM"  # GenAI spans from before `gen_ai.operation.name` existed
    return "UNKNOWN"


def read_usage(attrs: SpanAttributes) -> TokenUsage | None:
    input_tokens = typed(attrs, INPUT_TOKENS, uint32)
    output_tokens = typed(attrs, OUTPUT_TOKENS, uint32)
    cached = typed(attrs, CACHED_TOKENS, uint32)
    reasoning = typed(attrs, REASONING_TOKENS, uint32)
    total = typed(attrs, TOTAL_TOKENS, uint32)
    cache_write = typed(attrs, CACHE_WRITE_TOKENS, uint32)
    if input_tokens is None and output_tokens is None and cached is None and reasoning is None and total is None:
        if cache_write is None:
            return None
    input_tokens, output_tokens = input_tokens or 0, output_tokens or 0
    cached, reasoning = cached or 0, reasoning or 0
    if not total:
        total = min(input_tokens + output_tokens, MAX_UINT32)
    return TokenUsage(input_tokens, output_tokens, cached, reasoning, total, cache_write or 0)


def read_prompt_template(attrs: SpanAttributes) -> PromptTemplate | None:
    limit = attrs.limit
    name = attrs.take(TEMPLATE_NAME)
    version = attrs.take(TEMPLATE_VERSION)
    template = attrs.take(TEMPLATE_TEXT)
    variables: dict[str, str] = {}
    raw = attrs.peek(TEMPLATE_VARIABLES)
    if raw is not None:
        parsed = string_map(raw, limit)
        if parsed is not None:
            variables = parsed
            attrs.take(TEMPLATE_VARIABLES)
    if name is None and version is None and template is None and not variables:
        return None
    return PromptTemplate(
        name=short(name) if name is not None else "",
        version=short(version) if version is not None else "",
        template=attr_text(template, limit) if template is not None else "",
        variables=variables,
    )


def read_error_type(explicit: Any, events: list[Event], status: str, message: str) -> str | None:
    """`error.type`: "rate_limit" when the span's error says so (question 3 groups on it), else the
    sender's own value; None to leave it unset (the sink then falls back to the exception's type). The
    rule is core/error_types.py's, which the SDK, the worker and the sink apply too."""
    text = attr_text(explicit, SHORT_TEXT_CHARS) if explicit is not None and explicit != "" else ""
    error_type = span_error_type(text, events, status, message)
    return error_type if text or error_type == RATE_LIMIT else None


def read_payloads(attrs: SpanAttributes, kind: str) -> tuple[str, str]:
    """The span's input and output texts: OpenInference `input.value`, OpenLLMetry entity values, or a
    GenAI tool call's arguments and result."""
    limit = attrs.limit
    value = attrs.take(INPUT)
    span_input = attr_text(value, limit) if value is not None else ""
    value = attrs.take(OUTPUT)
    span_output = attr_text(value, limit) if value is not None else ""
    if kind == "TOOL" or "gen_ai.tool.call.arguments" in attrs.known:
        if not span_input:
            value = attrs.take(TOOL_ARGUMENTS)
            span_input = attr_text(value, limit) if value is not None else ""
        if not span_output:
            value = attrs.take(TOOL_RESULT)
            span_output = attr_text(value, limit) if value is not None else ""
    return span_input, span_output


def _metadata(attrs: SpanAttributes) -> None:
    """OpenInference `metadata` (a JSON object) flattened to `metadata.<key>` attributes, so SQL can
    filter on one key; kept whole when it is not an object."""
    value = attrs.peek(METADATA)
    if value is None:
        return
    parsed = json_value(value)
    if isinstance(parsed, dict):
        attrs.take(METADATA)
        limit = attrs.limit
        for key, item in parsed.items():
            attrs.rest[f"metadata.{key}"] = attr_text(item, limit)


def drop_embedding_vectors(attrs: SpanAttributes) -> None:
    """Embedding vectors are replaced by their length: kilobytes of floats per span answer none of the
    questions tracing is for. The text embedded and everything else stays."""
    group = attrs.groups.get(EMBEDDINGS)
    if not group:
        return
    for item in group.values():
        vector = item.get("embedding.vector")
        if isinstance(vector, list):
            item["embedding.vector"] = f"[{len(vector)} floats omitted]"


def read_documents(attrs: SpanAttributes) -> list[Document]:
    """Retrieved documents (question 4): OpenInference retriever or reranker output, or GenAI's."""
    documents = documents_oi(attrs, DOCUMENTS)
    reranked = documents_oi(attrs, RERANKED)
    if reranked and not documents:
        documents = reranked
    elif reranked:  # both on one span: keep the reranker's where SQL finds them too
        attrs.rest["reranker.output_documents"] = to_json_text([msgspec.to_builtins(d) for d in reranked])
    if not documents:
        raw = attrs.peek(GENAI_DOCUMENTS)
        parsed = documents_genai(raw, attrs.limit) if raw is not None else None
        if parsed is not None:
            documents = parsed
            attrs.take(GENAI_DOCUMENTS)
    return documents


def read_scores(attrs: SpanAttributes) -> list[Score]:
    """Evaluations attached to the span: OpenInference evaluations/annotations, GenAI evaluation."""
    scores = scores_oi(attrs, EVALUATIONS, "evaluation") + scores_oi(attrs, ANNOTATIONS, "annotation")
    genai = score_genai(attrs.known, attrs.limit)
    if genai is not None:
        scores.append(genai)
        for key in SECTIONS[SCORES_BIT]:
            attrs.known.pop(key, None)
    return scores


def read_grouping(attrs: SpanAttributes) -> tuple[Any, Any, list[str], Any]:
    """Session, user, tags, metadata (flattened into attributes) and the sender's `error.type`."""
    session = attrs.take(SESSION)
    user = attrs.take(USER)
    tags: list[str] = []
    value = attrs.peek(TAGS)
    if value is not None:
        parsed = str_list(value)
        if parsed is not None:
            tags = list(dict.fromkeys(parsed))  # each once, in order; "" (at most one left) is no tag
            if "" in tags:
                tags.remove("")
            attrs.take(TAGS)
    _metadata(attrs)
    return session, user, tags, attrs.take(ERROR_TYPE)
