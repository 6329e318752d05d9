"""sinks/metrics.py: the sink's samples in the Prometheus text format, written by prometheus-client, on a
real `/metrics` endpoint."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tracehouse.infra.ports import free_port
from tracehouse.sinks.metrics import MetricsServer, Sample, render

SAMPLES: list[Sample] = [
    ("tracehouse_sink_rows_total", {}, 1200),
    ("tracehouse_sink_rows_per_second", {}, 35.5),
    ("tracehouse_sink_lag_messages", {"topic": "tracehouse.spans", "partition": "0"}, 3),
    ("tracehouse_sink_lag_messages", {"topic": "tracehouse.spans", "partition": "1"}, 0),
]
HELP = {"tracehouse_sink_rows_total": "rows written to ClickHouse"}


def test_samples_render_as_counters_and_gauges_with_sorted_labels() -> None:
    text = render(SAMPLES, HELP)
    assert "# HELP tracehouse_sink_rows_total rows written to ClickHouse" in text
    assert "# TYPE tracehouse_sink_rows_total counter" in text
    assert "# TYPE tracehouse_sink_rows_per_second gauge" in text
    assert 'tracehouse_sink_lag_messages{partition="0",topic="tracehouse.spans"} 3.0' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tracehouse_sink_rows"].type == "counter"
    assert [s.value for s in families["tracehouse_sink_rows"].samples] == [1200.0]
    assert [s.labels["partition"] for s in families["tracehouse_sink_lag_messages"].samples] == ["0", "1"]


def test_the_endpoint_serves_the_current_samples() -> None:
    port = free_port()
    current = list(SAMPLES)

    async def scrape() -> tuple[str, str]:
        server = MetricsServer(lambda: current, HELP, "127.0.0.1", port)
        await server.start()
        try:

            def get() -> tuple[str, str]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return response.headers["Content-Type"], response.read().decode()

            first = await asyncio.to_thread(get)
            current[0] = ("tracehouse_sink_rows_total", {}, 1300)
            content_type, body = await asyncio.to_thread(get)
            assert "tracehouse_sink_rows_total 1200.0" in first[1]
            return content_type, body
        finally:
            await server.stop()

    content_type, body = asyncio.run(scrape())
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "tracehouse_sink_rows_total 1300.0" in body
