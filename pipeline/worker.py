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
        # Faust owns the root logger (at WARNING); tracehouse's own progress lines get a handler of their own.
        ours = logging.getLogger("tracehouse")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.DEBUG if verbose else logging.INFO)
        ours.propagate = False
        log.info("tracehouse worker started (kafka %s)", settings.kafka_bootstrap)

    worker = faust.Worker(app, loglevel="debug" if verbose else "warn", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
