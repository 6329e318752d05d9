"""What each Kafka compression codec costs the span messages, over the whole path, on issue 12's workload.

Run: `python tests/benchmarks/span_codecs.py [--requests 20] [--repeats 7]` (not a pytest test).

A span message is compressed once, by the receiver's producer (aiokafka's record batch builder), and
decompressed by every consumer of `tracehouse.spans`: the worker and the sink (and, unmeasured here, the
broker, which unpacks each batch once to validate it). So the figure that decides is compress + 2 x
decompress per span, next to the bytes each span takes on the broker (disk, replication, network).

The messages are the real ones: issue 12's OTLP bodies (200 spans, 1 AGENT + 3 children, ~1.5 KB of
prose-like text a span) go through the receiver's `ingest` and `SpanMessageEncoder`, exactly as the
acked sender makes them, 4 partitions. Two sizes of message: one request's spans (~50 spans a message)
and four requests grouped (~200 spans a message, what the sender makes under load). Each message is then
built into a record batch with aiokafka's own C builder and read back with its own C reader, for every
codec aiokafka has (its levels are fixed: zstd 3, lz4 9, gzip 9, snappy has none). CPU time
(`time.process_time`), median of `--repeats`, µs per span; the machine is shared, so the medians of
interleaved repeats are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from receiver_throughput import anchor_bodies

from tracehouse.producers.otlp.ingest import ingest
from tracehouse.producers.span_messages import SpanMessageEncoder

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
PARTITIONS = 4


def span_messages(bodies: list[bytes], requests_per_send: int) -> tuple[list[bytes], int]:
    """The Kafka message values the receiver's sender makes from these bodies, and how many spans they hold."""
    encoder = SpanMessageEncoder()
    values: list[bytes] = []
    spans_total = 0
    for start in range(0, len(bodies), requests_per_send):
        spans, encoded = [], {}
        for body in bodies[start : start + requests_per_send]:
            result = ingest(body, "application/x-protobuf")
            spans.extend(result.spans)
            encoded.update({id(span): data for span, data in zip(result.spans, result.encoded, strict=True)})
        values.extend(message.value for message in encoder.messages(spans, PARTITIONS, [], encoded))
        spans_total += len(spans)
    return values, spans_total


def build(values: list[bytes], codec: int) -> list[bytes]:
    """Each value as its own record batch (the producer's 16 KB batches hold one of these messages)."""
    out = []
    for value in values:
        builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 16_384)
        builder.append(0, 1_750_000_000_000, None, value, [])
        out.append(bytes(builder.build()))
    return out


def read(batches: list[bytes]) -> int:
    size = 0
    for data in batches:
        for record in DefaultRecordBatch(data):
            size += len(record.value)  # type: ignore[arg-type]
    return size


def measure(values: list[bytes], spans: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """codec -> (compress µs/span, decompress µs/span, bytes/span on the broker)."""
    raw = sum(len(v) for v in values)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in CODECS}
    sizes: dict[str, int] = {}
    for _ in range(repeats):
        for name, codec in CODECS.items():  # interleaved, so a busy moment hits every codec alike
            t0 = time.process_time()
            batches = build(values, codec)
            t1 = time.process_time()
            assert read(batches) == raw
            t2 = time.process_time()
            times[name][0].append((t1 - t0) / spans * 1e6)
            times[name][1].append((t2 - t1) / spans * 1e6)
            sizes[name] = sum(len(b) for b in batches)
    return {name: (statistics.median(c), statistics.median(d), sizes[name] / spans) for name, (c, d) in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="OTLP bodies of 200 spans")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    bodies = anchor_bodies(args.requests, 200, "protobuf")
    for per_send in (1, 4):
        values, spans = span_messages(bodies, per_send)
        raw = sum(len(v) for v in values) / spans
        print(
            f"{len(values)} messages of ~{spans // len(values)} spans ({per_send} request(s) per send),"
            f" {raw:,.0f} bytes per span uncompressed; µs CPU per span (medians of {args.repeats}):"
        )
        print(f"  {'codec':>6} {'compress':>9} {'decompress':>11} {'c + 2 x d':>10} {'bytes/span':>11} {'ratio':>6}")
        for name, (compress, decompress, size) in measure(values, spans, args.repeats).items():
            print(
                f"  {name:>6} {compress:9.2f} {decompress:11.2f} {compress + 2 * decompress:10.2f}"
                f" {size:11,.0f} {raw / size:6.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
