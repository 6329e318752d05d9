"""Scores to `tracehouse.scores` with an answer once Kafka holds them: what the receiver's
`POST /v1/scores` and the web explorer's `POST /api/traces/{id}/scores` share.

The sender is the receiver's own `AckedSpanSender` (group commit, retries, splitting, bounded pending),
given the scores topic and `ScoreMessageEncoder`: scores go to the partition of their trace, as spans do.
`store_scores` is the one rule for what a caller answers: None once every score is acknowledged, else
the refusal (503 and why: Kafka away, too much pending, no acknowledgement within the bound).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from tracehouse.core import topics
from tracehouse.core.scores import Score

from .acked_sender import AckedSpanSender
from .score_messages import ScoreMessageEncoder

__all__ = ["Refusal", "scores_sender", "store_scores"]


class Refusal(NamedTuple):
    """Why scores were not stored: an HTTP status (503: retry later) and a message for the client."""

    status: int
    message: str


def scores_sender(
    bootstrap: str,
    *,
    client_id: str = "tracehouse-scores",
    max_pending: int = 100_000,
    producer_options: dict[str, object] | None = None,
) -> AckedSpanSender:
    """An acknowledged sender of scores to `tracehouse.scores` (start it on the serving loop)."""
    return AckedSpanSender(
        bootstrap,
        topic=topics.SCORES,
        encoder=ScoreMessageEncoder(),
        max_pending=max_pending,
        client_id=client_id,
        producer_options=producer_options,
    )


async def store_scores(sender: AckedSpanSender, scores: list[Score], ack_timeout_s: float) -> Refusal | None:
    """Hand `scores` to `sender` and wait up to `ack_timeout_s` for Kafka; None when all are held."""
    if sender.closing:
        return Refusal(503, "the server is shutting down; retry later")
    if not sender.connected:
        return Refusal(
            503, f"Kafka is not reachable or the topic {topics.SCORES} does not exist yet (run `tracehouse migrate`)"
        )
    if sender.pending + len(scores) > sender.max_pending:
        return Refusal(503, "too many scores await Kafka's acknowledgement; retry later")
    future = sender.submit(scores)  # type: ignore[arg-type]
    try:
        outcome = await asyncio.wait_for(asyncio.shield(future), ack_timeout_s)
    except asyncio.TimeoutError:
        return Refusal(
            503,
            f"Kafka has not acknowledged the scores within {ack_timeout_s:g}s; retry with the same score_id "
            "(a score sent twice is stored once)",
        )
    if not outcome.ok:
        return Refusal(503, f"scores not stored: {outcome.error}; retry later")
    if outcome.refused:
        return Refusal(503, f"{outcome.refused} scores could not be encoded within the Kafka message limit")
    return None
