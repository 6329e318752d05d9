"""Question 6 for every vocabulary: a prompt template sent without a name is listed by a derived identity.

OpenInference instrumentations send `llm.prompt_template.template`, `.variables` and `.version` with no
name, on spans of kind PROMPT or LLM. The identity is defined once (tracehouse.core.prompt_identity):
Python computes it for display, ClickHouse computes the same value from the stored `prompt_text` in the
named queries. These tests check that the two agree, that the queries use the one expression, and that
such a span sent through the OTLP receiver shows up in `tracehouse query prompt-templates --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_otlp_receiver import new_trace, post, receiving, request_json, sink, span_json  # noqa: F401
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.prompt_identity import (
    TEMPLATE_KEY_SQL,
    first_line,
    template_id,
    template_key,
    template_label,
)
from tracehouse.core.schema import SPAN_KINDS
from tracehouse.infra.processes import ManagedProcess
from tracehouse.producers.acked_sender import AckedSpanSender
from tracehouse.sinks.clickhouse import sync_client

TEMPLATE = "\n  Answer the customer's question about {topic}.\nUse only: {context}\n"
ROOT = Path(__file__).resolve().parents[2]


def test_identity_is_a_stable_short_hash_shown_with_the_first_line() -> None:
    assert template_id(TEMPLATE) == template_id(str(TEMPLATE))
    assert template_id(TEMPLATE).startswith("#") and len(template_id(TEMPLATE)) == 11
    assert template_id(TEMPLATE) != template_id(TEMPLATE + " ")
    assert template_key("rag_answer", TEMPLATE) == "rag_answer" and template_key("", "") == ""
    assert template_key("", TEMPLATE) == template_id(TEMPLATE)
    assert first_line(TEMPLATE) == "Answer the customer's question about {topic}."
    assert template_label("", TEMPLATE) == f"{template_id(TEMPLATE)} Answer the customer's question about {{topic}}."
    assert "PROMPT" in SPAN_KINDS


def test_clickhouse_derives_the_same_identity(clickhouse_url: str) -> None:
    client = sync_client(Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database="default").clickhouse)
    try:
        for name, text in (("", TEMPLATE), ("", "héllo {x} ✓"), ("named", TEMPLATE), ("", "")):
            got = client.query(
                f"SELECT {TEMPLATE_KEY_SQL} FROM (SELECT {{n:String}} AS prompt_template, {{t:String}} AS prompt_text)",
                parameters={"n": name, "t": text},
            ).result_rows[0][0]
            assert got == template_key(name, text)
    finally:
        client.close()
    for path in (
        "read/sql/prompt-templates.sql",
        "read/sql/trace-details.sql",
        "read/sql/trace-spans.sql",
    ):
        assert TEMPLATE_KEY_SQL in (ROOT / path).read_text(), f"{path} must derive the identity as core does"


def test_an_openinference_template_without_a_name_is_listed(
    settings: Settings,
    sink: ManagedProcess,  # noqa: F811  (the fixture, imported above)
    kafka_bootstrap: str,
) -> None:
    trace, span_id = new_trace(), os.urandom(8).hex()
    attributes = {
        "openinference.span.kind": "PROMPT",
        "llm.prompt_template.template": TEMPLATE,
        "llm.prompt_template.variables": json.dumps({"topic": "refunds", "context": "kb-2001"}),
        "llm.prompt_template.version": "7",
    }
    transport = AckedSpanSender(kafka_bootstrap, client_id="prompt-identity-test")
    with receiving(transport) as receiver:
        body = request_json([span_json(trace, span_id, "ChatPromptTemplate", attributes)])
        status, _, answer = post(receiver.url, body, "application/json")
        assert status == 200, answer
    client = sync_client(settings.clickhouse)
    try:
        sql = "SELECT kind FROM spans WHERE trace_id = {t:String}"
        assert wait_until(lambda: client.query(sql, parameters={"t": trace}).result_rows, timeout=60)
        assert client.query(sql, parameters={"t": trace}).result_rows == [("PROMPT",)]
    finally:
        client.close()
    env = {**os.environ, "TRACEHOUSE_CLICKHOUSE_DATABASE": settings.clickhouse.database}
    done = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "query", "prompt-templates", "--json",
         "--clickhouse", settings.clickhouse_url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    listed = [r for r in rows if r["template"] == template_id(TEMPLATE)]
    assert len(listed) == 1, rows
    row = listed[0]
    assert row["version"] == "7" and row["calls"] == 1
    assert row["first_line"] == first_line(TEMPLATE)
    assert "refunds" in row["example_variables"]
