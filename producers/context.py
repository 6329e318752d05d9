"""Which span is current, carried by a ContextVar, and how to hand it to another thread.

asyncio copies the context into every task it creates (`create_task`, `gather`, `TaskGroup`) and
`asyncio.to_thread` copies it into the worker thread, so parent-child links need nothing from the user
there. Threads do not inherit the context: `threading.Thread`, `ThreadPoolExecutor.submit/map` and
`loop.run_in_executor` start with an empty one, so spans opened there would become new roots. Wrap the
callable with `wrap_context(fn)` at the point where the parent is current to hand the context over.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .live_span import LiveSpan

F = TypeVar("F", bound=Callable[..., Any])

CURRENT_SPAN: contextvars.ContextVar[LiveSpan | None] = contextvars.ContextVar("tracehouse_current_span", default=None)


def get_current() -> LiveSpan | None:
    """The span open in this context, or None."""
    return CURRENT_SPAN.get()


def wrap_context(fn: F) -> F:
    """Bind `fn` to the context current now (so to the current span), for running on another thread.

    Each call runs in its own copy of that context, so one wrapped function can run on many pool threads
    at once (a Context object itself cannot be entered by two threads) and spans opened by one call do not
    leak into another:

        with span("fan-out"):
            list(pool.map(wrap_context(work), items))   # every `work` span is a child of "fan-out"
    """
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def run_in_context(*args: Any, **kwargs: Any) -> Any:
        return captured.copy().run(fn, *args, **kwargs)

    return run_in_context  # type: ignore[return-value]
