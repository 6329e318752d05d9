"""Realistic synthetic LLM-application traces, for the demo, the load generator and benchmarks.

Three shapes of application, with the timings, token counts and failure modes of real ones:
- RAG: CHAIN root -> EMBEDDING -> RETRIEVER (5 scored documents) -> RERANKER -> LLM with a named prompt
  template (`rag_answer`);
- agent: AGENT root -> GUARDRAIL -> LLM planning turns -> TOOL calls -> a PROMPT step -> a final LLM answer
  whose template has no name, as OpenInference instrumentations (LangChain, LlamaIndex) send it;
- chat: multi-turn sessions where each turn is a CHAIN root with one LLM call, sharing a session id.
The text comes from a small built-in corpus (a fictional cloud company's help centre: questions, answers,
knowledge-base passages, tool calls), so what the demo shows reads like a real application's traffic.
A configurable share of LLM calls fails with its provider's rate-limit error (anthropic's RateLimitError for
claude models, openai's for gpt and o-series, google's for gemini), recorded as an exception event with the
provider's own message and stack, the way the SDK records it.

Cheap enough for load generation (tens of thousands of spans per second): every text is a slice or a
pick from strings built once at import.
"""

from __future__ import annotations

import json
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
SYSTEM_PROMPT = (
    "You are the support assistant of ACME Cloud. Answer from the provided context only; if the context "
    "does not say, tell the user you will open a ticket. Be concise and cite the article ids you used."
)
RAG_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer concisely and cite the article ids."
# An agent's final-answer prompt as LangChain sends it through OpenInference: text, variables and a
# version, no name (question 6 lists it by the hash of its text).
AGENT_TEMPLATE = (
    "You are a research agent for ACME Cloud support.\n"
    "Findings from your tools:\n{findings}\n\n"
    "Customer question: {question}\n"
    "Write the final answer in at most five sentences."
)

# ---- the built-in corpus: a fictional cloud company's help centre, tickets and runbooks ------------------

Topic = tuple[str, tuple[str, ...], str, tuple[tuple[str, str], ...]]  # key, questions, answer, documents

TOPICS: tuple[Topic, ...] = (
    (
        "api-keys",
        (
            "How do I rotate my API key without downtime?",
            "Can I have two active API keys at once?",
            "My API key leaked in a public repo, what should I do?",
        ),
        "Create a second key under Settings → API keys, deploy it to your services, then revoke the old one. "
        "Both keys work until you revoke the first, so there is no downtime. If a key leaked, revoke it "
        "immediately: revocation takes effect within 60 seconds in every region.",
        (
            (
                "kb-1042",
                "API keys can be created and revoked under Settings → API keys. Each project may hold up to "
                "five active keys, so a new key can be rolled out before the old one is revoked.",
            ),
            (
                "kb-1043",
                "Revoking a key takes effect within 60 seconds in every region. Requests signed with a "
                "revoked key fail with 401 invalid_api_key.",
            ),
            (
                "runbook-17",
                "Leaked credentials: revoke the key first, then audit the access log for the key's id "
                "over the last 30 days, then rotate any secrets the key could read.",
            ),
            (
                "ticket-88213",
                "Customer rotated keys by deleting the old one first and saw 401s for ten minutes "
                "until the new key reached every pod.",
            ),
        ),
    ),
    (
        "refunds",
        (
            "What is the refund policy for annual plans?",
            "Can I get a refund if I downgrade mid-year?",
            "How long does a refund take to arrive?",
        ),
        "Annual plans can be refunded pro rata within 30 days of purchase or renewal. After 30 days, a "
        "downgrade takes effect at the next renewal and unused months are credited, not refunded. Refunds "
        "reach the original card in 5 to 10 business days.",
        (
            ("kb-2001", "Annual subscriptions are refundable pro rata within 30 days of the purchase or renewal date."),
            (
                "kb-2002",
                "Downgrades after the 30-day window apply at the next renewal; the difference is kept as "
                "account credit.",
            ),
            (
                "kb-2003",
                "Refunds are issued to the original payment method and usually arrive within 5 to 10 "
                "business days, depending on the bank.",
            ),
            (
                "policy-7",
                "Enterprise contracts follow the refund terms of the signed order form, not the self-serve policy.",
            ),
        ),
    ),
    (
        "incident",
        (
            "Summarise the Q3 incident report.",
            "What caused the September 12 outage?",
            "Which customers were affected by the eu-west storage incident?",
        ),
        "On September 12 a configuration push disabled request hedging in eu-west, and a slow storage node "
        "then raised p99 read latency from 40 ms to 9 s for 47 minutes. About 6 % of eu-west projects saw "
        "timeouts. Config pushes now roll out region by region behind an automatic latency check.",
        (
            (
                "postmortem-q3",
                "Timeline: 09:14 UTC config push; 09:21 p99 read latency above 5 s in eu-west; 09:48 "
                "rollback started; 10:01 latency back to normal.",
            ),
            (
                "postmortem-q3-2",
                "Root cause: the push disabled request hedging, so one degraded storage node served "
                "every slow read instead of racing a replica.",
            ),
            ("postmortem-q3-3", "Impact: 6.2 % of eu-west projects saw at least one timeout; no data was lost."),
            (
                "runbook-3",
                "Config changes roll out one region at a time and stop automatically if p99 latency doubles.",
            ),
        ),
    ),
    (
        "residency",
        (
            "Which regions support data residency?",
            "Can I keep all my data in the EU?",
            "Do backups leave the region I chose?",
        ),
        "Data residency is available in eu-west (Frankfurt), eu-north (Stockholm), us-east and ap-southeast "
        "(Singapore). With residency on, data, backups and logs stay in the chosen region; only billing "
        "metadata is processed in us-east.",
        (
            (
                "kb-3100",
                "Residency regions: eu-west (Frankfurt), eu-north (Stockholm), us-east (Virginia), "
                "ap-southeast (Singapore).",
            ),
            (
                "kb-3101",
                "With residency enabled, backups are written to a second zone of the same region and never "
                "copied across regions.",
            ),
            ("dpa-2024", "Billing metadata (plan, seat count, invoices) is processed in us-east for every customer."),
            (
                "kb-3102",
                "Residency is chosen when a project is created and cannot be changed later; migrate by "
                "exporting and re-importing.",
            ),
        ),
    ),
    (
        "export",
        (
            "How do I export my traces to S3?",
            "Can I schedule a nightly export to my own bucket?",
            "What format does the export use?",
        ),
        "Add an export destination under Settings → Exports with your bucket name and an IAM role that "
        "allows s3:PutObject. Exports run hourly or nightly and write Parquet files partitioned by date.",
        (
            (
                "kb-4410",
                "Export destinations: S3, GCS and Azure Blob. Each needs write access granted to our export role.",
            ),
            ("kb-4411", "Exports run hourly or nightly and write Parquet, partitioned as dt=YYYY-MM-DD/hour=HH."),
            (
                "kb-4412",
                "A failed export is retried for 24 hours; after that the destination is paused and the "
                "owner is emailed.",
            ),
            (
                "ticket-90117",
                "Export failed with AccessDenied because the bucket policy required SSE-KMS; adding "
                "kms:GenerateDataKey to the role fixed it.",
            ),
        ),
    ),
    (
        "invoice",
        (
            "Why was my invoice higher this month?",
            "What are the overage charges on my plan?",
            "Why am I billed for seats nobody uses?",
        ),
        "Your invoice includes 1.8 M requests above the plan's 5 M included requests, billed at $0.40 per "
        "thousand, and three seats added on the 14th, prorated. Unused seats are billed until removed under "
        "Settings → Members.",
        (
            (
                "kb-5001",
                "Requests above the plan's included volume are billed at $0.40 per thousand at the end of the month.",
            ),
            (
                "kb-5002",
                "Seats added mid-cycle are prorated from the day they are added; removed seats stop "
                "billing at the next cycle.",
            ),
            ("invoice-help", "The usage tab breaks the invoice down by project, day and product line."),
            (
                "ticket-91502",
                "Customer's bill doubled because a retry loop sent every request three times; fixed "
                "by adding exponential backoff.",
            ),
        ),
    ),
    (
        "sso",
        (
            "How do I set up SAML single sign-on with Okta?",
            "Can I enforce SSO for every member?",
            "Why do users get 'SAML response not signed'?",
        ),
        "In Okta, create a SAML 2.0 app with our ACS URL and entity ID, then upload its metadata XML under "
        "Settings → Security → SSO. Once a test login works, turn on 'Require SSO' to enforce it for every "
        "member except the break-glass owner.",
        (
            (
                "kb-6200",
                "SAML setup: ACS URL https://login.acme.example/saml/acs, entity ID urn:acme:sp. Upload "
                "the IdP metadata XML.",
            ),
            ("kb-6201", "'Require SSO' blocks password logins for every member except owners flagged break-glass."),
            (
                "kb-6202",
                "'SAML response not signed' means the IdP signs only the assertion; enable 'Sign response' in the IdP.",
            ),
            (
                "ticket-92011",
                "Okta users were provisioned twice because the NameID format was email in one app "
                "and persistent in the other.",
            ),
        ),
    ),
    (
        "limits",
        (
            "What are the rate limits on the API?",
            "Why am I getting 429 Too Many Requests?",
            "How do I raise my request quota?",
        ),
        "Standard plans allow 600 requests per minute per project with bursts to 1,000; requests above that "
        "get 429 with a Retry-After header. Back off for the time it gives, and ask support for a higher "
        "quota if you sustain more.",
        (
            (
                "kb-7001",
                "Limits: 600 requests/minute per project, bursts to 1,000. Enterprise plans are set per contract.",
            ),
            (
                "kb-7002",
                "A 429 response carries Retry-After in seconds; clients should wait at least that long and add jitter.",
            ),
            ("kb-7003", "Quota increases are granted per project after a review of the last 7 days of traffic."),
            (
                "ticket-93340",
                "Nightly batch job hit 429s because 40 workers started at the same second; staggering them fixed it.",
            ),
        ),
    ),
)

TOOLS: tuple[tuple[str, str, str], ...] = (  # name, arguments (JSON), result (JSON)
    ("search_docs", '{{"query": "{q}", "top_k": 5}}', '{{"hits": 5, "best": "{doc}"}}'),
    ("lookup_account", '{{"user_id": "{user}"}}', '{{"plan": "Team annual", "seats": 14, "region": "eu-west"}}'),
    (
        "get_invoice",
        '{{"user_id": "{user}", "month": "2026-11"}}',
        '{{"total_usd": 1284.50, "included_requests": 5000000, "overage_requests": 1812000}}',
    ),
    (
        "run_sql",
        '{{"sql": "SELECT count() FROM requests WHERE status = 429 AND day = today()"}}',
        '{{"rows": [[18234]], "elapsed_ms": 41}}',
    ),
    ("create_ticket", '{{"title": "{q}", "priority": "normal"}}', '{{"ticket": "T-{n}", "status": "open"}}'),
)

PLANS = (
    "The user asks: {q} I will search the knowledge base first.",
    "I need the account details before answering: {q}",
    "The search results mention {doc}; let me check the account's plan to be specific.",
    "I have enough context now to answer the question.",
)

QUESTIONS = [q for topic in TOPICS for q in topic[1]]
_PASSAGES = [text for topic in TOPICS for _, text in topic[3]]
# One long text of whole passages, sliced for prompts of any requested size (`prompt_bytes`).
_CORPUS_TEXT = "\n".join(f"[{doc}] {text}" for _ in range(12) for topic in TOPICS for doc, text in topic[3])
_PASSAGE_STARTS = [i + 1 for i, char in enumerate(_CORPUS_TEXT) if char == "\n" and i < len(_CORPUS_TEXT) - 8192]

# Each provider fails the way its Python SDK does: its exception class, message and stack.
_RATE_LIMITS = {
    "openai": (
        "openai.RateLimitError",
        "Error code: 429 - {{'error': {{'message': 'Rate limit reached for {model} in organization "
        "org-7Qm2Xc on tokens per min (TPM): Limit 200000, Used 198211, Requested 3127. Please try again in "
        "390ms.', 'type': 'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}}}",
        "openai/_base_client.py",
        "client.chat.completions.create(**request)",
        "/v1/chat/completions",
    ),
    "anthropic": (
        "anthropic.RateLimitError",
        "Error code: 429 - {{'type': 'error', 'error': {{'type': 'rate_limit_error', 'message': 'This request "
        "would exceed the rate limit for your organization of 80,000 input tokens per minute. For details, "
        "refer to: https://docs.anthropic.com/en/api/rate-limits.'}}}}",
        "anthropic/_base_client.py",
        "client.messages.create(**request)",
        "/v1/messages",
    ),
    "google": (
        "google.genai.errors.ClientError",
        "429 RESOURCE_EXHAUSTED. {{'error': {{'code': 429, 'message': 'You exceeded your current quota for "
        "{model}, please check your plan and billing details.', 'status': 'RESOURCE_EXHAUSTED'}}}}",
        "google/genai/_api_client.py",
        "client.models.generate_content(model=model, contents=contents)",
        "/v1beta/models:generateContent",
    ),
}
_TOOL_NAMES = ", ".join(name for name, _, _ in TOOLS)
_ROUTES = {provider: route for provider, (*_, route) in _RATE_LIMITS.items()}
_STACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/{service}/llm.py", line 88, in {name}\n'
    "    response = {call}\n"
    '  File "/usr/local/lib/python3.12/site-packages/{module}", line 1047, in request\n'
    "    raise self._make_status_error_from_response(err.response) from None\n"
    "{type}: {message}"
)


def shift_trace(trace: list[Span], delta_ns: int) -> list[Span]:
    """Move a whole trace in time (spans and their events), e.g. to date a demo's traffic in the past."""
    for span in trace:
        span.start_time_ns += delta_ns
        span.end_time_ns += delta_ns
        for event in span.events:
            event.time_ns += delta_ns
    return trace


def trace_end_ns(trace: list[Span]) -> int:
    return max(span.end_time_ns for span in trace)


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

    def _topic(self) -> tuple[Topic, str]:
        topic = self.rng.choice(TOPICS)
        return topic, self.rng.choice(topic[1])

    def _context(self, size: int) -> str:
        """About `size` bytes of whole knowledge-base passages, from a random place in the corpus."""
        start = self.rng.choice(_PASSAGE_STARTS)
        text = _CORPUS_TEXT[start : start + size]
        cut = text.rfind("\n")
        return text[:cut] if cut > size // 2 else text

    def _llm_span(
        self,
        trace_id: str,
        parent: str,
        start: int,
        service: str,
        name: str,
        question: str,
        answer: str,
        *,
        template: PromptTemplate | None = None,
        prompt: str = "",
        output_tokens: tuple[int, int] = (40, 360),
        rate_limited: bool | None = None,
        session: str = "",
        user: str = "",
    ) -> Span:
        model, provider = self.rng.choice(MODELS)
        input_tokens = self.rng.randint(300, 4000)
        out_tokens = self.rng.randint(*output_tokens)
        cached = self.rng.choice([0, 0, input_tokens // 2])
        reasoning = self.rng.randint(0, out_tokens // 2) if model.startswith("o") else 0
        # time to first token, then the decoding speed of a busy hosted model
        duration = self._ms(250, 1200) + out_tokens * self.rng.randint(5, 12) * 1_000_000
        if rate_limited is None:
            rate_limited = self.rng.random() < self.options.error_ratio
        prompt = prompt or f"Customer question: {question}"
        if len(prompt) < self.options.prompt_bytes:  # what else the app put in the prompt, to the size asked
            prompt = f"Knowledge base excerpts:\n{self._context(self.options.prompt_bytes - len(prompt))}\n\n{prompt}"
        temperature = self.rng.choice([0.0, 0.2, 0.7, 1.0])
        max_tokens = self.rng.choice([512, 1024, 2048])
        llm = LLMCall(
            model=model,
            provider=provider,
            temperature=temperature,
            max_tokens=max_tokens,
            top_p=1.0,
            system_prompt=SYSTEM_PROMPT,
            input_messages=[Message("system", SYSTEM_PROMPT), Message("user", prompt)],
            output_messages=[] if rate_limited else [Message("assistant", answer)],
            finish_reason="" if rate_limited else "stop",
            invocation_parameters=f'{{"temperature": {temperature}, "max_tokens": {max_tokens}, "top_p": 1.0}}',
        )
        events: list[Event] = []
        attributes = {"llm.request.type": "chat", "http.route": _ROUTES[provider]}
        status, message = "OK", ""
        usage = TokenUsage(input=input_tokens, output=out_tokens, cached=cached, reasoning=reasoning)
        if rate_limited:
            exc_type, exc_message, module, call, _ = _RATE_LIMITS[provider]
            exc_message = exc_message.format(model=model)
            duration = self._ms(50, 400)
            status, message = "ERROR", f"{exc_type.rsplit('.', 1)[-1]}: {exc_message[:80]}"
            usage = TokenUsage()
            attributes["error.type"] = "rate_limit"
            attributes["http.status_code"] = "429"
            stack = _STACK.format(
                service=service.replace("-", "_"), name=name, call=call, module=module, type=exc_type,
                message=exc_message,
            )  # fmt: skip
            events.append(
                Event(
                    "exception",
                    start + duration,
                    {"exception.type": exc_type, "exception.message": exc_message, "exception.stacktrace": stack},
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
        topic, question = self._topic()
        _, _, answer, passages = topic
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
                usage=TokenUsage(input=len(question) // 4 + 1),
                user_id=user,
            )
        )
        ret_end = emb_end + self._ms(30, 900)
        found = list(passages)
        self.rng.shuffle(found)
        found.append(self.rng.choice(self.rng.choice(TOPICS)[3]))  # a near miss from another topic
        documents = [
            Document(
                id=doc_id,
                content=content,
                score=round(0.92 - i * self.rng.uniform(0.03, 0.1), 4),
                position=i,
                metadata={"source": doc_id.split("-")[0]},
            )
            for i, (doc_id, content) in enumerate(found)
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
                    Document(d.id, d.content, round(0.99 - i * 0.05, 4), i, d.metadata) for i, d in enumerate(reranked)
                ],
                llm=LLMCall(model="rerank-english-v3.0", provider="cohere"),
                user_id=user,
            )
        )
        context = "\n".join(f"[{d.id}] {d.content}" for d in reranked)
        template = PromptTemplate(
            name="rag_answer",
            version=self.rng.choice(["v3", "v4"]),
            template=RAG_TEMPLATE,
            variables={"question": question, "context": ", ".join(d.id for d in reranked)},
        )
        prompt = RAG_TEMPLATE.format(context=context, question=question)
        llm = self._llm_span(
            trace_id, root_id, rr_end, service, "generate_answer", question, answer, template=template,
            prompt=prompt, user=user,
        )  # fmt: skip
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
                status_message=llm.status_message,
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
        topic, question = self._topic()
        _, _, answer, passages = topic
        doc = self.rng.choice(passages)[0]
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
                output='{"allowed": true, "categories": []}',
                user_id=user,
            )
        )
        t = guard_end
        failed = False
        findings: list[str] = []
        for step in range(self.rng.randint(1, 3)):
            plan_text = PLANS[min(step, len(PLANS) - 1)].format(q=question, doc=doc)
            plan_prompt = f"Customer question: {question}\nTools: {_TOOL_NAMES}\nFindings so far:\n" + "\n".join(
                findings
            )
            plan = self._llm_span(
                trace_id, root_id, t, service, f"plan_step_{step}", question, plan_text,
                prompt=plan_prompt, output_tokens=(30, 160), user=user,
            )  # fmt: skip
            tool_name, arguments, result = self.rng.choice(TOOLS)
            arguments = arguments.format(
                q=question.replace('"', "'"), user=user, doc=doc, n=self.rng.randint(1000, 9999)
            )
            result = result.format(q=question, user=user, doc=doc, n=self.rng.randint(1000, 9999))
            if plan.llm is not None and plan.status == "OK":
                plan.llm.output_messages = [
                    Message("assistant", plan_text, tool_calls=[ToolCall(f"call_{step}", tool_name, arguments)])
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
                    input=arguments,
                    output=result,
                    attributes={"tool.name": tool_name},
                    user_id=user,
                )
            )
            findings.append(f"- {tool_name}: {result}")
            t = tool_end
        if not failed:
            variables = {"findings": "\n".join(findings), "question": question}
            template = PromptTemplate(version="3", template=AGENT_TEMPLATE, variables=variables)
            prompt = AGENT_TEMPLATE.format(**variables)
            prompt_end = t + self._ms(0.2, 2)
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=self._span_id(),
                    parent_span_id=root_id,
                    name="ChatPromptTemplate",
                    kind="PROMPT",
                    service=service,
                    start_time_ns=t,
                    end_time_ns=prompt_end,
                    status="OK",
                    input=json.dumps(variables),
                    output=prompt,
                    user_id=user,
                )
            )
            final = self._llm_span(
                trace_id, root_id, prompt_end, service, "final_answer", question, answer, template=template,
                prompt=prompt, user=user,
            )  # fmt: skip
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
                status_message="rate limited by the model provider" if failed else "",
                input=question,
                output="" if failed else answer,
                user_id=user,
                tags=["agent"],
            )
        )
        return spans

    def chat_turn(self, now_ns: int | None = None, *, rate_limited: bool | None = None) -> list[Span]:
        """One turn of a support chat; `rate_limited=True` makes its LLM call fail with a 429."""
        now = now_ns or time.time_ns()
        if not self._sessions or self.rng.random() < 0.2:
            self._sessions.append((f"session-{self.rng.getrandbits(48):012x}", f"user-{self.rng.randint(1, 200)}", 5))
        index = self.rng.randrange(len(self._sessions))
        session, user, left = self._sessions[index]
        if left <= 1:
            self._sessions.pop(index)
        else:
            self._sessions[index] = (session, user, left - 1)
        trace_id, root_id = self._trace_id(), self._span_id()
        service = "support-bot"
        topic, question = self._topic()
        llm = self._llm_span(
            trace_id,
            root_id,
            now + self._ms(1, 3),
            service,
            "chat_completion",
            question,
            topic[2],
            prompt="\n".join(f"[{doc}] {text}" for doc, text in topic[3]) + f"\n\nCustomer: {question}",
            rate_limited=rate_limited,
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
            status_message=llm.status_message,
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
