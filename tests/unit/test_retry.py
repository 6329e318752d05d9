"""core.retry: the one retry helper (classification, backoff with jitter and a cap, deadline, stop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tracehouse.core.retry import Backoff, GaveUp, Outcome, Policy, retry, sleep_unless_stopped
from tracehouse.sinks.errors import ErrorKind

FAST = Policy(initial_s=0.001, max_s=0.004, jitter=0.0)


class Flaky:
    """Fails with `errors` in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def by_type(exc: BaseException) -> Outcome:
    if isinstance(exc, ConnectionError):
        return Outcome.RETRIABLE
    if isinstance(exc, ValueError):
        return Outcome.BAD_CONTENT
    return Outcome.FATAL


def test_delays_double_up_to_the_cap() -> None:
    policy = Policy(initial_s=0.1, max_s=1.0, factor=2.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_stays_within_its_band() -> None:
    backoff = Backoff(Policy(initial_s=1.0, max_s=1.0, jitter=0.5))
    delays = [backoff.failed() for _ in range(200)]
    assert all(0.5 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 100  # not one value for every client
    assert backoff.failures == 200


def test_retriable_failures_are_retried_until_success() -> None:
    call = Flaky(ConnectionError("refused"), ConnectionError("refused"))
    seen: list[tuple[str, int]] = []
    result = asyncio.run(retry(call, by_type, FAST, on_retry=lambda e, n, d: seen.append((str(e), n))))
    assert result == "done"
    assert call.calls == 3
    assert seen == [("refused", 1), ("refused", 2)]


@pytest.mark.parametrize("error", [ValueError("bad row"), KeyError("bug")])
def test_bad_content_and_fatal_are_raised_at_once(error: Exception) -> None:
    call = Flaky(error)
    with pytest.raises(type(error)):
        asyncio.run(retry(call, by_type, FAST))
    assert call.calls == 1


def test_the_deadline_ends_retrying_with_the_last_failure() -> None:
    async def never() -> None:
        raise ConnectionError("still down")

    started = time.monotonic()
    with pytest.raises(GaveUp) as caught:
        asyncio.run(retry(never, by_type, Policy(initial_s=0.01, max_s=0.02, deadline_s=0.2)))
    assert 0.15 <= time.monotonic() - started < 5.0
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert caught.value.reason == "deadline passed"
    assert caught.value.failures >= 2


def test_stop_wakes_a_long_backoff() -> None:
    """Shutdown never waits out a backoff: a 60 s wait ends as soon as `stop` is set."""

    async def scenario() -> tuple[GaveUp, float]:
        stop = asyncio.Event()

        async def never() -> None:
            raise ConnectionError("down")

        asyncio.get_running_loop().call_later(0.1, stop.set)
        started = time.monotonic()
        with pytest.raises(GaveUp) as caught:
            await retry(never, by_type, Policy(initial_s=60.0, max_s=60.0), stop=stop)
        return caught.value, time.monotonic() - started

    gave_up, took = asyncio.run(scenario())
    assert gave_up.reason == "stopped"
    assert took < 5.0


def test_a_set_stop_gives_up_after_the_first_failure() -> None:
    async def scenario() -> int:
        stop = asyncio.Event()
        stop.set()
        call = Flaky(ConnectionError("down"))
        with pytest.raises(GaveUp):
            await retry(call, by_type, FAST, stop=stop)
        return call.calls

    assert asyncio.run(scenario()) == 1


def test_sleep_unless_stopped_says_whether_it_was_woken() -> None:
    async def scenario() -> tuple[bool, bool]:
        stop = asyncio.Event()
        slept = await sleep_unless_stopped(stop, 0.01)
        asyncio.get_running_loop().call_later(0.01, stop.set)
        woken = await sleep_unless_stopped(stop, 60.0)
        return slept, woken

    assert asyncio.run(scenario()) == (False, True)


def test_reset_starts_the_delays_again() -> None:
    backoff = Backoff(Policy(initial_s=0.1, max_s=10.0, jitter=0.0))
    assert [backoff.failed() for _ in range(3)] == [0.1, 0.2, 0.4]
    backoff.reset()
    assert backoff.failed() == 0.1


def test_the_sinks_families_map_onto_the_helpers_classes() -> None:
    """sinks/errors.py stays the source of the sink's families; each has one class in core.retry."""
    assert ErrorKind.CONTENT.outcome is Outcome.BAD_CONTENT
    assert ErrorKind.PARTITIONS.outcome is Outcome.BAD_CONTENT
    assert ErrorKind.TRANSIENT.outcome is Outcome.RETRIABLE
    assert ErrorKind.CONFIGURATION.outcome is Outcome.RETRIABLE  # the sink waits for the operator's fix
    assert ErrorKind.UNKNOWN.outcome is Outcome.RETRIABLE  # a bounded number of times (sinks/writer.py)
    assert {kind.outcome for kind in ErrorKind} <= set(Outcome)
