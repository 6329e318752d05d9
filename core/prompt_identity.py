"""The identity of a prompt template (question 6), for templates sent with a name and without one.

OpenInference instrumentations (LangChain, LlamaIndex, ...) send `llm.prompt_template.template`,
`.variables` and `.version` but no name. Such a template is known by a short hash of its text: stable
across processes, machines and releases, so every call made from the same text groups together, and
shown with the text's first line so a person can tell templates apart.

The rule, defined here and nowhere else: `#` followed by the first 10 hex digits of the SHA-256 of the
template's UTF-8 text. ClickHouse computes the same value from the stored `prompt_text` column with
`TEMPLATE_ID_SQL` (the named queries use it verbatim; tests/integration/test_prompt_identity.py checks that both
agree), so spans stored before this rule existed are listed too.
"""

from __future__ import annotations

import hashlib

DIGITS = 10
PREFIX = "#"
FIRST_LINE_CHARS = 60
# The same identity as `template_id`, as a ClickHouse expression over the spans table's columns.
TEMPLATE_ID_SQL = f"concat('{PREFIX}', substring(lower(hex(SHA256(prompt_text))), 1, {DIGITS}))"
# What a template is grouped by (its name, else that id; "" when the span has no template), verbatim in
# read/sql/prompt-templates.sql, trace-details.sql and trace-spans.sql.
TEMPLATE_KEY_SQL = f"if(prompt_template != '' OR prompt_text = '', prompt_template, {TEMPLATE_ID_SQL})"


def template_id(text: str) -> str:
    """`#` and 10 hex digits of the text's SHA-256: the name of a template sent without one."""
    return PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGITS]


def template_key(name: str, text: str) -> str:
    """What a template is grouped by: its name when it has one, else the hash of its text."""
    if name:
        return name
    return template_id(text) if text else ""


def first_line(text: str, limit: int = FIRST_LINE_CHARS) -> str:
    """The text's first non-blank line, cut to `limit` characters with an ellipsis."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def template_label(name: str, text: str) -> str:
    """How a person sees the template: its name, or its derived id followed by the text's first line."""
    if name:
        return name
    if not text:
        return ""
    line = first_line(text)
    return f"{template_id(text)} {line}" if line else template_id(text)
