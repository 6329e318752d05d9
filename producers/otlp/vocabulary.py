"""The attribute keys the OTLP mapping reads: every key of OpenInference, OpenLLMetry and the GenAI
semantic conventions that feeds a typed field, in one table.

Why one table, not one per vocabulary: a field's candidates interleave the vocabularies in one order of
precedence (`MODEL` tries `llm.model_name`, then `gen_ai.response.model`, then `gen_ai.request.model`,
...), and the first present wins while the others stay in `Span.attributes`. Instrumentations mix the
vocabularies on one span, so only a table that sees all of them can decide which wins; and `KNOWN` lets
`attributes.SpanAttributes` route each key once, in one pass over the span, to the part of the mapping
that reads it (the readers in genai.py, openinference.py and openllmetry.py never probe absent keys).
"""

from __future__ import annotations

import re

from tracehouse.core.schema import SPAN_KINDS

OI_KINDS = frozenset(SPAN_KINDS) - {"UNKNOWN"}
OI_KIND_ALIASES = {"RETRIEVAL": "RETRIEVER", "RERANK": "RERANKER", "EMBEDDINGS": "EMBEDDING"}
GENAI_OPERATIONS = {
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
TRACELOOP_KINDS = {"workflow": "CHAIN", "task": "CHAIN", "agent": "AGENT", "tool": "TOOL"}
REQUEST_TYPES = {"chat": "LLM", "completion": "LLM", "embedding": "EMBEDDING", "rerank": "RERANKER"}


class Keys(tuple):
    """The candidate keys of one typed field, first present wins. `bit` is set in `SpanAttributes.flags` when
    any of them is present, so a field none of whose keys a span has costs one AND instead of a dict
    probe per candidate (a GenAI span has none of OpenInference's keys, and the other way round)."""

    bit: int


ALL_KEYS: list[Keys] = []


def _keys(*keys: str) -> Keys:
    group = Keys(keys)
    group.bit = 1 << (16 + len(ALL_KEYS))  # bits 0-15 are the sections below
    ALL_KEYS.append(group)
    return group


# Candidates for each typed field, first match wins; the others stay in `attributes`.
MODEL = _keys(
    "llm.model_name",
    "llm.response.model_name",
    "gen_ai.response.model",
    "gen_ai.request.model",
    "llm.request.model_name",
    "embedding.model_name",
    "reranker.model_name",
)
PROVIDER = _keys("llm.provider", "gen_ai.provider.name", "llm.system", "gen_ai.system")
INPUT_TOKENS = _keys("llm.token_count.prompt", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT_TOKENS = _keys(
    "llm.token_count.completion",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
)
TOTAL_TOKENS = _keys("llm.token_count.total", "gen_ai.usage.total_tokens", "llm.usage.total_tokens")
CACHED_TOKENS = _keys(
    "llm.token_count.prompt_details.cache_read",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
    "gen_ai.usage.cached_input_tokens",
    "gen_ai.usage.cached_tokens",
)
# Tokens written to the prompt cache (Anthropic's cache creation), priced apart from plain input.
CACHE_WRITE_TOKENS = _keys(
    "llm.token_count.prompt_details.cache_write",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
)
REASONING_TOKENS = _keys(
    "llm.token_count.completion_details.reasoning",
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "gen_ai.usage.output_tokens.reasoning",
    "llm.usage.reasoning_tokens",
)
COST = _keys("llm.cost.total", "gen_ai.usage.cost")
TEMPERATURE = _keys("gen_ai.request.temperature")
MAX_TOKENS = _keys("gen_ai.request.max_tokens")
TOP_P = _keys("gen_ai.request.top_p")
STOP = _keys("gen_ai.request.stop_sequences", "llm.chat.stop_sequences")
FINISH = _keys("llm.finish_reason", "gen_ai.response.finish_reasons", "llm.response.finish_reason")
INPUT = _keys("input.value", "traceloop.entity.input")
OUTPUT = _keys("output.value", "traceloop.entity.output")
SESSION = _keys("session.id", "gen_ai.conversation.id", "traceloop.association.properties.session_id")
USER = _keys("user.id", "enduser.id", "traceloop.association.properties.user_id")
TEMPLATE_NAME = _keys("llm.prompt_template.name", "gen_ai.prompt.name", "traceloop.prompt.key", "prompt.id")
TEMPLATE_VERSION = _keys("llm.prompt_template.version", "traceloop.prompt.version")
TEMPLATE_TEXT = _keys("llm.prompt_template.template", "traceloop.prompt.template")
TEMPLATE_VARIABLES = _keys("llm.prompt_template.variables", "traceloop.prompt.template_variables")
INVOCATION = _keys("llm.invocation_parameters")
SYSTEM_INSTRUCTIONS = _keys("gen_ai.system_instructions")
GENAI_INPUT = _keys("gen_ai.input.messages")
GENAI_OUTPUT = _keys("gen_ai.output.messages")
TOOL_ARGUMENTS = _keys("gen_ai.tool.call.arguments")
TOOL_RESULT = _keys("gen_ai.tool.call.result")
METADATA = _keys("metadata")
GENAI_DOCUMENTS = _keys("gen_ai.retrieval.documents")
TAGS = _keys("tag.tags")
ERROR_TYPE = _keys("error.type")

# Read to decide the kind, and kept in `attributes` (they say more than the kind does).
CLASSIFIERS = ("gen_ai.operation.name", "traceloop.span.kind", "llm.request.type")

# Lists given flat (`prefix.N.suffix`) or, by newer SDKs, as one array of maps under `prefix`.
OI_INPUT = "llm.input_messages."
OI_OUTPUT = "llm.output_messages."
OI_PROMPTS = "llm.prompts."
OI_CHOICES = "llm.choices."
OL_PROMPT = "gen_ai.prompt."
OL_COMPLETION = "gen_ai.completion."
DOCUMENTS = "retrieval.documents."
RERANKED = "reranker.output_documents."
EVALUATIONS = "evaluations."
ANNOTATIONS = "annotations."
EMBEDDINGS = "embedding.embeddings."
INDEXED = (
    OI_INPUT,
    OI_OUTPUT,
    OI_PROMPTS,
    OI_CHOICES,
    OL_PROMPT,
    OL_COMPLETION,
    DOCUMENTS,
    RERANKED,
    EVALUATIONS,
    ANNOTATIONS,
    EMBEDDINGS,
)

# Which part of the mapping each known key feeds, as bits: `SpanAttributes` ORs them while sorting, and
# `map_span` skips every part whose keys are absent (probing ~80 absent keys cost more than mapping
# a whole LLM span's present ones).
IO_BIT, LLM_BIT, USAGE_BIT, COST_BIT, TEMPLATE_BIT, DOCS_BIT, SCORES_BIT, MISC_BIT, ARRAY_BIT = (
    1 << n for n in range(9)
)
SECTIONS: dict[int, tuple[str, ...]] = {
    0: ("openinference.span.kind", *CLASSIFIERS),  # read by `read_kind`, which always runs
    IO_BIT: (*INPUT, *OUTPUT, "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"),
    LLM_BIT: (
        *MODEL, *PROVIDER, *INVOCATION, *TEMPERATURE, *MAX_TOKENS, *TOP_P, *STOP, *FINISH,
        *SYSTEM_INSTRUCTIONS, "gen_ai.input.messages", "gen_ai.output.messages",
    ),
    USAGE_BIT: (*INPUT_TOKENS, *OUTPUT_TOKENS, *TOTAL_TOKENS, *CACHED_TOKENS, *CACHE_WRITE_TOKENS, *REASONING_TOKENS),
    COST_BIT: COST,
    TEMPLATE_BIT: (*TEMPLATE_NAME, *TEMPLATE_VERSION, *TEMPLATE_TEXT, *TEMPLATE_VARIABLES),
    DOCS_BIT: ("gen_ai.retrieval.documents",),
    SCORES_BIT: (
        "gen_ai.evaluation.name", "gen_ai.evaluation.score.value", "gen_ai.evaluation.score.label",
        "gen_ai.evaluation.explanation",
    ),
    MISC_BIT: (*SESSION, *USER, "tag.tags", "metadata", "error.type"),
    ARRAY_BIT: tuple(prefix[:-1] for prefix in INDEXED),  # the array-of-maps form of the indexed lists
}  # fmt: skip
KNOWN: dict[str, int] = {}
for _bit, _section in SECTIONS.items():
    for _key in _section:
        KNOWN[_key] = KNOWN.get(_key, 0) | _bit
for _group in ALL_KEYS:  # every candidate is a known key (a KeyError here is a key missing above)
    for _key in _group:
        KNOWN[_key] |= _group.bit
LLM_GROUPS = (OI_INPUT, OI_OUTPUT, OI_PROMPTS, OI_CHOICES, OL_PROMPT, OL_COMPLETION)
ARRAY_FORMS = tuple((prefix, prefix[:-1]) for prefix in INDEXED)
indexed_key = re.compile(
    "(" + "|".join(re.escape(prefix) for prefix in INDEXED) + r")([0-9]{1,9})\.(.+)", re.S
).fullmatch
