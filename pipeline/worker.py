"""`tracehouse worker`: run the Faust app in this process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import gc
import logging
import sys

import faust

from tracehouse.core.config import Settings
from tracehouse.pipeline.app import create_app

log = logging.getLogger("tracehouse.worker")


def _own_log_handler(verbose: bool) -> None:
    """Faust owns the root logger (at WARNING) and reconfigures it at start; tracehouse's progress lines
    get a handler of their own so operators see them."""
    ours = logging.getLogger("tracehouse")
    if not any(getattr(h, "_tracehouse", False) for h in ours.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._tracehouse = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False
    ours.disabled = False
    log.disabled = False


def run_worker(settings: Settings, *, verbose: bool = False) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Every decoded span allocates containers; with the default thresholds the collector's young
    # generation runs constantly and took ~40 % of the worker's CPU (tests/benchmarks/pipeline_throughput.py).
    # Open traces and windows hold no reference cycles worth collecting often.
    gc.set_threshold(100_000, 50, 100)
    app = create_app(settings)

    @app.on_configured.connect
    def configured(app: faust.App, conf: object, **kwargs: object) -> None:
        _own_log_handler(verbose)

    @app.task
    async def announce() -> None:
        _own_log_handler(verbose)
        log.info("tracehouse worker started (kafka %s)", settings.kafka_bootstrap)

    _own_log_handler(verbose)
    worker = faust.Worker(app, loglevel="debug" if verbose else "warn", quiet=True, redirect_stdouts=False)
    _own_log_handler(verbose)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
