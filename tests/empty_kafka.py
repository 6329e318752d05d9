"""Helpers for tests of topic creation and start order: a Kafka that creates no topic by itself, the
`tracehouse migrate` command as a real process, and a GET on a health endpoint."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from typing import Any

from tracehouse.infra.kafka_broker import KafkaBroker


class BrokerWithoutAutoCreate(KafkaBroker):
    """Apache Kafka that never creates a topic because a client asked about it: only `migrate` can."""

    def server_properties(self) -> dict[str, str]:
        return {**super().server_properties(), "auto.create.topics.enable": "false"}


def run_migrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`tracehouse migrate ARGS` with `env` over this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "tracehouse.cli.main", "migrate", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET on 127.0.0.1; (0, {}) when nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except OSError:
        return 0, {}
    finally:
        connection.close()
