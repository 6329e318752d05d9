"""Cutting one table's batch into inserts that each touch at most `limit` partitions.

ClickHouse refuses an insert block whose rows fall in more than `max_partitions_per_insert_block`
partitions (default 100; error 252), and the embedded engine's streaming insert used to store nothing
and answer success instead. `spans` and `traces` are partitioned by day, so a backlog flushed by one
exporter (one span a day over 150 days) is enough. The common case is one or two days per batch: it stays
one insert and costs nothing here (the sink counts the batch's distinct partitions as it reads).

Exactly-once (sinks/sink.py) depends on the order of inserts within a batch: after a crash the sink
resumes each Kafka partition after the highest offset `ingest_offsets` holds, so an insert must never
store an offset while an earlier offset of the same Kafka partition, or another part of the same message,
is still to come. Hence:
- the batch is cut at message boundaries, in the order the messages were read (a prefix per Kafka
  partition at every step);
- a single message whose rows alone span more than `limit` partitions (rare: a whole backlog in one
  message) is cut into pieces by partition; every piece but its last is written with the offset before
  its own (`offset - 1`, already stored), so `ingest_offsets` claims the message only once its last piece
  is in. A crash between pieces then stores the earlier pieces a second time on restart (spans collapse
  them on merge, as for any duplicate), instead of losing the later ones. Offset 0 has no offset before
  it; its pieces keep 0 (the one case where a crash between pieces could skip the rest of the message).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Piece:
    """The chunks of one insert: encoded rows per message (or per message and partition)."""

    chunks: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)  # (Kafka partition, offset) per chunk
    keys: list[int] = field(default_factory=list)  # the table partition of each chunk's rows

    def add(self, chunk: bytes, count: int, origin: tuple[int, int], key: int) -> None:
        self.chunks.append(chunk)
        self.counts.append(count)
        self.origins.append(origin)
        self.keys.append(key)


def _rewrite_offset(chunk: bytes, offset: int) -> bytes:
    """JSONCompactEachRow span lines end with `,<ingest_offset>]`: write the offset before instead. (JSON
    escapes newlines inside strings, so `]\\n` is only ever a line's end.)"""
    if offset <= 0:
        return chunk
    return chunk.replace(b",%d]\n" % offset, b",%d]\n" % (offset - 1))


def _messages(piece: Piece) -> list[Piece]:
    """The chunks grouped by message (a message's chunks are consecutive: one per partition it touches)."""
    out: list[Piece] = []
    for chunk, count, origin, key in zip(piece.chunks, piece.counts, piece.origins, piece.keys, strict=True):
        if not out or out[-1].origins[-1] != origin:
            out.append(Piece())
        out[-1].add(chunk, count, origin, key)
    return out


def split_by_partition(batch: Piece, limit: int, offsets_in_rows: bool) -> list[Piece]:
    """Consecutive inserts of the batch's chunks, each touching at most `limit` partitions (>= 1)."""
    limit = max(1, limit)
    if len(set(batch.keys)) <= limit:
        return [batch]
    pieces: list[Piece] = []
    current, current_keys = Piece(), set()
    for message in _messages(batch):
        keys = set(message.keys)
        if len(current_keys | keys) > limit and current.chunks:
            pieces.append(current)
            current, current_keys = Piece(), set()
        if len(keys) <= limit:
            for item in zip(message.chunks, message.counts, message.origins, message.keys, strict=True):
                current.add(*item)
            current_keys |= keys
            continue
        # One message over the limit on its own: pieces of `limit` partitions, the last one claims it.
        ordered = sorted(keys)
        groups = [set(ordered[i : i + limit]) for i in range(0, len(ordered), limit)]
        for n, group in enumerate(groups):
            piece = Piece()
            last = n == len(groups) - 1
            for chunk, count, origin, key in zip(
                message.chunks, message.counts, message.origins, message.keys, strict=True
            ):
                if key in group:
                    if offsets_in_rows and not last:
                        chunk = _rewrite_offset(chunk, origin[1])
                    piece.add(chunk, count, origin, key)
            pieces.append(piece)
    if current.chunks:
        pieces.append(current)
    return pieces
