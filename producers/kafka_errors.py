"""How the span senders read a Kafka error, in one place for the SDK's `SpanTransport` and the
receiver's `AckedSpanSender` (the classes follow aiokafka's own sender).

- retriable: the broker is away, not the leader, or slow; send again after a backoff.
- `MessageSizeTooLargeError`: the message must be split (handled by the senders with `span_messages`).
- a broken sequence: the idempotent producer's sequence numbers or id are refused, typically after the
  broker refused one of its batches as too large; only a new producer can send to that partition again.
- anything else: not worth retrying.
"""

from __future__ import annotations

from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

__all__ = ["BROKEN_SEQUENCE", "retriable"]

BROKEN_SEQUENCE = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)


def retriable(exc: BaseException) -> bool:
    """True when sending again later may succeed with the same producer."""
    return isinstance(exc, (KafkaTimeoutError, KafkaConnectionError, OSError)) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
    )
