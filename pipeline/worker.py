"""`tracehouse worker`: run the Faust app in this process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

import faust

from tracehouse.core import topics
from tracehouse.core.config import Settings
from tracehouse.core.health import HealthServer, Readiness
from tracehouse.core.kafka_security import kafka_client_options
from tracehouse.core.topic_admin import wait_for_topics
from tracehouse.pipeline.app import create_app

log = logging.getLogger("tracehouse.worker")

# Every decoded span allocates containers; with the default thresholds the collector's young generation
# ran constantly and took ~40 % of the worker's CPU (tests/benchmarks/pipeline_throughput.py, whose
# ceiling runs with these too). Open traces and windows hold no reference cycles worth collecting often.
GC_THRESHOLDS = (100_000, 50, 100)


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


class TracehouseWorker(faust.Worker):
    """Faust's worker, plus what a supervisor needs: it waits for the pipeline's topics before the app
    (its consumer and agents) starts, and serves `/health/live` and `/health/ready` on its loop.

    Why wait: Faust's partition assignor ignores a topic that is missing when the worker joins its group
    ("Ignoring missing topic") and never consumes it later, so a worker started before
    `tracehouse migrate` would sit idle until restarted. The wait is one metadata request a second.
    """

    def __init__(self, app: faust.App, settings: Settings, *, verbose: bool = False, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.settings = settings
        self.verbose = verbose
        self.waiting_for_topics = True
        self.assigned = False  # partitions assigned since the last revocation
        self.health = HealthServer("worker", self.readiness, settings.worker_health_host, settings.worker_health_port)

        @app.on_partitions_assigned.connect
        async def on_assigned(sender: Any, assigned: Any, **kw: Any) -> None:
            self.assigned = True

        @app.on_partitions_revoked.connect
        async def on_revoked(sender: Any, revoked: Any, **kw: Any) -> None:
            self.assigned = False

    async def on_first_start(self) -> None:
        await super().on_first_start()  # logging, signal handlers
        _own_log_handler(self.verbose)
        await self.health.start()
        found = await wait_for_topics(
            self.settings.kafka_bootstrap,
            topics.ALL,
            who="worker",
            security=kafka_client_options(),
            stop=self._stopped,
        )
        if found:
            self.waiting_for_topics = False

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.health.stop()

    def _assigned_partitions(self) -> int:
        consumer = self.app._consumer  # not the property: that would create a consumer while waiting
        try:
            return len(consumer.assignment()) if consumer is not None else 0
        except Exception:  # the consumer's thread not started yet
            return 0

    def readiness(self) -> Readiness:
        """Ready once the worker consumes the partitions assigned to it, with its state restored."""
        app = self.app
        details: dict[str, Any] = {"partitions": self._assigned_partitions()}
        processor = getattr(app, "tracehouse_processor", None)
        if processor is not None and processor.sampling is not None:  # tail sampling on: kept per rule
            details["sampling"] = processor.sampling_stats.fractions()
        if self.should_stop:
            return False, "stopping", details
        if self.waiting_for_topics:
            return False, "waiting for Kafka topics", details
        if not self.assigned or app.rebalancing:
            return False, "waiting for partition assignment", details
        if not app.tables.recovery.completed.is_set():
            return False, "restoring state", details
        return True, "", details


def run_worker(settings: Settings, *, verbose: bool = False) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    gc.set_threshold(*GC_THRESHOLDS)
    app = create_app(settings)

    @app.on_configured.connect
    def configured(app: faust.App, conf: object, **kwargs: object) -> None:
        _own_log_handler(verbose)

    @app.task
    async def announce() -> None:
        _own_log_handler(verbose)
        log.info("tracehouse worker started (kafka %s)", settings.kafka_bootstrap)

    _own_log_handler(verbose)
    worker = TracehouseWorker(
        app, settings, verbose=verbose, loglevel="debug" if verbose else "warn", quiet=True, redirect_stdouts=False
    )
    if not worker.stdout.isatty():  # Faust's spinner writes cursor codes (ESC[?25l) even into a log file
        worker.spinner = None
    _own_log_handler(verbose)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
