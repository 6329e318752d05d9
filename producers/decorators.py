"""`@trace`: one line turns a function into a span, whatever kind of function it is.

- plain and `async` functions: the span covers the call (the await, for coroutines);
- generators and async generators: the span covers the whole iteration, from the first item to
  exhaustion or to the consumer stopping early (`break`, `aclose`). The generator body runs with the span
  current, but the consumer's code between items does not (Python generators share their consumer's
  context, so a plain `with span(...)` around a `yield` would leak the span into the consumer; the
  decorator drives the generator step by step to avoid that). `send`/`throw` are forwarded.

The global tracer is looked up on every call, so functions decorated at import time trace once
`configure()` runs later, and cost one attribute check while tracing is disabled.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from . import tracer as _tracer_module
from .context import CURRENT_SPAN
from .live_span import LiveSpan, normalize_kind
from .tracer import Tracer


def _positional_names(fn: Callable[..., Any]) -> tuple[tuple[str, ...], bool]:
    """Names for positional arguments, and whether the first one is `self`/`cls` (left out of input)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return (), False
    names = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names, bool(names) and names[0] in ("self", "cls")


def _arguments(names: tuple[str, ...], skip_first: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if skip_first and args:
        args = args[1:]
        names = names[1:]
    out: dict[str, Any] = dict(zip(names, args, strict=False))
    if len(args) > len(names):
        out["args"] = list(args[len(names) :])
    if kwargs:
        out.update(kwargs)
    return out


def trace(
    fn: Callable[..., Any] | None = None,
    *,
    kind: str = "CHAIN",
    name: str | None = None,
    capture_input: bool | None = None,
    capture_output: bool | None = None,
    tracer: Tracer | None = None,
) -> Any:
    """Decorate a function so each call is a span: `@trace`, `@trace(kind="LLM")`, `@trace(name="plan")`.

    `capture_input`/`capture_output` record the arguments (by name, `self` left out) and the return value
    (None is not recorded; a generator's items are not, only their count) as JSON; default: the tracer's
    `capture_io`. Set them explicitly inside with `current_span().set_output(...)`, which wins.
    Exceptions are recorded and re-raised.
    """
    span_kind = normalize_kind(kind)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        span_name = name or getattr(func, "__qualname__", None) or getattr(func, "__name__", "function")
        names, skip_first = _positional_names(func)

        def open_span(t: Tracer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LiveSpan:
            live = t.start_span(span_name, span_kind)
            if capture_input if capture_input is not None else t.capture_io:
                live.set_input(_arguments(names, skip_first, args, kwargs))
            return live  # type: ignore[return-value]

        def finish_ok(t: Tracer, live: LiveSpan, result: Any) -> None:
            if (
                result is not None
                and not live._output
                and (capture_output if capture_output is not None else t.capture_io)
            ):
                live.set_output(result)
            if live._status == "UNSET":
                live._status = "OK"

        if inspect.isasyncgenfunction(func):
            wrapper = _async_generator_wrapper(func, tracer, open_span)
        elif inspect.isgeneratorfunction(func):
            wrapper = _generator_wrapper(func, tracer, open_span, finish_ok)
        elif inspect.iscoroutinefunction(func):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                t = tracer if tracer is not None else _tracer_module._tracer
                if not t.enabled:
                    return await func(*args, **kwargs)
                live = open_span(t, args, kwargs)
                token = CURRENT_SPAN.set(live)
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    live.record_exception(exc)
                    raise
                else:
                    finish_ok(t, live, result)
                    return result
                finally:
                    CURRENT_SPAN.reset(token)
                    live.end()

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                t = tracer if tracer is not None else _tracer_module._tracer
                if not t.enabled:
                    return func(*args, **kwargs)
                live = open_span(t, args, kwargs)
                token = CURRENT_SPAN.set(live)
                try:
                    result = func(*args, **kwargs)
                except BaseException as exc:
                    live.record_exception(exc)
                    raise
                else:
                    finish_ok(t, live, result)
                    return result
                finally:
                    CURRENT_SPAN.reset(token)
                    live.end()

        return functools.wraps(func)(wrapper)

    return decorate(fn) if fn is not None else decorate


def _generator_wrapper(func: Callable[..., Any], tracer: Tracer | None, open_span: Any, finish_ok: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = tracer if tracer is not None else _tracer_module._tracer
        if not t.enabled:
            return (yield from func(*args, **kwargs))
        live = open_span(t, args, kwargs)
        items = 0
        try:
            gen = func(*args, **kwargs)
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                token = CURRENT_SPAN.set(live)
                try:
                    if to_throw is not None:
                        exc, to_throw = to_throw, None
                        item = gen.throw(exc)
                    else:
                        item = gen.send(to_send)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    CURRENT_SPAN.reset(token)
                items += 1
                try:
                    to_send = yield item
                except GeneratorExit:  # the consumer stopped early (break, close, garbage collection)
                    token = CURRENT_SPAN.set(live)
                    try:
                        gen.close()
                    finally:
                        CURRENT_SPAN.reset(token)
                    raise
                except BaseException as exc:  # wrapper.throw(exc): forward to the generator
                    to_throw, to_send = exc, None
        except GeneratorExit:
            if live._status == "UNSET":
                live._status = "OK"
            raise
        except BaseException as exc:
            live.record_exception(exc)
            raise
        else:
            finish_ok(t, live, result)
            return result
        finally:
            live.set_attribute("tracehouse.stream.items", items)
            live.end()

    return wrapper


def _async_generator_wrapper(func: Callable[..., Any], tracer: Tracer | None, open_span: Any) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = tracer if tracer is not None else _tracer_module._tracer
        live = open_span(t, args, kwargs) if t.enabled else None
        items = 0
        try:
            agen = func(*args, **kwargs)
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                token = CURRENT_SPAN.set(live) if live is not None else None
                try:
                    if to_throw is not None:
                        exc, to_throw = to_throw, None
                        item = await agen.athrow(exc)
                    else:
                        item = await agen.asend(to_send)
                except StopAsyncIteration:
                    break
                finally:
                    if token is not None:
                        CURRENT_SPAN.reset(token)
                items += 1
                try:
                    to_send = yield item
                except GeneratorExit:  # aclose() by the consumer or the event loop's finalizer
                    token = CURRENT_SPAN.set(live) if live is not None else None
                    try:
                        await agen.aclose()
                    finally:
                        if token is not None:
                            CURRENT_SPAN.reset(token)
                    raise
                except BaseException as exc:
                    to_throw, to_send = exc, None
        except GeneratorExit:
            if live is not None and live._status == "UNSET":
                live._status = "OK"
            raise
        except BaseException as exc:
            if live is not None:
                live.record_exception(exc)
            raise
        else:
            if live is not None and live._status == "UNSET":
                live._status = "OK"
        finally:
            if live is not None:
                live.set_attribute("tracehouse.stream.items", items)
                live.end()

    return wrapper
