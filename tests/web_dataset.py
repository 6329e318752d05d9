"""The data the web explorer's tests (and anyone trying the UI by hand) look at.

Realistic traces from a seeded TraceFactory, a 1,000-span batch trace, their `traces` rows assembled by
the pipeline's own TraceAssembler (plus a stale lower version of one trace, which `traces FINAL` must
hide), and a few alerts; all inserted straight into a ClickHouse database the caller names, with start
times a few minutes before now so the default time ranges hold them.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from tracehouse.core.config import Settings
from tracehouse.core.pricing import PriceTable
from tracehouse.core.schema import Document, Event, LLMCall, Message, Span, TokenUsage, TraceRecord
from tracehouse.core.scores import Score
from tracehouse.pipeline.assembly import TraceAssembler
from tracehouse.producers.traffic import TraceFactory, TrafficOptions
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.record_routes import AlertRow, score_row
from tracehouse.sinks.rows import SPAN_COLUMNS, SPAN_FORMAT, encode_rows, span_row, trace_row

SEED = 424242
MINUTE_NS = 60 * 1_000_000_000
BIG_TRACE_ID = "b19" + "0" * 28 + "1"
BIG_ROOT = "ba7c000000000000"
ITEM_KINDS = (
    ("LLM", "plan"), ("TOOL", "web_search"), ("RETRIEVER", "lookup"), ("RERANKER", "rerank"),
    ("LLM", "answer"), ("GUARDRAIL", "pii_check"), ("EVALUATOR", "judge"), ("TOOL", "save_result"),
)  # fmt: skip


@dataclass
class WebDataset:
    settings: Settings
    client: Client
    traces: dict[str, list[Span]]  # every inserted trace (the big one included), by trace id
    records: dict[str, TraceRecord]  # the current `traces` row of each
    stale_trace: str  # a trace that also has an older, lower-version row
    alerts: list[AlertRow]
    now_ms: int
    conversation: list[list[Span]]  # CONVERSATION's three turns, in order
    scores: list[Score]  # the scores stored on them (beside those the generated spans carry)

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database


CONVERSATION = "conv-7f3a"
CONVERSATION_USER = "user-ada"
QUESTIONS = (
    ("How do I rotate my API key?", "Open Settings > API keys and choose Rotate; the old key works 24 h more."),
    ("Does the old key stop at once?", "No: it keeps working for 24 hours, then it is revoked."),
    ("Thanks. Can I revoke it now?", "Yes: choose Revoke now next to the old key."),
)


def conversation(base_ns: int) -> list[list[Span]]:
    """A three-turn chat: each turn a CHAIN root (the question in, the answer out) over one LLM call."""
    turns = []
    for i, (question, answer) in enumerate(QUESTIONS):
        start = base_ns + i * 45_000_000_000
        trace_id = f"c0{i + 1:x}717e" + "0" * 25
        root = f"c0717e00000000{i:02x}"
        turns.append([
            Span(trace_id=trace_id, span_id=root, name="chat_turn", kind="CHAIN", service="support-bot",
                 start_time_ns=start, end_time_ns=start + 900_000_000, status="OK", input=question, output=answer,
                 session_id=CONVERSATION, user_id=CONVERSATION_USER),
            Span(trace_id=trace_id, span_id=f"c0717e11111111{i:02x}", parent_span_id=root, name="chat",
                 kind="LLM", service="support-bot", start_time_ns=start + 50_000_000,
                 end_time_ns=start + 850_000_000, status="OK", session_id=CONVERSATION, user_id=CONVERSATION_USER,
                 llm=LLMCall(model="gpt-4o-mini", provider="openai", input_messages=[Message("user", question)],
                             output_messages=[Message("assistant", answer)]),
                 usage=TokenUsage(input=120 + i * 40, output=30 + i)),
        ])  # fmt: skip
    return turns


def conversation_scores(turns: list[list[Span]]) -> list[Score]:
    """Thumbs up on turn 1, a changed mind on turn 2 (up, then down: the latest is down), a review label on 3."""
    t0 = turns[0][0].end_time_ns
    return [
        Score(trace_id=turns[0][0].trace_id, name="user_feedback", value=1.0, label="thumbs_up", source="human",
              created_at=t0 + 1_000_000_000),
        Score(trace_id=turns[1][0].trace_id, name="user_feedback", value=1.0, label="thumbs_up", source="human",
              created_at=t0 + 60_000_000_000),
        Score(trace_id=turns[1][0].trace_id, name="user_feedback", value=0.0, label="thumbs_down", source="human",
              comment="it said the old key stops at once", created_at=t0 + 61_000_000_000),
        Score(trace_id=turns[2][0].trace_id, span_id=turns[2][1].span_id, name="correctness", label="correct",
              source="eval", author="judge-v2", created_at=t0 + 120_000_000_000),
    ]  # fmt: skip


def big_trace(base_ns: int) -> list[Span]:
    """A batch job of exactly 1,000 spans: a CHAIN root over 111 AGENT items of 8 steps each, with
    documents on the retrievers, LLM parameters on the LLM calls and one rate-limited call."""
    spans = [
        Span(trace_id=BIG_TRACE_ID, span_id=BIG_ROOT, name="nightly_batch", kind="CHAIN", service="batch",
             start_time_ns=base_ns, end_time_ns=base_ns + 111 * 500_000_000 + 100_000_000, status="ERROR",
             input='{"items": 111}', user_id="scheduler", session_id="batch-nightly")
    ]  # fmt: skip
    for i in range(111):
        start = base_ns + i * 500_000_000 + 10_000_000
        item = f"{0xA100000000000000 + i:016x}"
        spans.append(Span(trace_id=BIG_TRACE_ID, span_id=item, parent_span_id=BIG_ROOT, name=f"item_{i:03d}",
                          kind="AGENT", service="batch", start_time_ns=start, end_time_ns=start + 480_000_000,
                          status="OK"))  # fmt: skip
        for j, (kind, name) in enumerate(ITEM_KINDS):
            sub = start + j * 55_000_000 + 5_000_000
            error = (i, j) == (7, 4)
            extra: dict = {}
            if kind == "LLM":
                extra = {
                    "llm": LLMCall(model="gpt-4o-mini", provider="openai", temperature=0.2, max_tokens=512,
                                   top_p=1.0, system_prompt="You summarise documents.",
                                   input_messages=[Message("user", f"summarise item {i}")],
                                   output_messages=[] if error else [Message("assistant", f"summary {i}")]),
                    "usage": TokenUsage() if error else TokenUsage(input=400 + i, output=60),
                }  # fmt: skip
            if kind == "RETRIEVER":
                extra = {"documents": [Document(f"item{i}-doc{k}", f"passage {k} of item {i}", 0.9 - k * 0.1, k)
                                       for k in range(3)]}  # fmt: skip
            if error:
                extra["events"] = [
                    Event(
                        "exception",
                        sub + 30_000_000,
                        {
                            "exception.type": "openai.RateLimitError",
                            "exception.message": "429 Too Many Requests",
                            "exception.stacktrace": 'Traceback (most recent call last):\n  File "batch.py", line 7',
                        },
                    )
                ]
            spans.append(Span(trace_id=BIG_TRACE_ID, span_id=f"{0xC100000000000000 + i * 8 + j:016x}",
                              parent_span_id=item, name=name, kind=kind, service="batch", start_time_ns=sub,
                              end_time_ns=sub + 50_000_000, status="ERROR" if error else "OK",
                              status_message="Rate limit reached" if error else "", **extra))  # fmt: skip
    assert len(spans) == 1000
    return spans


def assemble(traces: dict[str, list[Span]], prices: PriceTable) -> dict[str, TraceRecord]:
    """The `traces` rows the pipeline would write: the worker's own assembler, fed every span."""
    assembler = TraceAssembler(prices)
    offset = 0
    for spans in traces.values():
        for span in spans:
            assembler.add(span, offset, now=0.0)
            offset += 1
    return {r.trace_id: r for r in assembler.flush_all(now=1.0)}


def alerts(now_ms: int) -> list[AlertRow]:
    def row(minutes_ago: float, rule: str, service: str, state: str, severity: str, value: float, threshold: float,
            metric: str, **labels: str) -> AlertRow:  # fmt: skip
        at = now_ms - int(minutes_ago * 60_000)
        return AlertRow(
            f"{at // 1000}.{at % 1000:03d}", rule, service, severity, value, threshold, state,
            f"{metric} {value:g} on {service} (threshold {threshold:g})", at // 1000 // 60 * 60, 60,
            {"metric": metric, **labels},
        )  # fmt: skip

    return [
        row(50, "llm-latency-p95", "support-bot", "firing", "warning", 7200.0, 5000.0, "latency_p95_ms", kind="LLM"),
        row(35, "llm-latency-p95", "support-bot", "resolved", "warning", 3100.0, 5000.0, "latency_p95_ms", kind="LLM"),
        row(20, "error-rate", "search-api", "firing", "critical", 0.31, 0.1, "error_rate"),
        row(8, "model-latency", "*", "firing", "info", 6100.0, 5000.0, "latency_p95_ms", model="gpt-4o"),
    ]


def load(clickhouse_url: str, database: str, *, traces: int = 40) -> WebDataset:
    """Create `database`, migrate it, and insert the dataset; the caller drops the database."""
    settings = Settings.from_env(clickhouse_url=clickhouse_url, clickhouse_database=database)
    # On a thread of its own: a browser test may build the dataset while Playwright's loop runs here.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, migrate(settings.clickhouse)).result()
    base = (time.time_ns() // MINUTE_NS - 30) * MINUTE_NS  # 30 minutes ago: inside every default range
    factory = TraceFactory(TrafficOptions(seed=SEED, error_ratio=0.2, prompt_bytes=600))
    generated: dict[str, list[Span]] = {}
    for i in range(traces):
        trace = factory.rag(base + i * 40_000_000_000) if i % 3 == 0 else factory.any(base + i * 40_000_000_000)
        generated[trace[0].trace_id] = trace
    generated[BIG_TRACE_ID] = big_trace(base - 5 * MINUTE_NS)
    turns = conversation(base + 2 * MINUTE_NS + 7_000_000_000)
    for turn in turns:
        generated[turn[0].trace_id] = turn
    prices = PriceTable()
    records = assemble(generated, prices)
    client = sync_client(settings.clickhouse)
    rows = [span_row(s, prices, partition=0, offset=i) for i, s in enumerate(s for t in generated.values() for s in t)]
    client.raw_insert("spans", SPAN_COLUMNS, encode_rows(rows), fmt=SPAN_FORMAT)
    stale_trace = next(iter(generated))
    stale = records[stale_trace]
    older = TraceRecord(**{f: getattr(stale, f) for f in stale.__struct_fields__})
    older.version, older.span_count, older.root_name = 1, 1, "stale_partial_assembly"
    # the older version in its own insert (its own part), as a worker restart would leave it
    client.raw_insert("traces", insert_block=encode_rows([trace_row(older)]), fmt="JSONEachRow")
    client.raw_insert("traces", insert_block=encode_rows([trace_row(r) for r in records.values()]), fmt="JSONEachRow")
    now_ms = int(time.time() * 1000)
    alert_rows = alerts(now_ms)
    client.raw_insert("alerts", insert_block=encode_rows(alert_rows), fmt="JSONEachRow")
    scores = conversation_scores(turns)
    client.raw_insert("scores", insert_block=encode_rows([score_row(s, 0) for s in scores]), fmt="JSONEachRow")
    return WebDataset(settings, client, generated, records, stale_trace, alert_rows, now_ms, turns, scores)
