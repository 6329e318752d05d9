"""Reading request bodies so that slow clients cannot stall the receiver nor many uploads exhaust memory.

- A deadline per body, proportional to its size with a floor: `floor + size / min_rate`, where size is
  the declared Content-Length (or, for a chunked body, what has arrived so far, so the deadline grows
  only as bytes come). A client slower than that gets 408 and the connection is closed.
- A byte budget shared by every upload being read: a chunk is kept only once the budget has room for
  it; bytes are given back when the body has been decoded (or refused). So the memory that bodies in
  transit take is bounded in total, however many clients upload at once, and a client that sends one
  byte a second holds one byte of it, not its declared size.

Nothing here holds a decoding slot: the receiver takes one only once the body is complete.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .errors import BadRequest, PayloadTooLarge, RequestTimeout

__all__ = ["BudgetExhausted", "ByteBudget", "read_body"]


class BudgetExhausted(Exception):
    """The byte budget had no room before the body's deadline: the receiver is busy (503)."""


class ByteBudget:
    """Bytes of request bodies held at once, across all requests."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed = asyncio.Condition()

    async def take(self, amount: int, timeout: float) -> None:
        """Wait (up to `timeout`) until `amount` fits; a single amount larger than the whole budget is
        let through when nothing else is held, so no body within the size limit waits forever."""
        if self.used + amount <= self.capacity or self.used == 0:
            self.used += amount
            return
        async with self._freed:
            try:
                await asyncio.wait_for(
                    self._freed.wait_for(lambda: self.used + amount <= self.capacity or self.used == 0), timeout
                )
            except asyncio.TimeoutError:
                raise BudgetExhausted(f"{self.used} bytes of request bodies are being read already") from None
            self.used += amount

    async def give_back(self, amount: int) -> None:
        if amount <= 0:
            return
        self.used -= amount
        async with self._freed:
            self._freed.notify_all()


async def read_body(
    request: web.Request, budget: ByteBudget, *, max_bytes: int, floor_s: float, min_rate: float
) -> tuple[bytes, int]:
    """The body as sent and the bytes of `budget` it holds (give them back when done with the body).

    Raises PayloadTooLarge past `max_bytes` (before reading when Content-Length says so), RequestTimeout
    when the body does not arrive within its deadline, BudgetExhausted when the budget stays full,
    BadRequest when the client breaks the body off."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"body of {length} bytes is above the limit of {max_bytes} bytes")
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks: list[bytes] = []
    size = 0
    held = 0
    stream = request.content
    try:
        while True:
            deadline = started + floor_s + (size if length is None else length) / min_rate
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(stream.readany(), remaining)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"body is above the limit of {max_bytes} bytes")
            await budget.take(len(chunk), max(deadline - loop.time(), 0.0))
            held += len(chunk)
            chunks.append(chunk)
    except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11)
        await budget.give_back(held)
        expected = f"{length} bytes" if length is not None else "the body"
        raise RequestTimeout(
            f"{expected} not received within {loop.time() - started:.0f}s (received {size}); send faster"
        ) from None
    except (RequestPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
        await budget.give_back(held)
        raise BadRequest(f"incomplete request body: {exc}") from None
    except BaseException:
        await budget.give_back(held)
        raise
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), held
