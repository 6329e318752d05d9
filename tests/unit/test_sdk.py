"""The SDK's contracts: parent links everywhere an app runs code, propagation, errors, payload limits,
redaction, and a transport that drops instead of blocking.

Structural tests use `InMemoryTransport`, the SDK's documented `transport=` seam (a list, not a Kafka
stand-in); the back-pressure test uses the real `SpanTransport` against an unreachable broker.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tracehouse.core.schema import Span, decode_batch, encode_batch
from tracehouse.producers import (
    InMemoryTransport,
    Tracer,
    configure,
    current_span,
    current_traceparent,
    extract_traceparent,
    get_tracer,
    inject_traceparent,
    parse_traceparent,
    set_tracer,
    span,
    trace,
    wrap_context,
)
from tracehouse.producers.transport import SpanTransport


@pytest.fixture
def mem() -> Iterator[InMemoryTransport]:
    """A global tracer that collects spans in a list; the previous global tracer is restored after."""
    previous = get_tracer()
    transport = InMemoryTransport()
    configure(service="sdk-test", transport=transport, disabled=False, set_global=True)
    try:
        yield transport
    finally:
        set_tracer(previous)


def roundtrip(spans: list[Span]) -> list[Span]:
    """Encode and decode like the pipeline does: every span the SDK builds must pass validation."""
    good, bad = decode_batch(encode_batch(spans))
    assert bad == [], [b.reason for b in bad]
    return good


# ---- parent-child links ------------------------------------------------------------------------


def test_nested_sync_spans_and_decorators(mem: InMemoryTransport) -> None:
    @trace(kind="TOOL")
    def tool(x: int) -> int:
        with span("inner", kind="CHAIN"):
            return x * 2

    with span("root", kind="AGENT") as root:
        assert current_span() is root
        tool(21)
        with span("sibling", kind="LLM"):
            pass
    assert current_span().is_recording is False

    spans = {s.name: s for s in roundtrip(mem.spans)}
    assert spans["root"].parent_span_id == ""
    assert spans["test_nested_sync_spans_and_decorators.<locals>.tool"].parent_span_id == root.span_id
    tool_span = spans["test_nested_sync_spans_and_decorators.<locals>.tool"]
    assert spans["inner"].parent_span_id == tool_span.span_id
    assert spans["sibling"].parent_span_id == root.span_id
    assert {s.trace_id for s in spans.values()} == {root.trace_id}
    assert tool_span.kind == "TOOL" and tool_span.input == '{"x":21}' and tool_span.output == "42"
    assert all(s.status == "OK" for s in spans.values())


async def test_async_spans_keep_parents_across_awaits_tasks_and_gather(mem: InMemoryTransport) -> None:
    @trace(kind="RETRIEVER")
    async def retrieve(i: int) -> int:
        await asyncio.sleep(0.001 * (3 - i))  # finish in reverse order
        with span(f"leaf-{i}"):
            await asyncio.sleep(0)
        return i

    async with span("root") as root:
        results = await asyncio.gather(*(retrieve(i) for i in range(3)))
        task = asyncio.create_task(retrieve(9))
        await task
    assert results == [0, 1, 2]

    spans = roundtrip(mem.spans)
    retrievers = [s for s in spans if s.kind == "RETRIEVER"]
    assert len(retrievers) == 4
    assert all(s.parent_span_id == root.span_id for s in retrievers)  # siblings, not nested in each other
    by_input = {s.input: s for s in retrievers}
    for i in (0, 1, 2, 9):
        leaf = next(s for s in spans if s.name == f"leaf-{i}")
        assert leaf.parent_span_id == by_input[f'{{"i":{i}}}'].span_id


async def test_to_thread_inherits_context(mem: InMemoryTransport) -> None:
    def work() -> str:
        with span("in-thread") as s:
            return s.parent_span_id

    with span("root") as root:
        parent = await asyncio.to_thread(work)  # asyncio.to_thread copies the context itself
    assert parent == root.span_id


def test_threads_need_wrap_context(mem: InMemoryTransport) -> None:
    def work(i: int) -> tuple[str, str]:
        with span(f"work-{i}") as s:
            time.sleep(0.005)  # overlap the calls on the pool's threads
            return s.parent_span_id, s.trace_id

    with span("fan-out") as root, ThreadPoolExecutor(max_workers=4) as pool:
        unwrapped = list(pool.map(work, range(4)))
        wrapped = list(pool.map(wrap_context(work), range(4)))  # one wrapped fn, many threads at once
        thread_result: list[tuple[str, str]] = []
        thread = threading.Thread(target=wrap_context(lambda: thread_result.append(work(99))))
        thread.start()
        thread.join()

    assert all(parent == "" and trace_id != root.trace_id for parent, trace_id in unwrapped)  # new roots
    assert all(result == (root.span_id, root.trace_id) for result in wrapped)
    assert thread_result == [(root.span_id, root.trace_id)]
    assert current_span().is_recording is False


# ---- generators --------------------------------------------------------------------------------


def test_generator_span_covers_whole_iteration_without_leaking(mem: InMemoryTransport) -> None:
    @trace(kind="LLM", name="stream")
    def stream(n: int) -> Iterator[str]:
        for i in range(n):
            with span(f"chunk-{i}"):
                pass
            yield f"tok{i}"
        return

    with span("root") as root:
        gen = stream(3)
        seen = []
        for token in gen:
            seen.append(token)
            # the consumer's code between items is not inside the generator's span
            assert current_span() is root
            with span(f"consumer-{token}"):
                pass
            time.sleep(0.002)
    assert seen == ["tok0", "tok1", "tok2"]

    spans = {s.name: s for s in roundtrip(mem.spans)}
    gen_span = spans["stream"]
    assert gen_span.parent_span_id == root.span_id
    assert gen_span.attributes["tracehouse.stream.items"] == "3"
    assert gen_span.duration_ns >= 4_000_000  # the consumer's sleeps between items are inside it
    assert spans["chunk-2"].parent_span_id == gen_span.span_id
    assert spans["consumer-tok1"].parent_span_id == root.span_id
    assert gen_span.end_time_ns >= spans["chunk-2"].end_time_ns


def test_generator_early_break_and_error(mem: InMemoryTransport) -> None:
    @trace(name="endless")
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    @trace(name="broken")
    def broken() -> Iterator[int]:
        yield 1
        raise KeyError("missing")

    for i in endless():
        if i == 2:
            break
    with pytest.raises(KeyError):
        list(broken())

    spans = {s.name: s for s in mem.spans}
    assert spans["endless"].status == "OK" and spans["endless"].attributes["tracehouse.stream.items"] == "3"
    assert spans["broken"].status == "ERROR" and spans["broken"].events[0].name == "exception"


def test_generator_send_and_return_value(mem: InMemoryTransport) -> None:
    @trace(name="echo")
    def echo() -> Iterator[int]:
        received = yield 0
        while received is not None:
            received = yield received * 10
        return "done"

    def drive() -> Iterator[int]:
        result = yield from echo()
        assert result == "done"

    gen = echo()
    assert next(gen) == 0
    assert gen.send(4) == 40
    with pytest.raises(StopIteration) as stop:
        gen.send(None)
    assert stop.value.value == "done"
    assert list(drive()) == [0]
    assert len(mem.spans) == 2
    assert all(s.output == "done" and s.status == "OK" for s in mem.spans)


async def test_async_generator_span_covers_iteration(mem: InMemoryTransport) -> None:
    @trace(kind="LLM", name="astream")
    async def astream(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0.001)
            with span(f"achunk-{i}"):
                pass
            yield i

    @trace(name="forever")
    async def forever():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            yield i
            i += 1

    async with span("root") as root:
        got = []
        async for item in astream(3):
            assert current_span() is root
            got.append(item)
        agen = forever()
        async for item in agen:
            if item == 1:
                break
        await agen.aclose()
    assert got == [0, 1, 2]

    spans = {s.name: s for s in roundtrip(mem.spans)}
    stream_span = spans["astream"]
    assert stream_span.parent_span_id == root.span_id
    assert spans["achunk-1"].parent_span_id == stream_span.span_id
    assert stream_span.attributes["tracehouse.stream.items"] == "3"
    assert stream_span.duration_ns >= 3_000_000
    assert spans["forever"].status == "OK" and spans["forever"].parent_span_id == root.span_id


# ---- W3C traceparent ---------------------------------------------------------------------------


def test_traceparent_round_trip(mem: InMemoryTransport) -> None:
    incoming = {"Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    remote = extract_traceparent(incoming)
    assert remote is not None and remote.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"

    with span("handle", parent=incoming) as server:
        outgoing = inject_traceparent({})
        assert outgoing["traceparent"] == current_traceparent() == server.traceparent
    assert server.trace_id == remote.trace_id and server.parent_span_id == remote.span_id

    # the next process continues from what this one produced
    parsed = parse_traceparent(outgoing["traceparent"])
    assert parsed is not None and (parsed.trace_id, parsed.span_id) == (server.trace_id, server.span_id)
    with span("downstream", parent=outgoing["traceparent"]) as downstream:
        pass
    assert downstream.trace_id == server.trace_id and downstream.parent_span_id == server.span_id

    # ASGI-style header pairs, and invalid values start a new trace instead of failing
    asgi = [(b"host", b"x"), (b"traceparent", outgoing["traceparent"].encode())]
    assert extract_traceparent(asgi) == parsed
    for bad in (
        "garbage",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "ff-" + "1" * 32 + "-" + "2" * 16 + "-01",
    ):
        assert parse_traceparent(bad) is None
        with span("fresh", parent=bad) as fresh:
            pass
        assert fresh.parent_span_id == "" and fresh.trace_id != server.trace_id
    assert current_traceparent() is None
    roundtrip(mem.spans)


# ---- errors ------------------------------------------------------------------------------------


class RateLimitError(Exception):
    """Named like openai's and anthropic's."""


class APIStatusError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class _Response:
    status_code = 429


class HTTPStatusError(Exception):
    response = _Response()


def test_exception_becomes_event_and_error_status(mem: InMemoryTransport) -> None:
    @trace(kind="LLM")
    def call_model() -> None:
        raise ValueError("context window exceeded")

    with pytest.raises(ValueError, match="context window exceeded"):
        call_model()

    (failed,) = roundtrip(mem.spans)
    assert failed.status == "ERROR" and failed.status_message == "context window exceeded"
    (event,) = failed.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "context window exceeded"
    assert "call_model" in event.attributes["exception.stacktrace"]
    assert failed.attributes["error.type"] == "ValueError"


def test_rate_limits_are_recognised(mem: InMemoryTransport) -> None:
    cases: list[BaseException] = [
        RateLimitError("Rate limit reached for gpt-4o"),
        APIStatusError("Error code: 429", status_code=429),
        HTTPStatusError("Too Many Requests"),
    ]
    wrapped = RuntimeError("retries exhausted")
    wrapped.__cause__ = APIStatusError("slow down", 429)
    cases.append(wrapped)
    for exc in cases:
        with pytest.raises(type(exc)), span("llm", kind="LLM"):
            raise exc
    with pytest.raises(APIStatusError), span("llm", kind="LLM"):
        raise APIStatusError("server error", 500)

    *limited, other = mem.spans
    assert [s.attributes["error.type"] for s in limited] == ["rate_limit"] * 4
    assert all(s.status == "ERROR" and s.events[0].name == "exception" for s in limited)
    assert limited[0].events[0].attributes["exception.type"] == f"{__name__}.RateLimitError"
    assert other.attributes["error.type"] == f"{__name__}.APIStatusError"


async def test_cancelled_task_is_recorded(mem: InMemoryTransport) -> None:
    @trace(name="slow")
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (cancelled,) = mem.spans
    assert cancelled.status == "ERROR" and cancelled.attributes["error.type"].endswith("CancelledError")


# ---- payloads, typed fields, propagation of session/user/tags ----------------------------------


def test_large_payloads_are_truncated_with_a_marker() -> None:
    transport = InMemoryTransport()
    tracer = Tracer("svc", transport, max_payload_bytes=1024)
    with tracer.span("big", kind="LLM") as s:
        s.set_input("a" * 100_000)
        s.set_output({"text": "é" * 5000})  # 2-byte characters: the cut must not split one
        s.set_llm(input_messages=[{"role": "user", "content": "b" * 5000}])
    (big,) = roundtrip(transport.spans)
    assert big.input == "a" * 1024 + "…[truncated 98976 bytes]"
    assert big.attributes["tracehouse.input.truncated_from"] == "100000"
    original_output = len('{"text":""}') + 2 * 5000
    assert big.attributes["tracehouse.output.truncated_from"] == str(original_output)
    assert big.output.endswith(" bytes]") and "…[truncated " in big.output
    assert len(big.output.split("…[truncated")[0].encode()) <= 1024
    assert big.llm is not None and big.llm.input_messages[0].content.endswith("…[truncated 3976 bytes]")


def test_typed_setters_fill_the_schema(mem: InMemoryTransport) -> None:
    with span("rag", kind="CHAIN") as root:
        root.set_session("sess-1")
        root.set_user("user-7")
        root.add_tags("prod", "rag")
        with span("search", kind="RETRIEVER") as r:
            r.set_documents(
                [
                    {"id": "d1", "content": "first", "score": 0.9, "metadata": {"source": "kb", "page": 3}},
                    {"id": "d2", "text": "second", "score": 0.5},
                ]
            )
        with span("answer", kind="LLM") as llm:
            llm.add_tags(["llm"])
            llm.set_prompt_template("rag-answer", "v3", "Q: {q}", {"q": "why?", "n": 2})
            llm.set_llm(
                model="gpt-4o-mini",
                provider="openai",
                temperature=0.2,
                max_tokens=256,
                top_p=0.9,
                stop="###",
                system_prompt="Be brief.",
                input_messages=[{"role": "user", "content": [{"type": "text", "text": "why?"}]}],
                invocation_parameters={"temperature": 0.2, "seed": 1},
            )
            llm.set_llm(
                output_messages=[
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": '{"k":1}'}}],
                    }
                ],
                finish_reason="tool_calls",
            )
            llm.set_usage(input=1200, output=300, cached=1000, reasoning=120)
            llm.set_cost(0.0021)
            llm.add_score("faithfulness", 0.8, "good", source="llm_judge")
            llm.set_attributes({"region": "eu", "retries": 2, "streamed": True})
            llm.add_event("first_token", {"ms": 230})

    spans = {s.name: s for s in roundtrip(mem.spans)}
    search, answer = spans["search"], spans["answer"]
    assert [(d.id, d.content, d.score, d.position) for d in search.documents] == [
        ("d1", "first", 0.9, 0),
        ("d2", "second", 0.5, 1),
    ]
    assert search.documents[0].metadata == {"source": "kb", "page": "3"}
    assert (search.session_id, search.user_id, search.tags) == ("sess-1", "user-7", ["prod", "rag"])
    assert answer.tags == ["llm", "prod", "rag"]
    assert answer.llm is not None and answer.usage is not None and answer.prompt is not None
    assert (answer.llm.model, answer.llm.provider, answer.llm.temperature) == ("gpt-4o-mini", "openai", 0.2)
    assert (answer.llm.max_tokens, answer.llm.top_p, answer.llm.stop) == (256, 0.9, ["###"])
    assert answer.llm.input_messages[0].content == "why?"
    assert answer.llm.output_messages[0].tool_calls[0].name == "lookup"
    assert answer.llm.finish_reason == "tool_calls"
    assert answer.llm.invocation_parameters == '{"temperature":0.2,"seed":1}'
    assert (answer.usage.input, answer.usage.cached, answer.usage.reasoning, answer.usage.total) == (
        1200,
        1000,
        120,
        1500,
    )
    assert answer.cost_usd == 0.0021
    assert (answer.prompt.name, answer.prompt.version, answer.prompt.variables) == (
        "rag-answer",
        "v3",
        {"q": "why?", "n": "2"},
    )
    assert answer.scores[0].name == "faithfulness" and answer.scores[0].label == "good"
    assert answer.attributes == {"region": "eu", "retries": "2", "streamed": "true"}
    assert answer.events[0].name == "first_token" and answer.events[0].attributes == {"ms": "230"}


def test_decorator_captures_arguments_without_self(mem: InMemoryTransport) -> None:
    class Agent:
        @trace(kind="AGENT")
        def run(self, question: str, *, depth: int = 1) -> dict[str, object]:
            current_span().set_attribute("depth", depth)
            return {"answer": question.upper()}

        @trace(capture_input=False, capture_output=False)
        def secret(self, password: str) -> str:
            return password

    Agent().run("hi", depth=2)
    Agent().secret("hunter2")
    run, secret = mem.spans
    assert run.input == '{"question":"hi","depth":2}' and run.output == '{"answer":"HI"}'
    assert run.attributes["depth"] == "2"
    assert secret.input == "" and secret.output == ""


def test_decorated_before_configure_traces_after(mem: InMemoryTransport) -> None:
    previous = set_tracer(Tracer(enabled=False))
    try:

        @trace
        def f() -> int:
            return 1

        assert f() == 1
        assert span("noop").is_recording is False
    finally:
        set_tracer(previous)
    assert f() == 1
    assert [s.name for s in mem.spans] == [f.__qualname__]


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEHOUSE_DISABLED", "1")
    previous = get_tracer()
    try:
        tracer = configure(service="off")
        assert tracer.enabled is False and tracer.transport is None
        with span("x", kind="LLM") as s:
            s.set_llm(model="m")
            s.set_usage(input=1)
        assert s.is_recording is False and current_traceparent() is None
    finally:
        set_tracer(previous)


def test_unknown_kind_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match="unknown span kind"):
        trace(kind="RETRIEVE")
    assert trace(kind="retrieval")  # case-insensitive, with the brief's "Retrieval" as alias


# ---- redaction and counters --------------------------------------------------------------------


def test_redaction_changes_or_drops_spans() -> None:
    transport = InMemoryTransport()

    def redact(s: Span) -> Span | None:
        if s.name == "drop-me":
            return None
        if s.name == "boom":
            raise RuntimeError("redactor bug")
        s.input = s.input.replace("4111-1111-1111-1111", "[card]")
        return s

    tracer = Tracer("svc", transport, redact=redact)
    with tracer.span("keep") as s:
        s.set_input("pay with 4111-1111-1111-1111")
    with tracer.span("drop-me"):
        pass
    with tracer.span("boom"):  # a failing hook loses its span, never the app's work
        pass
    assert [s.input for s in transport.spans] == ["pay with [card]"]
    stats = tracer.stats()
    assert (stats["ended"], stats["redacted"], stats["errors"], stats["enqueued"]) == (3, 1, 1, 1)


def test_full_queue_drops_and_counts_without_blocking() -> None:
    transport = SpanTransport("127.0.0.1:1", max_queue=100, retry_backoff_s=0.05)
    tracer = Tracer("svc", transport)
    prompt = "x" * 1024
    try:
        n = 5_000
        started = time.perf_counter()
        for i in range(n):
            with tracer.span("llm", kind="LLM") as s:
                s.set_input(prompt)
                s.set_usage(input=i, output=1)
        elapsed = time.perf_counter() - started
        stats = tracer.stats()
        assert stats["enqueued"] == 100
        assert stats["dropped"] == n - 100 and stats["rejected"] == n - 100
        assert stats["sent"] == 0
        assert elapsed / n < 200e-6, f"{elapsed / n * 1e6:.1f} µs per span with a full queue"
    finally:
        stopped = time.perf_counter()
        transport.shutdown(timeout=0.2)
        assert time.perf_counter() - stopped < 5
    assert transport.stats.failed == 100  # given up at shutdown, counted, never silently lost


def test_oversized_span_is_shrunk_not_lost() -> None:
    from tracehouse.producers.oversize import shrink_to_fit

    tracer = Tracer("svc", InMemoryTransport())
    with tracer.span("rag", kind="RETRIEVER") as s:
        s.set_documents([{"id": str(i), "content": "z" * 30_000} for i in range(60)])
    (big,) = tracer.transport.spans  # type: ignore[union-attr]
    fitted = shrink_to_fit(big, 200_000)
    assert fitted is not None
    small, data = fitted
    assert len(data) <= 200_000 and len(small.documents) == 60
    assert small.attributes["tracehouse.span.truncated_from"].isdigit()
    assert all(d.content.startswith("zzz") and "…[truncated" in d.content for d in small.documents)


def test_transport_gets_a_new_sender_in_a_forked_child() -> None:
    import os

    transport = SpanTransport("127.0.0.1:1", max_queue=10, retry_backoff_s=0.05)
    tracer = Tracer("svc", transport)
    with tracer.span("in-parent"):
        pass
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            ok = transport._thread.is_alive() and transport.pending == 0
            with tracer.span("in-child"):
                pass
            ok = ok and transport.stats.enqueued == 1
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    try:
        os.waitpid(pid, 0)
        assert os.read(read_end, 1) == b"1"
        assert transport.stats.enqueued == 1  # the parent's own counters are untouched
    finally:
        os.close(read_end)
        os.close(write_end)
        transport.shutdown(timeout=0.1)


def test_transport_encodes_around_bad_and_oversized_spans() -> None:
    """One unencodable or oversized span must neither kill the sender thread nor cost its batch."""
    transport = SpanTransport("127.0.0.1:1", max_message_bytes=64_000)
    tracer = Tracer("svc", InMemoryTransport())
    try:
        for i in range(20):
            with tracer.span(f"ok-{i}") as s:
                s.set_input("fine")
        with tracer.span("surrogate") as s:
            s.set_attribute("path", "caf\udce9.txt")  # from surrogateescape decoding
        with tracer.span("huge", kind="RETRIEVER") as s:
            s.set_documents([{"id": str(i), "content": "z" * 30_000} for i in range(10)])
        spans = tracer.transport.spans  # type: ignore[union-attr]
        messages = transport._messages(spans, 4)
        decoded = [span for _, value, _ in messages for span in roundtrip_bytes(value)]
        assert sorted(s.name for s in decoded) == sorted(s.name for s in spans)
        assert all(len(value) <= 64_000 for _, value, _ in messages)
        by_name = {s.name: s for s in decoded}
        assert by_name["surrogate"].attributes["path"] == "caf?.txt"
        assert int(by_name["huge"].attributes["tracehouse.span.truncated_from"]) > 300_000
        assert [d.id for d in by_name["huge"].documents] == [str(i) for i in range(10)]
        assert transport.stats.failed == 0
        # a broker whose message limit is below ours refuses a message: it is split, not retried forever
        biggest = max(messages, key=lambda m: len(m[2]))
        halves = transport._split_too_large(biggest)
        assert len(halves) >= 2 and sum(len(m[2]) for m in halves) == len(biggest[2])
    finally:
        transport.shutdown(timeout=0.1)


def roundtrip_bytes(value: bytes) -> list[Span]:
    good, bad = decode_batch(value)
    assert bad == []
    return good
