"""Liveness and readiness over HTTP for the worker and the sink, for a supervisor (Kubernetes probes,
compose healthchecks).

- `GET /health/live`: 200 while the process's event loop turns (it answers at all) and it has not failed.
  A blocked loop cannot answer, so the probe times out: that is the signal to restart.
- `GET /health/ready`: 200 once the process consumes the partitions assigned to it; 503 while it waits
  for its topics, for ClickHouse, for a group rebalance, or while it stops. The JSON says which.

The server runs on the process's own event loop (aiohttp, imported when started: the pipeline and sinks
extras carry it). A port already taken is logged and the process runs on without endpoints, so a second
worker on a developer's machine still works; in a pod nothing else holds the port.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tracehouse.health")

Readiness = tuple[bool, str, dict[str, Any]]  # ready, reason when not, details


class HealthServer:
    """Serves `/health/live` and `/health/ready` from the process's own notion of readiness."""

    def __init__(self, who: str, readiness: Callable[[], Readiness], host: str, port: int) -> None:
        self.who = who
        self.readiness = readiness
        self.host = host
        self.port = port
        self.failed: str | None = None  # set when the process gave up but still runs: liveness turns 503
        self._started = time.monotonic()
        self._runner: Any = None

    async def start(self) -> bool:
        """Listen; False (with a warning) when the port is 0 or cannot be bound."""
        if not self.port:
            return False
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            log.warning("%s: health endpoints off: cannot listen on %s:%d (%s)", self.who, self.host, self.port, exc)
            return False
        self._runner = runner
        log.info("%s health on http://%s:%d/health/live and /health/ready", self.who, self.host, self.port)
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _response(self, status: int, body: dict[str, Any]) -> Any:
        from aiohttp import web

        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    async def _live(self, request: Any) -> Any:
        uptime = round(time.monotonic() - self._started, 1)
        body = {"process": self.who, "live": self.failed is None, "uptime_s": uptime}
        if self.failed is not None:
            body["reason"] = self.failed
            return self._response(503, body)
        return self._response(200, body)

    async def _ready(self, request: Any) -> Any:
        ready, reason, details = self.readiness()
        body: dict[str, Any] = {"process": self.who, "ready": ready, **details}
        if not ready:
            body["reason"] = reason
        return self._response(200 if ready else 503, body)
