"""One way to retry: sort each failure into one of three classes, and back off only from the retriable ones.

The classes are the ones aiokafka's sender acts on (aiokafka/producer/sender.py: a handler's response is
done, worth a retry after `retry_backoff_ms`, or raised):
- RETRIABLE: the other side is away, busy or catching up. The same call, unchanged, may succeed later:
  wait (exponential backoff with jitter, up to a cap) and try again, until it succeeds, the deadline
  passes, or `stop` is set.
- BAD_CONTENT: the other side refused what was sent. Sending it again cannot help; the caller decides
  what to do with it (split it, dead-letter it, drop it and count it). Raised at once.
- FATAL: nothing the caller can retry (a bug, a refused transaction). Raised at once.

Each component keeps its own classification (which errors of *its* peer mean what: sinks/errors.py for
ClickHouse, Kafka's `retriable` flag for brokers) and maps it onto these classes; the waiting, the jitter,
the cap, the deadline and waking up on shutdown are written once, here.

Two forms: `retry(call, classify, ...)` for a call retried whole; `Backoff` for loops that decide more per
failure (the sink's writer splits a batch or re-cuts it by partition between waits, the SDK's transport
resends only the messages that failed), which still take their delays, their deadline and their
shutdown-aware wait from here.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class Outcome(enum.Enum):
    """What a failure means for the caller (see the module docstring)."""

    RETRIABLE = "retriable"
    BAD_CONTENT = "bad_content"
    FATAL = "fatal"


class GaveUp(Exception):
    """Retrying stopped before the call succeeded: `stop` was set or the deadline passed. The last
    failure is the `__cause__`."""

    def __init__(self, reason: str, failures: int, last: BaseException) -> None:
        super().__init__(f"{reason} after {failures} failure(s): {type(last).__name__}: {last}")
        self.reason = reason
        self.failures = failures
        self.last = last


async def sleep_unless_stopped(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set meanwhile (a backoff must never delay shutdown).
    True when woken by `stop`."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        return False
    return True


@dataclass(frozen=True)
class Policy:
    """How long to wait between attempts: `initial_s`, times `factor` after each failure, at most `max_s`;
    each wait is scaled by a random factor in [1 - jitter, 1 + jitter] so that many clients failing at once
    do not come back at once. `deadline_s`: give up once this long has passed since the first attempt
    (None: never)."""

    initial_s: float = 0.2
    max_s: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    deadline_s: float | None = None

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first), before jitter."""
        return min(self.initial_s * self.factor ** max(failures - 1, 0), self.max_s)


class Backoff:
    """The state of one retried operation: failures so far, when it started, and the wait before the next
    attempt. For loops that do more than call again (see the module docstring)."""

    def __init__(self, policy: Policy, stop: asyncio.Event | None = None) -> None:
        self.policy = policy
        self.stop = stop
        self.failures = 0
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    @property
    def expired(self) -> bool:
        """The deadline has passed."""
        deadline = self.policy.deadline_s
        return deadline is not None and self.elapsed >= deadline

    def failed(self) -> float:
        """Count a failure; the (jittered) wait before the next attempt."""
        self.failures += 1
        base = self.policy.delay(self.failures)
        jitter = self.policy.jitter
        return base * (1 - jitter + 2 * jitter * random.random()) if jitter else base

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds` before the next attempt (cut short by `stop` and by the deadline). False when the
        caller should give up instead: `stop` is set, or the deadline has passed."""
        if self.stopped or self.expired:
            return False
        if self.policy.deadline_s is not None:
            seconds = min(seconds, max(self.policy.deadline_s - self.elapsed, 0.0))
        if await sleep_unless_stopped(self.stop, seconds):
            return False
        return not self.expired

    async def wait(self) -> bool:
        """Count a failure and wait the policy's delay (`failed`, then `sleep`); False: give up."""
        return await self.sleep(self.failed())

    def reset(self) -> None:
        """A success: the next failure waits the initial delay again."""
        self.failures = 0
        self.started = time.monotonic()


async def retry(
    call: Callable[[], Awaitable[T]],
    classify: Callable[[BaseException], Outcome],
    policy: Policy,
    *,
    stop: asyncio.Event | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """`await call()` until it succeeds; its result.

    A RETRIABLE failure is followed by a wait (see `Policy`) and another attempt, after `on_retry(error,
    failures, delay)` (for logging). BAD_CONTENT and FATAL failures are raised as they are. When `stop` is
    set or the deadline passes, `GaveUp` is raised from the last failure. Only `Exception`s are classified:
    cancellation goes through."""
    backoff = Backoff(policy, stop)
    while True:
        try:
            return await call()
        except Exception as exc:
            if classify(exc) is not Outcome.RETRIABLE:
                raise
            delay = backoff.failed()
            if backoff.stopped or backoff.expired:
                raise GaveUp("stopped" if backoff.stopped else "deadline passed", backoff.failures, exc) from exc
            if on_retry is not None:
                on_retry(exc, backoff.failures, delay)
            if not await backoff.sleep(delay):
                reason = "stopped" if backoff.stopped else "deadline passed"
                raise GaveUp(reason, backoff.failures, exc) from exc
