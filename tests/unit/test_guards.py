"""In-flight guards without Kafka: rules of type `trace` (parsing), each metric on an assembler's open
traces, firing once per trace and rule, not again on replay below the checkpoint, and the processor
publishing what fires while the trace is still open."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
import pytest

from tracehouse.core.alerts import TRACE_RULE_WINDOW, Alert, decode_alerts, encode_alerts
from tracehouse.core.schema import SCHEMA_VERSION, LLMCall, Span, TokenUsage, encode_batch
from tracehouse.pipeline.alert_rules import RuleError, default_rules, parse_rules
from tracehouse.pipeline.assembly import TraceAssembler
from tracehouse.pipeline.guard_rules import (
    TraceRule,
    TraceRuleError,
    default_trace_rules,
    parse_trace_rules,
)
from tracehouse.pipeline.guards import GuardPublisher, TraceGuards
from tracehouse.pipeline.partition_windows import windows_factory
from tracehouse.pipeline.processor import ProcessorOptions, SpanProcessor

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"
T0 = 1_790_000_000_000_000_000
_ids = itertools.count(1)


def span(
    *,
    trace: str = TRACE,
    kind: str = "CHAIN",
    name: str = "step",
    parent: int = 0,
    span_id: int | None = None,
    start_ms: int = 0,
    status: str = "OK",
    input: str = "",
    service: str = "bot",
    tokens: int = 0,
    cost: float | None = None,
) -> Span:
    return Span(
        trace_id=trace,
        span_id=f"{span_id or next(_ids):016x}",
        parent_span_id=f"{parent:016x}" if parent else "",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        service=service,
        start_time_ns=T0 + start_ms * 1_000_000,
        end_time_ns=T0 + (start_ms + 5) * 1_000_000,
        status=status,  # type: ignore[arg-type]
        input=input,
        llm=LLMCall(model="gpt-4o-mini") if kind == "LLM" else None,
        usage=TokenUsage(input=tokens, output=0) if tokens else None,
        cost_usd=cost,
        session_id="sess-1",
        user_id="user-1",
    )


def rule(metric: str, threshold: float, comparison: str = ">", **extra: Any) -> TraceRule:
    return parse_trace_rules(
        {
            "rules": [
                {
                    "name": metric,
                    "type": "trace",
                    "metric": metric,
                    "threshold": threshold,
                    "comparison": comparison,
                    **extra,
                }
            ]
        }
    )[0]


def feed(rules: list[TraceRule], spans: list[Span], floor: int = 0) -> tuple[TraceAssembler, list[list[Alert]]]:
    """Each span in turn (offsets 0, 1, ...); what fired after each."""
    assembler = TraceAssembler(guards=TraceGuards(rules, replay_floor=floor))
    fired = []
    for offset, s in enumerate(spans):
        assembler.add(s, offset, now=1.0)
        assert assembler.guards is not None
        fired.append(assembler.guards.take())
    return assembler, fired


def fired_at(fired: list[list[Alert]]) -> list[int]:
    return [i for i, alerts in enumerate(fired) for _ in alerts]


# --- rules ----------------------------------------------------------------------------------------------

RULES_TOML = """
[[rules]]
name = "slow"
metric = "latency_p95_ms"
window_seconds = 60
comparison = ">"
threshold = 5000

[[rules]]
name = "tool-loop"
type = "trace"
metric = "tool_repeats"
comparison = ">="
threshold = 3
severity = "critical"
filters = { service = "support-*" }

[[rules]]
name = "too-many-llm-calls"
type = "trace"
metric = "llm_calls"
threshold = 20
"""


def test_trace_rules_share_the_file_with_window_rules() -> None:
    assert [r.name for r in parse_rules(RULES_TOML)] == ["slow"]  # the window rules only
    loop, calls = parse_trace_rules(RULES_TOML)
    assert (loop.name, loop.metric, loop.comparison, loop.threshold, loop.severity) == (
        "tool-loop",
        "tool_repeats",
        ">=",
        3.0,
        "critical",
    )
    assert loop.matches("support-bot") and not loop.matches("billing")
    assert (calls.comparison, calls.severity, calls.filters) == (">", "warning", {})
    assert loop.breached(3) and not loop.breached(2) and calls.breached(21) and not calls.breached(20)


def test_the_default_rules_hold_a_loop_guard() -> None:
    [loop] = default_trace_rules()
    assert (loop.name, loop.metric, loop.comparison, loop.threshold) == ("tool-loop", "tool_repeats", ">=", 5.0)
    assert all(r.name != "tool-loop" for r in default_rules())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"metric": "latency_p95_ms"}, "rule 'r': field 'metric': 'latency_p95_ms' is not one of llm_calls"),
        ({"window_seconds": 60}, "rule 'r': field 'window_seconds': unknown field for a rule of type 'trace'"),
        ({"comparison": "<"}, "rule 'r': field 'comparison': must be '>' or '>='"),
        ({"threshold": "5"}, "rule 'r': field 'threshold': must be a number >= 0"),
        ({"filters": {"kind": "TOOL"}}, "rule 'r': field 'filters.kind': a trace rule can filter only on service"),
        ({"severity": "page"}, "rule 'r': field 'severity': must be one of"),
    ],
)
def test_a_bad_trace_rule_is_named_with_its_field(fields: dict[str, Any], expected: str) -> None:
    table = {"name": "r", "type": "trace", "metric": "depth", "threshold": 5, **fields}
    with pytest.raises(TraceRuleError, match=expected):
        parse_trace_rules({"rules": [table]}, source="alerts.toml")


def test_rule_names_are_unique_across_types_and_unknown_types_are_refused() -> None:
    clash = RULES_TOML + '\n[[rules]]\nname = "slow"\ntype = "trace"\nmetric = "depth"\nthreshold = 9\n'
    with pytest.raises(TraceRuleError, match="rule 'slow': field 'name': used by two rules"):
        parse_trace_rules(clash)
    bogus = {"name": "x", "type": "session", "metric": "count", "window_seconds": 60, "comparison": ">", "threshold": 1}
    with pytest.raises(RuleError, match=r"rule 'x': field 'type': must be 'window' .* or 'trace'"):
        parse_rules({"rules": [bogus]})


# --- each metric ----------------------------------------------------------------------------------------


def test_tool_repeats_counts_one_tool_with_one_input() -> None:
    calls = [span(kind="TOOL", name="search", input='{"q": "refund"}') for _ in range(6)]
    others = [
        span(kind="TOOL", name="search", input='{"q": "other"}'),
        span(kind="TOOL", name="lookup", input='{"q": "refund"}'),
    ]
    spans = calls[:2] + others + calls[2:]
    _, fired = feed(default_trace_rules(), spans)
    assert fired_at(fired) == [6]  # the 5th call of search(refund), once; the 6th does not fire again
    [alert] = fired[6]
    assert (alert.rule, alert.value, alert.threshold, alert.severity, alert.state) == (
        "tool-loop",
        5.0,
        5.0,
        "critical",
        "firing",
    )
    assert (alert.trace_id, alert.service, alert.user_id, alert.session_id) == (TRACE, "bot", "user-1", "sess-1")
    assert alert.labels["subject"] == "search" and alert.labels["span_id"] == spans[6].span_id
    assert (alert.window_start, alert.window_seconds) == (T0 // 10**9, TRACE_RULE_WINDOW)
    assert "tool 'search' called 5 times with the same input" in alert.message


def test_llm_calls_tokens_and_cost() -> None:
    rules = [rule("llm_calls", 2), rule("total_tokens", 250), rule("cost_usd", 0.5)]
    spans = [span(kind="LLM", tokens=100, cost=0.2) for _ in range(4)]
    _, fired = feed(rules, spans)
    assert [[a.rule for a in f] for f in fired] == [[], [], ["cost_usd", "total_tokens", "llm_calls"], []]
    assert [a.value for a in fired[2]] == [pytest.approx(0.6), 300.0, 3.0]


def test_depth_with_children_arriving_before_their_parents() -> None:
    # root(1) <- 2 <- 3 <- 4; spans arrive as they end: the leaf first, the root last.
    chain = [span(span_id=4, parent=3), span(span_id=3, parent=2), span(span_id=2, parent=1), span(span_id=1)]
    _, fired = feed([rule("depth", 3)], chain)
    assert fired_at(fired) == [3] and fired[3][0].value == 4.0
    # The middle arriving last joins two chains: 1 <- 2 and 3 <- 4 become one of depth 4.
    joined = [span(span_id=11), span(span_id=14, parent=13), span(span_id=13, parent=12), span(span_id=12, parent=11)]
    _, fired = feed([rule("depth", 3)], joined)
    assert fired_at(fired) == [3]
    # Wide is not deep: ten children of one root.
    wide = [span(span_id=21)] + [span(span_id=22 + i, parent=21) for i in range(10)]
    _, fired = feed([rule("depth", 2)], wide)
    assert fired_at(fired) == []


def test_retries_after_an_error() -> None:
    spans = [
        span(name="call-api", start_ms=0),  # before any error: not a retry
        span(name="call-api", start_ms=10, status="ERROR"),
        span(name="call-api", start_ms=20, status="ERROR"),
        span(name="other", start_ms=25),
        span(name="call-api", start_ms=30),
        span(name="call-api", start_ms=40),
    ]
    _, fired = feed([rule("retries_after_error", 2)], spans)
    assert fired_at(fired) == [5] and fired[5][0].value == 3.0 and fired[5][0].labels["subject"] == "call-api"


def test_once_per_trace_and_rule_each_trace_on_its_own() -> None:
    rules = [rule("llm_calls", 1)]
    spans = [
        span(kind="LLM"),
        span(kind="LLM", trace=OTHER),
        span(kind="LLM"),
        span(kind="LLM"),
        span(kind="LLM", trace=OTHER),
    ]
    assembler, fired = feed(rules, spans)
    assert [(i, a.trace_id) for i, f in enumerate(fired) for a in f] == [(2, TRACE), (4, OTHER)]
    # Emitted, then revised by a late span: still fired once.
    assembler.flush_all(now=2.0)
    assembler.add(span(kind="LLM"), 9, now=3.0)
    assert assembler.guards is not None and assembler.guards.take() == []


def test_filters_on_the_breaching_span_service() -> None:
    rules = [rule("llm_calls", 0, filters={"service": "support-*"})]
    _, fired = feed(rules, [span(kind="LLM", service="billing"), span(kind="LLM", service="support-bot")])
    assert fired_at(fired) == [1]


def test_a_breach_replayed_below_the_checkpoint_does_not_fire_again() -> None:
    spans = [span(kind="TOOL", name="t", input="x") for _ in range(6)]
    assembler, fired = feed(default_trace_rules(), spans, floor=5)  # offsets 0-4 were checkpointed
    assert fired_at(fired) == []
    assert assembler.guards is not None and assembler.guards.stats.not_refired == 1
    _, fired = feed(default_trace_rules(), spans, floor=4)  # the 5th call (offset 4) is after the checkpoint
    assert fired_at(fired) == [4]


def test_no_rules_no_guard_work() -> None:
    assert GuardPublisher([], alerts_out=None).for_partition(0) is None


# --- the record -----------------------------------------------------------------------------------------


class _OldAlert(msgspec.Struct, kw_only=True):
    fired_at: int
    rule: str
    service: str
    severity: str
    value: float
    threshold: float
    state: str
    message: str
    window_start: int
    window_seconds: int
    labels: dict[str, str]


class _OldBatch(msgspec.Struct):
    alerts: list[_OldAlert]
    v: int = SCHEMA_VERSION


def test_alerts_written_before_the_guard_fields_still_decode() -> None:
    old = _OldAlert(
        fired_at=1, rule="r", service="s", severity="warning", value=1.0, threshold=0.5, state="firing",
        message="m", window_start=60, window_seconds=60, labels={},
    )  # fmt: skip
    [alert] = decode_alerts(msgspec.msgpack.encode(_OldBatch([old])))
    assert (alert.rule, alert.trace_id, alert.user_id, alert.session_id) == ("r", "", "", "")
    assert decode_alerts(encode_alerts([alert])) == [alert]


# --- the processor ----------------------------------------------------------------------------------------


class _Sent:
    """What a Faust topic is to the processor (its `Sendable` protocol): here, a list."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    async def send(self, *, key: Any = None, value: Any = None, partition: int | None = None) -> None:
        self.values.append(value)


def test_the_processor_publishes_a_guard_alert_while_the_trace_is_open() -> None:
    alerts_out, traces_out = _Sent(), _Sent()
    processor = SpanProcessor(
        traces_out=traces_out,
        partials_out=_Sent(),
        dlq_out=_Sent(),
        windows_factory=windows_factory(),
        options=ProcessorOptions(checkpoint_interval_s=3600),
        guards=GuardPublisher(default_trace_rules(), alerts_out),
    )
    processor.attach(None, None)
    state = processor._partition(0, None, 0)
    tools = [span(kind="TOOL", name="search", input="same", parent=99) for _ in range(6)]

    async def run() -> None:
        for offset in range(3):  # two calls a message: the 5th arrives in the third
            await processor.on_message(state, offset, encode_batch(tools[2 * offset : 2 * offset + 2]))
            assert len(alerts_out.values) == (1 if offset == 2 else 0)

    asyncio.run(run())
    [alert] = decode_alerts(alerts_out.values[0])
    assert (alert.rule, alert.trace_id, alert.value) == ("tool-loop", TRACE, 5.0)
    assert traces_out.values == [] and state.assembler.open_traces == 1  # before the trace ends


def test_the_example_rules_file_holds_the_built_in_loop_guard() -> None:
    from pathlib import Path

    from tracehouse.pipeline.guard_rules import load_trace_rules

    rules = load_trace_rules(Path(__file__).resolve().parents[2] / "deploy" / "alerts.toml")
    assert rules[0] == default_trace_rules()[0] and len(rules) == 3


async def test_a_guard_alert_goes_to_the_webhook_too() -> None:
    import socket

    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    alerts_out = _Sent()
    publisher = GuardPublisher(default_trace_rules(), alerts_out, f"http://127.0.0.1:{sock.getsockname()[1]}/hook")
    try:
        guards = publisher.for_partition(0)
        assembler = TraceAssembler(guards=guards)
        for offset in range(5):
            assembler.add(span(kind="TOOL", name="search", input="same"), offset, now=1.0)
        assert guards is not None
        await publisher.publish(guards.take())
        await publisher.close()  # sends what is queued
    finally:
        await runner.cleanup()
    assert len(alerts_out.values) == 1
    [payload] = received
    assert payload["text"].startswith(f"[CRITICAL] tool-loop: trace {TRACE}: tool 'search' called 5 times")


# --- the SDK's guard (its filter and memory; tests/integration/test_guards_e2e.py runs it on Kafka) ------------------


def _guard_alert(trace_id: str, service: str = "bot", state: str = "firing") -> Alert:
    [alert] = feed(default_trace_rules(), [span(trace=trace_id, kind="TOOL", name="t", input="x") for _ in range(5)])[
        1
    ][4]
    alert.service, alert.state = service, state
    return alert


def test_the_sdk_guard_keeps_its_own_services_guard_alerts() -> None:
    from tracehouse.producers import Guard, GuardTripped

    calls: list[Alert] = []

    def callback(alert: Alert) -> None:
        calls.append(alert)
        raise RuntimeError("the app's callback fails: counted, the guard goes on")

    guard = Guard("bot", "127.0.0.1:1", on_alert=callback, max_traces=2)  # not started: no consumer
    window = _guard_alert(OTHER)
    window.trace_id = ""  # a window alert: no trace, nothing to trip
    guard._take(encode_alerts([_guard_alert(TRACE, service="billing"), window]))
    guard._take(b"not an alert batch")
    assert not guard.tripped(TRACE) and calls == [] and guard.stats.undecodable == 1
    guard._take(encode_alerts([_guard_alert(TRACE)]))
    assert guard.tripped(TRACE) and not guard.tripped(OTHER) and guard.stats.callback_errors == 1
    with pytest.raises(GuardTripped, match="guard tool-loop tripped: trace 4bf92f35"):
        guard.check(TRACE)
    guard.check(OTHER)  # nothing for this one
    guard._take(encode_alerts([_guard_alert(OTHER), _guard_alert("1" * 32)]))
    assert not guard.tripped(TRACE) and guard.tripped(OTHER)  # bounded: the oldest trace is forgotten
    assert [a.trace_id for a in calls] == [TRACE, OTHER, "1" * 32]
