"""How the senders talk to Kafka, in one place for the SDK's `SpanTransport` and the receiver's
`AckedSpanSender`: the one producer configuration, and how a Kafka error is read (the classes follow
aiokafka's own sender).

The producer: acks=all and idempotent (its own retries after a lost acknowledgement never write a
message twice), no linger (the senders batch many spans per message themselves, and aiokafka's default
16 KB record batch then holds one of our messages, so a broker's "too large" speaks of that message
alone and splitting it is the right answer), requests up to twice the message limit, and zstd (level 3)
for the spans' messages: on 1.5 KB LLM spans, 500 to a message, it costs 1.8 µs of CPU per span to compress
and 0.75 to decompress, against 9.3 and 1.8 for lz4 (which aiokafka runs at level 9, with no setting to lower
it), and makes messages 15 times smaller instead of 7 (measured in one process on this 2-core machine).
Those spans repeat one prompt; on issue 12's workload (varied prose, 2.6 KB a mapped span) zstd costs ~13-14
µs per span to compress and ~3.5-4 to decompress (ratio 4.4-4.8), snappy ~7-8 and ~3 (ratio 2.7), none
~2.6 and ~0.3 (the record batch's copy and CRC): `tests/benchmarks/span_codecs.py` prints the table.

Errors:

- retriable: the broker is away, not the leader, or slow; send again after a backoff.
- `MessageSizeTooLargeError`: the message must be split (handled by the senders with `span_messages`).
- a broken sequence: the idempotent producer's sequence numbers or id are refused, typically after the
  broker refused one of its batches as too large; only a new producer can send to that partition again.
- anything else: not worth retrying.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
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

__all__ = ["BROKEN_SEQUENCE", "COMPRESSION", "new_producer", "retriable"]

COMPRESSION = "zstd"  # see the module docstring; every Kafka >= 2.1 (and noida-db) reads it

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


def new_producer(
    bootstrap: str,
    *,
    client_id: str,
    compression: str | None,
    max_message_bytes: int,
    request_timeout_s: float,
    options: dict[str, object],
) -> AIOKafkaProducer:
    """A producer configured as the module docstring says; `options` (security, overrides) come last."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        compression_type=compression,
        max_request_size=max(max_message_bytes * 2, 1_048_576),
        linger_ms=0,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=int(request_timeout_s * 1000),
        **options,  # type: ignore[arg-type]
    )
