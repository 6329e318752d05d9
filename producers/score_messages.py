"""Scores into Kafka messages for `tracehouse.scores`: the same rule as spans (`span_messages`), so the
same senders carry them (`AckedSpanSender` for the receiver and the web explorer, `SpanTransport` for the
SDK): grouped by the partition of their trace id (the partition that trace's spans use: the topic is
co-partitioned with `tracehouse.spans`), many per message, each message under the size limit.

A score is small and bounded (core/scores.py), so it is never shrunk: one that cannot be encoded within
the limit even alone is dropped and handed back to the caller, who counts it.
"""

from __future__ import annotations

import logging

from tracehouse.core.partitioning import partition_for
from tracehouse.core.scores import Score, encode_score_batch

from .span_limits import MAX_MESSAGE_BYTES
from .span_messages import SpanMessage

__all__ = ["ScoreMessageEncoder"]

log = logging.getLogger("tracehouse.producers")


class ScoreMessageEncoder:
    """Encodes scores into messages (`SpanMessage`s whose records are scores); the interface of
    `SpanMessageEncoder`."""

    def __init__(self, batch_scores: int = 500, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.batch_scores = batch_scores
        self.max_message_bytes = max_message_bytes

    def messages(self, scores: list[Score], partitions: int, dropped: list[Score]) -> list[SpanMessage]:
        by_partition: dict[int, list[Score]] = {}
        for score in scores:
            by_partition.setdefault(partition_for(score.trace_id, partitions), []).append(score)
        out: list[SpanMessage] = []
        step = self.batch_scores
        for p, group in by_partition.items():
            for i in range(0, len(group), step):
                self._encode_within_limit(p, group[i : i + step], self.max_message_bytes, out, dropped)
        return out

    def split_too_large(self, message: SpanMessage, dropped: list[Score]) -> list[SpanMessage]:
        """The broker refused `message` as too large: halve it; a lone score is dropped."""
        partition, value, scores = message
        if len(scores) == 1:
            dropped.extend(scores)
            log.error("dropped score %s: the broker refuses even a message of %d bytes", scores[0].score_id, len(value))
            return []
        out: list[SpanMessage] = []
        half = len(scores) // 2
        for part in (scores[:half], scores[half:]):
            self._encode_within_limit(partition, part, len(value) - 1, out, dropped)
        return out

    def _encode_within_limit(
        self, partition: int, scores: list[Score], limit: int, out: list[SpanMessage], dropped: list[Score]
    ) -> None:
        try:
            value = encode_score_batch(scores)
        except Exception:  # an unencodable score (a client's odd object): find it by halving
            value = b""
        if value and len(value) <= limit:
            out.append(SpanMessage(partition, value, scores))  # type: ignore[arg-type]
            return
        if len(scores) == 1:
            dropped.extend(scores)
            log.error("dropped score %s: cannot encode it within %d bytes", scores[0].score_id, limit)
            return
        half = len(scores) // 2
        self._encode_within_limit(partition, scores[:half], limit, out, dropped)
        self._encode_within_limit(partition, scores[half:], limit, out, dropped)
