"""The web explorer served for real in tests: on a free port, from its own thread and event loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tracehouse.core.config import Settings
from tracehouse.web.app import LIMITS, Limits, serve


class ServerThread:
    """The real application on a free port, served from its own thread and event loop (so sync tests and
    Playwright's sync API can talk to it)."""

    def __init__(
        self,
        settings: Settings,
        *,
        limits: Limits = LIMITS,
        app: Callable[[Settings, Limits], web.Application] | None = None,
    ) -> None:
        """`app`: builds the application (create_app plus test routes) inside the server's own loop."""
        self.settings = settings
        self.limits = limits
        self._make_app = app
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tracehouse-web-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def started(port: int) -> None:
                self.port = port
                self._ready.set()

            app = self._make_app(self.settings, self.limits) if self._make_app else None
            await serve(self.settings, "127.0.0.1", 0, self._stop, started, limits=self.limits, app=app)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error:
            raise RuntimeError(f"the web server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


def get(
    base: str, path: str, method: str = "GET", *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON or text, headers) of one request."""
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, answer, got = exc.code, exc.read(), dict(exc.headers)
    text = answer.decode()
    if got.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(text), got
    return status, text, got


def run_cli(settings: Settings, database: str, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """`tracehouse ARGS` as users run it, reading the same database the server reads."""
    env = {**os.environ, "TRACEHOUSE_CLICKHOUSE_DATABASE": database, "COLUMNS": str(columns)}
    command = [sys.executable, "-m", "tracehouse.cli.main", *args, "--clickhouse", settings.clickhouse_url]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
