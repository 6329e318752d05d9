"""`tracehouse worker`: run the Faust app in this process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys

import faust

from tracehouse.core.config import Settings
from tracehouse.pipeline.app import create_app

log = logging.getLogger("tracehouse.worker")


def run_worker(settings: Settings, *, verbose: bool = False) -> int:
    app = create_app(settings)

    @app.task
    async def announce() -> None:
        # Printed, not logged: Faust owns the logging setup, and `up`/tests wait for this line.
        print(f"tracehouse worker started (kafka {settings.kafka_bootstrap})", file=sys.stderr, flush=True)

    worker = faust.Worker(app, loglevel="debug" if verbose else "warn", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
