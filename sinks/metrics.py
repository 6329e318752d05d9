"""The sink's numbers for operators: Prometheus text on `/metrics` (and the same in its log lines).

A Kafka-to-ClickHouse sink fails quietly when it falls behind; lag per partition, rows per second, batch
sizes, retries and dead letters are what tells an operator before users notice missing spans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("tracehouse.sink")

Sample = tuple[str, dict[str, str], float]  # name, labels, value


def render(samples: list[Sample], help_text: dict[str, str]) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, labels, value in samples:
        if name not in seen:
            seen.add(name)
            kind = "counter" if name.endswith("_total") else "gauge"
            lines.append(f"# HELP {name} {help_text.get(name, name)}")
            lines.append(f"# TYPE {name} {kind}")
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves `/metrics` from a callable that returns the current samples."""

    def __init__(self, collect: Callable[[], list[Sample]], help_text: dict[str, str], host: str, port: int):
        self.collect = collect
        self.help_text = help_text
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("sink metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = render(self.collect(), self.help_text)
        return web.Response(text=body, content_type="text/plain", charset="utf-8")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
