"""Alert rules and their evaluation over rollups, and the webhook that posts alerts (a real HTTP server)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from pathlib import Path

import pytest
from aiohttp import web

from tracehouse.core.alerts import Alert
from tracehouse.core.rollups import Rollup
from tracehouse.core.sketch import LatencySketch
from tracehouse.pipeline.alert_evaluator import AlertEvaluator
from tracehouse.pipeline.alert_notify import WebhookNotifier, slack_payload
from tracehouse.pipeline.alert_rules import Rule, RuleError, default_rules, load_rules, parse_rules
from tracehouse.sinks.ddl import ALERTS_GUARD_COLUMNS_V6, ALERTS_V1

W0 = 1_789_999_980  # epoch seconds, a multiple of 60
NOW_MS = (W0 + 5 * 3600) * 1000  # after every window the tests use
REPO = Path(__file__).resolve().parents[2]


def rollup(
    minute: int,
    *,
    latencies: list[float] | None = None,
    count: int | None = None,
    errors: int = 0,
    rate_limits: int = 0,
    cost: float = 0.0,
    service: str = "support-bot",
    kind: str = "LLM",
    name: str = "chat",
    model: str = "gpt-4o",
    window_seconds: int = 60,
) -> Rollup:
    """A final rollup for the `minute`-th window after W0 (its sketch holds `latencies`)."""
    latencies = latencies if latencies is not None else [100.0] * (count or 1)
    sketch = LatencySketch()
    for value in latencies:
        sketch.add(value)
    p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
    return Rollup(
        window_start=W0 + minute * window_seconds,
        window_seconds=window_seconds,
        service=service,
        kind=kind,
        name=name,
        model=model,
        count=count if count is not None else len(latencies),
        error_count=errors,
        rate_limit_count=rate_limits,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        latency_max_ms=sketch.max,
        latency_sketch=base64.b64encode(sketch.to_bytes()).decode(),
        input_tokens=0,
        output_tokens=0,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=cost,
    )


def one_rule(**fields: object) -> Rule:
    table = {"name": "r", "metric": "count", "window_seconds": 60, "comparison": ">", "threshold": 1}
    table.update(fields)
    (rule,) = parse_rules({"rules": [table]})
    return rule


def table_columns(ddl: str) -> list[str]:
    body = ddl[ddl.index("(") + 1 : ddl.rindex(")\nENGINE")]
    return [m.group(1) for m in re.finditer(r"^\s+(\w+) ", body, re.M)]


def test_alert_has_exactly_the_table_columns() -> None:
    added_v6 = re.findall(r"ADD COLUMN IF NOT EXISTS (\w+) ", ALERTS_GUARD_COLUMNS_V6)  # guard alerts' fields
    assert list(Alert.__struct_fields__) == table_columns(ALERTS_V1) + added_v6


# --- rules ----------------------------------------------------------------------------------------------


def test_default_rules_and_example_file() -> None:
    defaults = {r.name: r for r in default_rules()}
    assert set(defaults) == {"llm-latency-p95", "error-rate", "rate-limits", "cost-per-hour"}
    p95 = defaults["llm-latency-p95"]
    assert (p95.metric, p95.window_seconds, p95.threshold, p95.filters) == (
        "latency_p95_ms",
        60,
        5000.0,
        {"kind": "LLM"},
    )
    assert (defaults["error-rate"].windows, defaults["error-rate"].base_seconds) == (5, 60)
    assert defaults["cost-per-hour"].windows == 60
    from_file = load_rules(REPO / "deploy" / "alerts.toml")
    assert [r for r in from_file if r.name in defaults] == list(defaults.values())
    assert len(from_file) == 7
    assert one_rule(window_seconds=30).base_seconds == 10 and one_rule(window_seconds=30).windows == 3


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"metric": "latency_p90_ms"}, "rule 'r': field 'metric': 'latency_p90_ms' is not one of"),
        ({"window_seconds": 45}, "rule 'r': field 'window_seconds': 45 is not a multiple of"),
        ({"window_seconds": "60"}, "rule 'r': field 'window_seconds': must be a positive integer"),
        ({"comparison": ">="}, "rule 'r': field 'comparison'"),
        ({"threshold": "high"}, "rule 'r': field 'threshold': must be a number"),
        ({"metric": "error_rate", "threshold": 5}, "rule 'r': field 'threshold': error_rate is a fraction"),
        ({"severity": "page"}, "rule 'r': field 'severity'"),
        ({"filters": {"region": "eu"}}, "rule 'r': field 'filters.region'"),
        ({"filters": {"kind": 3}}, "rule 'r': field 'filters.kind'"),
        ({"group_by": ["host"]}, "rule 'r': field 'group_by'"),
        ({"min_count": -1}, "rule 'r': field 'min_count': must be an integer >= 0"),
        ({"for_windows": 0}, "rule 'r': field 'for_windows': must be an integer >= 1"),
        ({"treshold": 3}, "rule 'r': field 'treshold': unknown field"),
    ],
)
def test_validation_errors_name_the_rule_and_field(fields: dict[str, object], expected: str) -> None:
    with pytest.raises(RuleError) as info:
        one_rule(**fields)
    assert expected in str(info.value)


def test_file_level_validation(tmp_path: Path) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text('[[rules]]\nname = "slow"\nmetric = "count"\ncomparison = ">"\nthreshold = 1\n')
    with pytest.raises(RuleError, match=r"alerts.toml: rule 'slow': field 'window_seconds': required"):
        load_rules(path)
    twice = {"name": "a", "metric": "count", "window_seconds": 60, "comparison": ">", "threshold": 1}
    with pytest.raises(RuleError, match="rule #2: field 'name': required"):
        parse_rules({"rules": [twice, {"metric": "count"}]})
    with pytest.raises(RuleError, match="rule 'a': field 'name': used by two rules"):
        parse_rules({"rules": [twice, twice]})
    with pytest.raises(RuleError, match="not valid TOML"):
        parse_rules("[[rules]\n")
    with pytest.raises(RuleError, match="unknown top-level key 'rule'"):
        parse_rules("[[rule]]\nname = 'x'\n")
    # only the sizes the worker computes are accepted
    with pytest.raises(RuleError, match="not a multiple of a rollup window size \\(60\\)"):
        parse_rules({"rules": [{**twice, "window_seconds": 30}]}, base_windows=(60,))


# --- evaluation -----------------------------------------------------------------------------------------


def test_fires_once_and_resolves_once_with_exact_values() -> None:
    evaluator = AlertEvaluator(default_rules())
    slow = [7312.0] * 20
    (alert,) = evaluator.process([rollup(0, latencies=slow)], now_ms=NOW_MS)
    assert alert == Alert(
        fired_at=NOW_MS,
        rule="llm-latency-p95",
        service="support-bot",
        severity="warning",
        value=7312.0,
        threshold=5000.0,
        state="firing",
        message="p95 latency of LLM spans in support-bot is 7,312 ms (threshold 5,000 ms) over 1m",
        window_start=W0,
        window_seconds=60,
        labels={
            "metric": "latency_p95_ms",
            "comparison": ">",
            "count": "20",
            "service": "support-bot",
            "filter.kind": "LLM",
        },
    )
    assert evaluator.process([rollup(1, latencies=slow)], now_ms=NOW_MS) == []  # still bad: silent
    assert evaluator.process([rollup(1, latencies=slow * 2)], now_ms=NOW_MS) == []  # a revision: silent
    (resolved,) = evaluator.process([rollup(2, latencies=[1200.0] * 20)], now_ms=NOW_MS + 1)
    assert (resolved.state, resolved.value, resolved.window_start) == ("resolved", 1200.0, W0 + 120)
    assert resolved.fired_at == NOW_MS + 1
    assert resolved.message == (
        "resolved: p95 latency of LLM spans in support-bot is 1,200 ms (threshold 5,000 ms) over 1m"
    )
    assert evaluator.process([rollup(3, latencies=[900.0] * 20)], now_ms=NOW_MS) == []
    assert (evaluator.stats.fired, evaluator.stats.resolved) == (1, 1)


def test_p95_of_merged_groups_is_within_one_percent() -> None:
    rule = one_rule(metric="latency_p95_ms", threshold=1000, filters={"kind": "LLM"})
    evaluator = AlertEvaluator([rule])
    a = [float(v) for v in range(100, 2100, 20)]  # 100 values
    b = [float(v) for v in range(50, 1050, 10)]  # 100 values, another model of the same service
    (alert,) = evaluator.process([rollup(0, latencies=a), rollup(0, latencies=b, model="o3")], now_ms=NOW_MS)
    exact = sorted(a + b)[int(0.95 * 199)]
    assert abs(alert.value - exact) <= 0.01 * exact


def test_hysteresis_for_windows_and_resolve_windows() -> None:
    rule = one_rule(metric="error_count", threshold=0, for_windows=2, resolve_windows=2)
    evaluator = AlertEvaluator([rule])
    errors = [1, 0, 1, 1, 1, 0, 1, 0, 0, 0]
    states = []
    for minute, n in enumerate(errors):
        for alert in evaluator.process([rollup(minute, count=10, errors=n)], now_ms=NOW_MS):
            states.append((minute, alert.state))
    assert states == [(3, "firing"), (8, "resolved")]


def test_revision_can_fire_but_never_refires_or_resolves() -> None:
    evaluator = AlertEvaluator([one_rule(metric="error_count", threshold=2)])
    assert evaluator.process([rollup(0, count=10, errors=1)], now_ms=NOW_MS) == []
    (alert,) = evaluator.process([rollup(0, count=12, errors=3)], now_ms=NOW_MS)  # late data makes it bad
    assert (alert.state, alert.value) == ("firing", 3.0)
    assert evaluator.process([rollup(0, count=13, errors=4)], now_ms=NOW_MS) == []
    assert evaluator.process([rollup(0, count=13, errors=0)], now_ms=NOW_MS) == []  # no resolve by revision
    assert evaluator.process([rollup(1, count=5, errors=0)], now_ms=NOW_MS)[0].state == "resolved"


def test_filters_group_by_and_globs() -> None:
    rule = one_rule(metric="cost_usd", threshold=1.0, filters={"model": "gpt-4*", "kind": "LLM"}, group_by=["model"])
    evaluator = AlertEvaluator([rule])
    alerts = evaluator.process(
        [
            rollup(0, model="gpt-4o", cost=0.7, service="a"),
            rollup(0, model="gpt-4o", cost=0.6, service="b"),  # same model, other service: summed
            rollup(0, model="gpt-4o-mini", cost=0.9),
            rollup(0, model="gpt-5", cost=50.0),  # not matched by the glob
            rollup(0, model="gpt-4.1", kind="EMBEDDING", cost=50.0),  # wrong kind
        ],
        now_ms=NOW_MS,
    )
    (alert,) = alerts
    assert alert.value == pytest.approx(1.3)
    assert (alert.service, alert.labels["model"]) == ("*", "gpt-4o")
    assert alert.message == "cost of LLM spans (model gpt-4o) in all services is $1.30 (threshold $1.00) over 1m"


def test_min_count_withholds_a_verdict() -> None:
    evaluator = AlertEvaluator(default_rules())
    assert evaluator.process([rollup(0, latencies=[60_000.0, 60_000.0])], now_ms=NOW_MS) == []
    (alert,) = evaluator.process([rollup(1, latencies=[60_000.0] * 10)], now_ms=NOW_MS)
    assert alert.rule == "llm-latency-p95"


def test_error_rate_over_five_one_minute_windows() -> None:
    evaluator = AlertEvaluator(default_rules())
    # (count, errors) per minute; the rule looks at the sum of the last five
    minutes = [(100, 2), (100, 3), (100, 4), (100, 6), (100, 10), (100, 5), (100, 0), (100, 0), (100, 0)]
    fired: list[tuple[int, Alert]] = []
    for minute, (count, errors) in enumerate(minutes):
        for alert in evaluator.process([rollup(minute, count=count, errors=errors)], now_ms=NOW_MS):
            if alert.rule == "error-rate":
                fired.append((minute, alert))
    (m1, firing), (m2, resolved) = fired
    # minute 4: (2+3+4+6+10)/500 = 5 % (not > 5 %); minute 5: (3+4+6+10+5)/500 = 5.6 %
    assert (m1, firing.state, firing.value, firing.window_start, firing.window_seconds) == (
        5,
        "firing",
        28 / 500,
        W0 + 60,
        300,
    )
    assert firing.severity == "critical"
    assert firing.message == "error rate of spans in support-bot is 5.6% (threshold 5.0%) over 5m"
    # minute 6: (4+6+10+5+0)/500 = 5 %, no longer above
    assert (m2, resolved.state, resolved.value) == (6, "resolved", 25 / 500)
    assert resolved.message == "resolved: error rate of spans in support-bot is 5.0% (threshold 5.0%) over 5m"


def test_cost_per_hour_slides_over_sixty_minutes() -> None:
    evaluator = AlertEvaluator(default_rules())
    fired = []
    for minute in range(70):
        cost = 1.0 if minute < 55 else 0.0
        for alert in evaluator.process([rollup(minute, count=1, cost=cost)], now_ms=NOW_MS):
            fired.append((minute, alert))
    (m1, firing), (m2, resolved) = fired
    assert (m1, firing.rule, firing.value, firing.window_start) == (50, "cost-per-hour", 51.0, W0 - 9 * 60)
    assert firing.message == "cost per hour of spans in support-bot is $51.00/h (threshold $50.00/h) over 1h"
    # the hour ending at minute 64 holds minutes 5..54 (50 $): back to the threshold, not above
    assert (m2, resolved.state, resolved.value) == (64, "resolved", 50.0)


def test_rate_limits_and_a_quiet_service_resolves() -> None:
    evaluator = AlertEvaluator(default_rules())
    (alert,) = evaluator.process([rollup(0, count=30, rate_limits=11)], now_ms=NOW_MS)
    assert alert.message == "rate-limit count of spans in support-bot is 11 (threshold 10) over 1m"
    # the service goes quiet; another one keeps the clock going
    (resolved,) = evaluator.process([rollup(1, service="other")], now_ms=NOW_MS)
    assert (resolved.rule, resolved.state, resolved.value) == ("rate-limits", "resolved", 0.0)


def test_less_than_rule_fires_when_traffic_stops() -> None:
    rule = one_rule(
        name="traffic-stopped", threshold=1, comparison="<", min_count=0, filters={"service": "support-bot"}
    )
    evaluator = AlertEvaluator([rule])
    assert evaluator.process([rollup(0, count=5)], now_ms=NOW_MS) == []
    (alert,) = evaluator.process([rollup(1, service="other")], now_ms=NOW_MS)
    assert (alert.state, alert.service, alert.value) == ("firing", "support-bot", 0.0)
    assert alert.message == "span count of spans in support-bot is 0 (threshold: below 1) over 1m"
    assert evaluator.process([rollup(2, count=3)], now_ms=NOW_MS)[0].state == "resolved"


def test_old_windows_do_not_evaluate_but_feed_sliding_windows() -> None:
    rule = one_rule(metric="error_count", window_seconds=120, threshold=4)
    evaluator = AlertEvaluator([rule])
    assert evaluator.process([rollup(1, count=10, errors=3)], now_ms=NOW_MS) == []
    assert evaluator.process([rollup(0, count=10, errors=9)], now_ms=NOW_MS) == []  # older: stored only
    (alert,) = evaluator.process([rollup(2, count=10, errors=2)], now_ms=NOW_MS)
    assert (alert.value, alert.window_start) == (5.0, W0 + 60)  # minutes 1 and 2


def test_windows_from_the_future_are_ignored() -> None:
    evaluator = AlertEvaluator([one_rule(metric="error_count", threshold=0)])
    far_ahead = rollup(0, count=5, errors=5, window_seconds=60)
    assert evaluator.process([far_ahead], now_ms=(W0 - 3600) * 1000) == []
    assert evaluator.stats.future == 1
    (alert,) = evaluator.process([rollup(0, count=5, errors=1)], now_ms=NOW_MS)  # not blocked by it
    assert alert.value == 1.0


def test_snapshot_round_trip() -> None:
    rules = default_rules()
    evaluator = AlertEvaluator(rules)
    history = [rollup(m, count=100, errors=e, cost=1.0) for m, e in enumerate([0, 0, 10, 10, 10, 10])]
    fired = evaluator.process(history, now_ms=NOW_MS)
    assert [a.rule for a in fired] == ["error-rate"]
    restored = AlertEvaluator.from_state(rules, evaluator.to_state())
    assert restored.firing() == evaluator.firing() == [("error-rate", ("support-bot",))]
    assert restored.to_state() == evaluator.to_state()
    later = [rollup(6, count=100, errors=10), rollup(7, count=100, errors=0)]
    for minute in later:
        assert restored.process([minute], now_ms=NOW_MS) == evaluator.process([minute], now_ms=NOW_MS)
    tail = [rollup(m, count=100, errors=0, cost=1.0) for m in range(8, 12)]
    out = restored.process(tail, now_ms=NOW_MS)
    assert out == evaluator.process(tail, now_ms=NOW_MS)
    assert [(a.rule, a.state) for a in out] == [("error-rate", "resolved")]
    # a changed rule starts afresh
    stricter = one_rule(name="error-rate", metric="error_rate", threshold=0.5)
    changed = [stricter if r.name == "error-rate" else r for r in rules]
    assert AlertEvaluator.from_state(changed, evaluator.to_state()).firing() == []


# --- webhook --------------------------------------------------------------------------------------------


def sample_alert(rule: str = "llm-latency-p95") -> Alert:
    return Alert(
        fired_at=NOW_MS,
        rule=rule,
        service="support-bot",
        severity="warning",
        value=7312.0,
        threshold=5000.0,
        state="firing",
        message="p95 latency of LLM spans in support-bot is 7,312 ms (threshold 5,000 ms) over 1m",
        window_start=W0,
        window_seconds=60,
        labels={},
    )


@pytest.fixture
async def flaky_server():
    """A real HTTP server on a free port: /flaky fails twice with 500, then accepts; /gone is 404."""
    received: list[dict] = []
    calls = {"flaky": 0, "gone": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["flaky"] += 1
        if calls["flaky"] <= 2:
            return web.Response(status=500, text="try later")
        received.append(await request.json())
        return web.Response(text="ok")

    async def gone(request: web.Request) -> web.Response:
        calls["gone"] += 1
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post("/flaky", flaky)
    app.router.add_post("/gone", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received, calls
    finally:
        await runner.cleanup()


async def test_webhook_retries_with_backoff_then_delivers(flaky_server) -> None:
    base, received, calls = flaky_server
    notifier = WebhookNotifier(f"{base}/flaky", timeout=5, max_retries=3, backoff_base=0.01)
    alert = sample_alert()
    assert notifier.notify(alert) is True  # returns at once: nothing has been sent yet
    assert calls["flaky"] == 0
    await notifier.close()
    assert calls["flaky"] == 3
    assert received == [slack_payload(alert)]
    assert received[0]["text"] == f"[WARNING] llm-latency-p95: {alert.message}"
    assert received[0]["attachments"][0]["ts"] == NOW_MS // 1000
    assert (notifier.stats.sent, notifier.stats.retries, notifier.stats.failed) == (1, 2, 0)
    assert notifier.notify(alert) is False and notifier.stats.dropped == 1  # closed


async def test_webhook_bounded_queue_and_permanent_errors(flaky_server) -> None:
    base, _, calls = flaky_server
    notifier = WebhookNotifier(f"{base}/gone", max_retries=5, queue_size=2, backoff_base=0.01)
    results = [notifier.notify(sample_alert(f"r{i}")) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert notifier.stats.dropped == 3
    await notifier.close()
    assert calls["gone"] == 2  # a 404 is not retried
    assert (notifier.stats.sent, notifier.stats.failed, notifier.stats.retries) == (0, 2, 0)


async def test_webhook_gives_up_after_max_retries() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: connection refused every time
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/", timeout=1, max_retries=2, backoff_base=0.01)
    notifier.notify(sample_alert())
    await asyncio.wait_for(notifier.close(), 10)
    assert (notifier.stats.sent, notifier.stats.failed, notifier.stats.retries) == (0, 1, 2)
