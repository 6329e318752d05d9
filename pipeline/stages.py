"""Builds the rollup and alert stages the Faust app plugs into its processors (temporary: no rollups)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracehouse.core.schema import Span


class _NoWindows:
    def add(self, span: Span, cost: float) -> None:
        pass

    def due(self, now_s: float) -> list[Any]:
        return []

    def to_state(self) -> bytes:
        return b""


class _NoMerger:
    async def on_event(self, stream: Any, event: Any, table: Any) -> None:
        await stream.ack(event)

    async def on_tick(self) -> None:
        pass

    def revoke(self) -> None:
        pass


def windows_factory() -> Callable[[bytes | None], Any]:
    return lambda state: _NoWindows()


def build_merger(*, rollups_out: Any, alerts_out: Any) -> Any:
    return _NoMerger()
