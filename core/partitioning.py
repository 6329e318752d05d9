"""Which partition of `tracehouse.spans` a trace lives in.

Every span of a trace must reach the same partition so one worker assembles the whole trace. The choice
is Kafka's own default partitioner (murmur2 of the key, here the trace id), so a message produced by any
Kafka client keyed by trace id lands where tracehouse's batched producers put that trace.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(trace_id: str, partitions: int) -> int:
    """Kafka's default partition for key `trace_id` among `partitions`."""
    return (murmur2(trace_id.encode()) & 0x7FFFFFFF) % partitions
