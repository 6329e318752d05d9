"""Realistic synthetic LLM-application traces, for the demo, the load generator and benchmarks.

Three shapes of application, with the timings, token counts and failure modes of real ones:
- RAG: CHAIN root -> EMBEDDING -> RETRIEVER (5 scored documents) -> RERANKER -> LLM with a prompt template;
- agent: AGENT root -> LLM planning turns -> TOOL calls -> a final LLM answer, some GUARDRAIL checks;
- chat: multi-turn sessions where each turn is a CHAIN root with one LLM call, sharing a session id.
A configurable share of LLM calls fails with a provider rate limit (HTTP 429), recorded as an exception
event, the way the SDK records it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tracehouse.core.schema import (
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

MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("claude-sonnet-4-20250514", "anthropic"),
    ("gemini-2.5-flash", "google"),
    ("o4-mini", "openai"),
]
SERVICES = ["support-bot", "search-api", "research-agent"]
QUESTIONS = [
    "How do I rotate my API key?",
    "What is the refund policy for annual plans?",
    "Summarise the Q3 incident report.",
    "Which regions support data residency?",
    "How do I export my traces to S3?",
    "Why was my invoice higher this month?",
]
TOOLS = ["web_search", "sql_query", "calculator", "get_weather", "read_file"]
SYSTEM_PROMPT = "You are a helpful assistant for ACME Cloud. Answer from the provided context only."
RAG_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer concisely."
_WORDS = "the quick brown fox jumps over the lazy dog while tracing every token of every call".split()
_PROSE = " ".join(random.Random(0).choice(_WORDS) for _ in range(40_000))


@dataclass
class TrafficOptions:
    error_ratio: float = 0.03  # share of LLM calls that hit a rate limit
    prompt_bytes: int = 1024
    seed: int | None = None


class TraceFactory:
    """Builds whole traces as lists of Spans, with ids, parent links and timings consistent."""

    def __init__(self, options: TrafficOptions | None = None) -> None:
        self.options = options or TrafficOptions()
        self.rng = random.Random(self.options.seed)
        self._sessions: list[tuple[str, str, int]] = []  # (session, user, turns left)

    # ---- ids and helpers --------------------------------------------------------------------

    def _trace_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _span_id(self) -> str:
        return f"{self.rng.getrandbits(64) or 1:016x}"

    def _ms(self, low: float, high: float) -> int:
        return int(self.rng.uniform(low, high) * 1_000_000)

    def _padding(self) -> str:
        """`prompt_bytes` of prose: a random slice of a fixed text, cheap enough for load generation."""
        size = self.options.prompt_bytes
        start = self.rng.randrange(len(_PROSE) - size) if size < len(_PROSE) else 0
        return _PROSE[start : start + size]

    def _llm_span(
        self,
        trace_id: str,
        parent: str,
        start: int,
        service: str,
        name: str,
        question: str,
        *,
        template: PromptTemplate | None = None,
        session: str = "",
        user: str = "",
    ) -> Span:
        model, provider = self.rng.choice(MODELS)
        input_tokens = self.rng.randint(300, 4000)
        output_tokens = self.rng.randint(20, 800)
        cached = self.rng.choice([0, 0, input_tokens // 2])
        reasoning = self.rng.randint(0, output_tokens // 2) if model.startswith("o") else 0
        duration = self._ms(300, 2500) + output_tokens * 15_000_000 // 1000
        rate_limited = self.rng.random() < self.options.error_ratio
        prompt = f"{question}\n{self._padding()}"
        answer = "Based on the context, " + self._padding()[:200]
        temperature = self.rng.choice([0.0, 0.2, 0.7, 1.0])
        llm = LLMCall(
            model=model,
            provider=provider,
            temperature=temperature,
            max_tokens=1024,
            top_p=1.0,
            system_prompt=SYSTEM_PROMPT,
            input_messages=[Message("system", SYSTEM_PROMPT), Message("user", prompt)],
            output_messages=[] if rate_limited else [Message("assistant", answer)],
            finish_reason="" if rate_limited else "stop",
            invocation_parameters=f'{{"temperature": {temperature}, "max_tokens": 1024, "top_p": 1.0}}',
        )
        events: list[Event] = []
        attributes = {"llm.request.type": "chat", "http.route": "/v1/chat/completions"}
        status, message = "OK", ""
        usage = TokenUsage(input=input_tokens, output=output_tokens, cached=cached, reasoning=reasoning)
        if rate_limited:
            duration = self._ms(50, 400)
            status, message = "ERROR", "Rate limit reached for requests (429)"
            usage = TokenUsage()
            attributes["error.type"] = "rate_limit"
            attributes["http.status_code"] = "429"
            events.append(
                Event(
                    "exception",
                    start + duration,
                    {
                        "exception.type": "openai.RateLimitError",
                        "exception.message": "Error code: 429 - Rate limit reached for requests",
                        "exception.stacktrace": 'Traceback (most recent call last):\n  File "app.py", line 42',
                    },
                )
            )
        return Span(
            trace_id=trace_id,
            span_id=self._span_id(),
            parent_span_id=parent,
            name=name,
            kind="LLM",
            service=service,
            start_time_ns=start,
            end_time_ns=start + duration,
            status=status,
            status_message=message,
            input=prompt,
            output="" if rate_limited else answer,
            attributes=attributes,
            events=events,
            llm=llm,
            usage=usage,
            prompt=template,
            session_id=session,
            user_id=user,
        )

    # ---- trace shapes -----------------------------------------------------------------------

    def rag(self, now_ns: int | None = None) -> list[Span]:
        now = now_ns or time.time_ns()
        trace_id, root_id = self._trace_id(), self._span_id()
        service = "search-api"
        question = self.rng.choice(QUESTIONS)
        user = f"user-{self.rng.randint(1, 200)}"
        t = now
        spans: list[Span] = []
        emb_end = t + self._ms(20, 120)
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=self._span_id(),
                parent_span_id=root_id,
                name="embed_query",
                kind="EMBEDDING",
                service=service,
                start_time_ns=t,
                end_time_ns=emb_end,
                status="OK",
                input=question,
                llm=LLMCall(model="text-embedding-3-small", provider="openai"),
                usage=TokenUsage(input=self.rng.randint(8, 40)),
                user_id=user,
            )
        )
        ret_end = emb_end + self._ms(30, 900)
        documents = [
            Document(
                id=f"doc-{self.rng.randint(1, 5000)}",
                content=f"Passage {i} about {question.lower()} " + self._padding()[:120],
                score=round(0.95 - i * self.rng.uniform(0.03, 0.1), 4),
                position=i,
                metadata={"source": self.rng.choice(["kb", "docs", "tickets"])},
            )
            for i in range(5)
        ]
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=self._span_id(),
                parent_span_id=root_id,
                name="vector_search",
                kind="RETRIEVER",
                service=service,
                start_time_ns=emb_end,
                end_time_ns=ret_end,
                status="OK",
                input=question,
                documents=documents,
                attributes={"db.system": "qdrant", "top_k": "5"},
                user_id=user,
            )
        )
        rr_end = ret_end + self._ms(20, 200)
        reranked = sorted(documents[:3], key=lambda d: self.rng.random())
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=self._span_id(),
                parent_span_id=root_id,
                name="rerank",
                kind="RERANKER",
                service=service,
                start_time_ns=ret_end,
                end_time_ns=rr_end,
                status="OK",
                documents=[
                    Document(d.id, d.content, round(0.99 - i * 0.05, 4), i, d.metadata)
                    for i, d in enumerate(reranked)
                ],
                llm=LLMCall(model="rerank-english-v3.0", provider="cohere"),
                user_id=user,
            )
        )
        template = PromptTemplate(
            name="rag_answer",
            version=self.rng.choice(["v3", "v4"]),
            template=RAG_TEMPLATE,
            variables={"question": question, "context": "; ".join(d.id for d in reranked)},
        )
        llm = self._llm_span(
            trace_id, root_id, rr_end, service, "generate_answer", question, template=template, user=user
        )
        spans.append(llm)
        end = llm.end_time_ns + self._ms(1, 10)
        root_status = "ERROR" if llm.status == "ERROR" else "OK"
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=root_id,
                name="rag_pipeline",
                kind="CHAIN",
                service=service,
                start_time_ns=now,
                end_time_ns=end,
                status=root_status,
                input=question,
                output=llm.output,
                user_id=user,
                tags=["rag", "production"],
                scores=[Score("relevance", round(self.rng.uniform(0.4, 1.0), 3), source="llm_judge")],
            )
        )
        return spans

    def agent(self, now_ns: int | None = None) -> list[Span]:
        now = now_ns or time.time_ns()
        trace_id, root_id = self._trace_id(), self._span_id()
        service = "research-agent"
        question = self.rng.choice(QUESTIONS)
        user = f"user-{self.rng.randint(1, 200)}"
        spans: list[Span] = []
        t = now + self._ms(1, 5)
        guard_end = t + self._ms(5, 40)
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=self._span_id(),
                parent_span_id=root_id,
                name="input_guardrail",
                kind="GUARDRAIL",
                service=service,
                start_time_ns=t,
                end_time_ns=guard_end,
                status="OK",
                input=question,
                output='{"allowed": true}',
                user_id=user,
            )
        )
        t = guard_end
        failed = False
        for step in range(self.rng.randint(1, 4)):
            plan = self._llm_span(trace_id, root_id, t, service, f"plan_step_{step}", question, user=user)
            tool_name = self.rng.choice(TOOLS)
            if plan.llm is not None and plan.status == "OK":
                plan.llm.output_messages = [
                    Message("assistant", "", tool_calls=[ToolCall(f"call_{step}", tool_name, '{"q": "x"}')])
                ]
            spans.append(plan)
            t = plan.end_time_ns
            if plan.status == "ERROR":
                failed = True
                break
            tool_end = t + self._ms(10, 1500)
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=self._span_id(),
                    parent_span_id=root_id,
                    name=tool_name,
                    kind="TOOL",
                    service=service,
                    start_time_ns=t,
                    end_time_ns=tool_end,
                    status="OK",
                    input='{"q": "x"}',
                    output='{"result": "ok"}',
                    attributes={"tool.name": tool_name},
                    user_id=user,
                )
            )
            t = tool_end
        if not failed:
            final = self._llm_span(trace_id, root_id, t, service, "final_answer", question, user=user)
            spans.append(final)
            t = final.end_time_ns
            failed = final.status == "ERROR"
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=root_id,
                name="research_agent",
                kind="AGENT",
                service=service,
                start_time_ns=now,
                end_time_ns=t + self._ms(1, 5),
                status="ERROR" if failed else "OK",
                status_message="rate limited" if failed else "",
                input=question,
                user_id=user,
                tags=["agent"],
            )
        )
        return spans

    def chat_turn(self, now_ns: int | None = None) -> list[Span]:
        now = now_ns or time.time_ns()
        if not self._sessions or self.rng.random() < 0.2:
            self._sessions.append(
                (f"session-{self.rng.getrandbits(48):012x}", f"user-{self.rng.randint(1, 200)}", 5)
            )
        index = self.rng.randrange(len(self._sessions))
        session, user, left = self._sessions[index]
        if left <= 1:
            self._sessions.pop(index)
        else:
            self._sessions[index] = (session, user, left - 1)
        trace_id, root_id = self._trace_id(), self._span_id()
        service = "support-bot"
        question = self.rng.choice(QUESTIONS)
        llm = self._llm_span(
            trace_id,
            root_id,
            now + self._ms(1, 3),
            service,
            "chat_completion",
            question,
            session=session,
            user=user,
        )
        root = Span(
            trace_id=trace_id,
            span_id=root_id,
            name="chat_turn",
            kind="CHAIN",
            service=service,
            start_time_ns=now,
            end_time_ns=llm.end_time_ns + self._ms(1, 5),
            status=llm.status,
            input=question,
            output=llm.output,
            session_id=session,
            user_id=user,
            tags=["chat"],
        )
        return [llm, root]

    def any(self, now_ns: int | None = None) -> list[Span]:
        pick = self.rng.random()
        if pick < 0.45:
            return self.rag(now_ns)
        if pick < 0.75:
            return self.agent(now_ns)
        return self.chat_turn(now_ns)

    def spans(self, count: int) -> Iterator[list[Span]]:
        """Whole traces until at least `count` spans were produced."""
        made = 0
        while made < count:
            trace = self.any()
            made += len(trace)
            yield trace
