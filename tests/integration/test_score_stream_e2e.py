"""Scores in the stream through the real worker, Kafka and ClickHouse: scores sent on `tracehouse.scores`
land in `score_rollups` per score name and the service and model of their trace (a retried score_id
counted once, a score of an unknown trace under OTHER), and two score rules (an average below a
threshold, a count of one value above one) fire once and resolve once."""

from __future__ import annotations

import asyncio
import math
import random
import time

from kafka_groups import start_groups_at_end
from test_rollups_alerts_e2e import llm_span
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.rollups import OTHER
from tracehouse.core.scores import Score
from tracehouse.infra.processes import ManagedProcess
from tracehouse.infra.stack import LocalStack
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import sync_client
from tracehouse.sinks.migrate import migrate

WINDOW = 10
MODEL = "gpt-4o-mini"  # llm_span's


def test_score_windows_and_score_alerts_fire_and_resolve(settings: Settings) -> None:
    service = f"svc-{settings.worker_group}"
    rules = settings.data_dir / "alerts.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(
        f"""
[[rules]]
name = "feedback-low-test"
metric = "score_avg"
score = "user_feedback"
window_seconds = {WINDOW}
comparison = "<"
threshold = 0.6
min_count = 3
filters = {{ service = "{service}" }}

[[rules]]
name = "hallucinations-test"
metric = "score_count"
score = "hallucination"
value = 1
window_seconds = {WINDOW}
comparison = ">"
threshold = 2
severity = "critical"
filters = {{ service = "{service}" }}
"""
    )
    asyncio.run(migrate(settings.clickhouse))
    start_groups_at_end(settings)  # see only what this test sends
    env = {**LocalStack(settings).child_env(), "TRACEHOUSE_ALERT_RULES": str(rules)}
    logs = settings.data_dir / "logs"
    worker = ManagedProcess("worker", ["worker"], logs, env).start()
    sink = ManagedProcess("sink", ["sink", "--flush-interval", "0.2"], logs, env).start()
    client = sync_client(settings.clickhouse)
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    rng = random.Random(15)
    try:
        for proc in (worker, sink):
            assert proc.wait_for_log("started", timeout=60), proc.log_tail()
        time.sleep(3)  # partitions assigned

        # The traces first: the worker learns their service and model from their spans.
        spans = [llm_span(rng, service, time.time_ns() - 10**6, 200.0, False) for _ in range(8)]
        traces = [s.trace_id for s in spans]
        transport.submit_many(spans)
        assert transport.flush(10)

        def traces_stored() -> int:
            query = "SELECT count() FROM traces FINAL WHERE service = {s:String}"
            return int(client.query(query, parameters={"s": service}).result_rows[0][0])

        assert wait_until(lambda: traces_stored() == len(traces), timeout=60), worker.log_tail() + sink.log_tail()

        def send(scores: list[Score]) -> None:
            for s in scores:
                assert transport.submit_score(s)
            assert transport.flush(10)

        # Window 1: bad feedback (average 1/3), three hallucinations, a retry, a score of an unknown trace.
        while not 1.5 < time.time() % WINDOW < 4:
            time.sleep(0.05)
        window1 = int(time.time()) // WINDOW * WINDOW
        feedback = [
            Score(trace_id=t, name="user_feedback", value=v, source="human")
            for t, v in zip(traces, [0, 0, 1, 0, 1, 0], strict=False)
        ]
        hallucinations = [
            Score(trace_id=t, name="hallucination", value=v, source="eval")
            for t, v in zip(traces, [1, 1, 1, 0, 0], strict=False)
        ]
        retry = Score(trace_id=traces[0], name="user_feedback", value=0, score_id=feedback[0].score_id)
        unknown = Score(trace_id=f"{rng.getrandbits(128):032x}", name="user_feedback", value=1)
        send([*feedback, *hallucinations, retry, unknown])

        # Windows 2 and 3: good feedback, no hallucination: both alerts resolve.
        while int(time.time()) // WINDOW * WINDOW == window1:
            time.sleep(0.1)
        for _ in range(2):
            time.sleep(1)
            send([Score(trace_id=t, name="user_feedback", value=1) for t in traces[:3]])
            time.sleep(WINDOW - 1)

        def rows() -> dict[tuple[str, str, str], tuple]:
            result = client.query(
                "SELECT name, service, model, count, value_count, value_avg, value_counts FROM score_rollups FINAL"
                " WHERE window_seconds = {w:UInt32} AND window_start = {t:UInt32}",
                parameters={"w": WINDOW, "t": window1},
            ).result_rows
            return {(r[0], r[1], r[2]): r[3:] for r in result}

        wanted = {("user_feedback", service, MODEL), ("hallucination", service, MODEL)}
        got = wait_until(lambda: wanted <= set(rows()) and rows(), timeout=30)
        assert got, rows()
        count, value_count, avg, value_counts = got[("user_feedback", service, MODEL)]
        assert (count, value_count) == (6, 6)  # the retry of feedback[0] is not counted again
        assert math.isclose(avg, 2 / 6)
        assert value_counts == {"0.0": 4, "1.0": 2}
        count, _, avg, value_counts = got[("hallucination", service, MODEL)]
        assert count == 5 and value_counts == {"1.0": 3, "0.0": 2} and math.isclose(avg, 0.6)
        assert got[("user_feedback", OTHER, OTHER)][0] == 1  # its trace is not known to the worker

        def alerts(rule: str) -> list[tuple]:
            return client.query(
                "SELECT state, value, toUnixTimestamp(window_start), labels FROM alerts FINAL"
                " WHERE rule = {r:String} AND service = {s:String} ORDER BY fired_at",
                parameters={"r": rule, "s": service},
            ).result_rows

        expected = (
            ("feedback-low-test", "score_avg", "user_feedback", 2 / 6),
            ("hallucinations-test", "score_count", "hallucination", 3.0),
        )
        for rule, metric, score_name, value in expected:
            fired = wait_until(lambda rule=rule: len(alerts(rule)) >= 2 and alerts(rule), timeout=30)
            assert fired, alerts(rule)
            assert [state for state, *_ in fired] == ["firing", "resolved"], fired  # once each: no storm
            _, got_value, window, labels = fired[0]
            assert window == window1 and math.isclose(got_value, value), fired[0]
            assert (labels["metric"], labels["score"]) == (metric, score_name)
    finally:
        transport.shutdown()
        client.close()
        sink.stop()
        worker.stop()
