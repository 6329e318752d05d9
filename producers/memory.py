"""A transport that keeps spans in a list: the `transport=` seam for tests and notebooks.

It is the same interface the Kafka `SpanTransport` offers (`submit`, `flush`, `shutdown`, `stats`), so
code under test runs the real SDK end to end up to the point where bytes would leave the process.
"""

from __future__ import annotations

import threading

from tracehouse.core.schema import Span
from tracehouse.core.scores import Score


class InMemoryTransport:
    """Collects submitted spans in `.spans` and scores (the SDK's `score()`) in `.scores` (thread-safe);
    `max_spans` bounds the spans like a queue would."""

    def __init__(self, max_spans: int | None = None) -> None:
        self.spans: list[Span] = []
        self.scores: list[Score] = []
        self.max_spans = max_spans
        self.dropped = 0
        self._lock = threading.Lock()

    def submit(self, span: Span) -> bool:
        with self._lock:
            if self.max_spans is not None and len(self.spans) >= self.max_spans:
                self.dropped += 1
                return False
            self.spans.append(span)
            return True

    def submit_score(self, score: Score) -> bool:
        with self._lock:
            self.scores.append(score)
        return True

    def stats(self) -> dict[str, int]:
        return {"enqueued": len(self.spans), "sent": len(self.spans), "dropped": self.dropped, "failed": 0}

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        return None

    def clear(self) -> list[Span]:
        """Remove and return the spans collected so far."""
        with self._lock:
            spans, self.spans = self.spans, []
        return spans

    def by_name(self, name: str) -> Span:
        """The one collected span called `name` (raises if there is not exactly one)."""
        found = [s for s in self.spans if s.name == name]
        if len(found) != 1:
            raise LookupError(f"{len(found)} spans named {name!r}")
        return found[0]
