"""The span an application holds while work runs: a lightweight mutable record with typed setters.

Why not build the wire `Span` right away and mutate it? A msgspec Struct built with keywords costs ~1 µs
and most of a span's fields are only known at its end. So the live span is a `__slots__` object whose
setters store ready-to-ship values (strings already truncated, messages already converted) and the `Span`
is built once, positionally (~0.25 µs), when the span ends. Nothing here raises into the application on
bad input: values are coerced or replaced by their repr.

A live span is also a context manager (sync and async): entering makes it the current span of this
context (children opened inside link to it), leaving records any exception and ends it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tracehouse.core.schema import (
    SPAN_KINDS,
    Document,
    Event,
    LLMCall,
    PromptTemplate,
    Score,
    Span,
    TokenUsage,
)

from . import errors
from .context import CURRENT_SPAN
from .convert import EMPTY_LIST, to_document, to_message
from .payload import (
    SHORT_TEXT_CHARS,
    attr_text,
    count,
    fit,
    opt_float,
    opt_int,
    short,
    to_json_text,
    to_text,
)
from .propagation import format_traceparent

if TYPE_CHECKING:
    from .tracer import Tracer

_time_ns = time.time_ns
_STATUSES = frozenset(("OK", "ERROR", "UNSET"))
_KINDS = frozenset(SPAN_KINDS)
_KIND_ALIASES = {"RETRIEVAL": "RETRIEVER", "RERANK": "RERANKER", "EVAL": "EVALUATOR", "EMBED": "EMBEDDING"}

# `_build` passes the Span's fields positionally (4x cheaper than keywords). The schema only ever appends
# fields with defaults, so this order holds; if someone reorders it, fail at import, not on the wire.
_SPAN_FIELDS = (
    "trace_id", "span_id", "name", "start_time_ns", "end_time_ns", "parent_span_id", "kind", "service",
    "status", "status_message", "input", "output", "attributes", "resource", "events", "llm", "usage",
    "cost_usd", "prompt", "documents", "scores", "session_id", "user_id", "tags",
)  # fmt: skip
_LLM_FIELDS = (
    "model", "provider", "temperature", "max_tokens", "top_p", "stop", "system_prompt", "input_messages",
    "output_messages", "finish_reason", "invocation_parameters",
)  # fmt: skip
_USAGE_FIELDS = ("input", "output", "cached", "reasoning", "total")
if (
    Span.__struct_fields__[: len(_SPAN_FIELDS)] != _SPAN_FIELDS
    or LLMCall.__struct_fields__[: len(_LLM_FIELDS)] != _LLM_FIELDS
    or TokenUsage.__struct_fields__[: len(_USAGE_FIELDS)] != _USAGE_FIELDS
):  # pragma: no cover
    raise ImportError("tracehouse.core.schema fields were reordered; update LiveSpan's positional builds")


def normalize_kind(kind: str) -> str:
    """Validate a span kind (case-insensitive; "RETRIEVAL" and a few other aliases accepted).

    Raises ValueError for unknown kinds: a typo shows up on first run instead of as UNKNOWN spans.
    """
    if kind in _KINDS:
        return kind
    upper = str(kind).upper()
    upper = _KIND_ALIASES.get(upper, upper)
    if upper not in _KINDS:
        raise ValueError(f"unknown span kind {kind!r}; expected one of {', '.join(SPAN_KINDS)}")
    return upper


class _Extra:
    """The fields few spans use (events, documents, scores, tags, ...), kept out of LiveSpan so that
    opening a span initialises 19 slots instead of 26."""

    __slots__ = (
        "cost",
        "documents",
        "events",
        "prompt",
        "scores",
        "status_message",
        "tags",
    )

    def __init__(self) -> None:
        self.status_message = ""
        self.events: list[Event] | None = None
        self.cost: float | None = None
        self.prompt: PromptTemplate | None = None
        self.documents: list[Document] | None = None
        self.scores: list[Score] | None = None
        self.tags: list[str] | None = None


def _short_fast(value: Any) -> str:
    if type(value) is str and len(value) <= SHORT_TEXT_CHARS and value.isascii():
        return value
    return short(value)


def _count_fast(value: Any) -> int:
    if type(value) is int:
        return value if value > 0 else 0
    return 0 if value is None else count(value)


class LiveSpan:
    """A span being recorded. Obtain one from `span(...)`, `start_span(...)` or `current_span()`."""

    __slots__ = (
        "_attributes",
        "_ended",
        "_input",
        "_llm",
        "_output",
        "_parent",
        "_session",
        "_status",
        "_token",
        "_tracer",
        "_usage",
        "_user",
        "_x",
        "kind",
        "name",
        "parent_span_id",
        "span_id",
        "start_time_ns",
        "trace_id",
    )

    is_recording = True

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        kind: str,
        trace_id: str,
        span_id: str,
        parent_span_id: str,
        parent: LiveSpan | None,
    ) -> None:
        self._tracer = tracer
        self.name = name if type(name) is str and 0 < len(name) <= SHORT_TEXT_CHARS else (short(name) or "unnamed")
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self._parent = parent
        self.start_time_ns = _time_ns()
        self._status = "UNSET"
        self._input = ""
        self._output = ""
        self._attributes: dict[str, str] | None = None
        self._llm: LLMCall | None = None
        self._usage: TokenUsage | None = None
        self._session = ""
        self._user = ""
        self._x: _Extra | None = None
        self._token: Any = None
        self._ended = False

    def _extra(self) -> _Extra:
        x = self._x
        if x is None:
            x = self._x = _Extra()
        return x

    # ---- identity ---------------------------------------------------------------------------

    @property
    def traceparent(self) -> str:
        """The W3C `traceparent` value naming this span as parent (for outgoing requests)."""
        return format_traceparent(self.trace_id, self.span_id)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def status(self) -> str:
        return self._status

    def __repr__(self) -> str:
        return f"<LiveSpan {self.kind} {self.name!r} trace={self.trace_id} span={self.span_id}>"

    # ---- payloads ---------------------------------------------------------------------------

    def set_input(self, value: Any) -> None:
        """The span's input: str kept as is, anything else JSON-encoded; cut at the tracer's byte budget."""
        if type(value) is str and value.isascii() and len(value) <= self._tracer.max_payload_bytes:
            self._input = value  # the common case, without a call
            return
        self._input, original = to_text(value, self._tracer.max_payload_bytes)
        if original:
            self.set_attribute("tracehouse.input.truncated_from", original)

    def set_output(self, value: Any) -> None:
        """The span's output; same encoding and truncation as `set_input`."""
        if type(value) is str and value.isascii() and len(value) <= self._tracer.max_payload_bytes:
            self._output = value
            return
        self._output, original = to_text(value, self._tracer.max_payload_bytes)
        if original:
            self.set_attribute("tracehouse.output.truncated_from", original)

    # ---- LLM calls (questions 2 and 5) ------------------------------------------------------

    def set_llm(
        self,
        *,
        model: str | None = None,
        provider: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: str | Iterable[str] | None = None,
        system_prompt: str | None = None,
        input_messages: Iterable[Any] | None = None,
        output_messages: Iterable[Any] | None = None,
        finish_reason: str | None = None,
        invocation_parameters: Any = None,
    ) -> None:
        """Record the LLM call's parameters and messages. Only the arguments given are changed, so it can
        be called once before the call (model, parameters, input messages) and once after (output)."""
        llm = self._llm
        if llm is None:
            # positional, with the shared empty list: see EMPTY_LIST
            llm = self._llm = LLMCall("", "", None, None, None, EMPTY_LIST, "", EMPTY_LIST, EMPTY_LIST, "", "")
        if model is not None:
            llm.model = model if type(model) is str and len(model) <= 256 and model.isascii() else short(model)
        if provider is not None:
            llm.provider = provider if type(provider) is str and len(provider) <= 256 else short(provider)
        if temperature is not None:
            llm.temperature = temperature if type(temperature) is float else opt_float(temperature)
        if max_tokens is not None:
            llm.max_tokens = max_tokens if type(max_tokens) is int else opt_int(max_tokens)
        if top_p is not None:
            llm.top_p = top_p if type(top_p) is float else opt_float(top_p)
        if stop is not None:
            llm.stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        if system_prompt is not None or input_messages is not None or output_messages is not None:
            limit = self._tracer.max_payload_bytes
            if system_prompt is not None:
                llm.system_prompt = fit(str(system_prompt), limit)[0]
            if input_messages is not None:
                llm.input_messages = [to_message(m, limit) for m in input_messages]
            if output_messages is not None:
                llm.output_messages = [to_message(m, limit) for m in output_messages]
        if finish_reason is not None:
            llm.finish_reason = _short_fast(finish_reason)
        if invocation_parameters is not None:
            params = invocation_parameters
            text = params if type(params) is str else to_json_text(params)
            llm.invocation_parameters = fit(text, self._tracer.max_payload_bytes)[0]

    def set_usage(
        self,
        input: int | None = None,
        output: int | None = None,
        cached: int | None = None,
        reasoning: int | None = None,
        total: int | None = None,
    ) -> None:
        """Token counts as the provider reports them: `input` includes `cached`, `output` includes
        `reasoning`; `total` defaults to input + output. Counts not given keep their earlier value, except
        `total`, which is recomputed unless given."""
        prev = self._usage
        if prev is None:
            self._usage = TokenUsage(
                _count_fast(input),
                _count_fast(output),
                _count_fast(cached),
                _count_fast(reasoning),
                _count_fast(total),
            )
            return
        self._usage = TokenUsage(
            prev.input if input is None else _count_fast(input),
            prev.output if output is None else _count_fast(output),
            prev.cached if cached is None else _count_fast(cached),
            prev.reasoning if reasoning is None else _count_fast(reasoning),
            _count_fast(total),
        )

    def set_cost(self, usd: float) -> None:
        """The call's cost in USD when the app knows it; otherwise the pipeline prices the tokens."""
        self._extra().cost = opt_float(usd)

    def set_prompt_template(
        self,
        name: str = "",
        version: str = "",
        template: str = "",
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        """Which prompt template (and version) produced this call, and with which variables (question 6)."""
        limit = self._tracer.max_payload_bytes
        self._extra().prompt = PromptTemplate(
            name=short(name),
            version=short(version),
            template=fit(str(template), limit)[0],
            variables={str(k): attr_text(v, limit) for k, v in (variables or {}).items()},
        )

    # ---- retrieval (question 4) -------------------------------------------------------------

    def set_documents(self, documents: Iterable[Any]) -> None:
        """The documents a retriever or reranker returned, in their given order (which becomes `position`).
        Accepts Document, dicts with id/content (or text, page_content)/score/metadata, or similar objects."""
        limit = self._tracer.max_payload_bytes
        self._extra().documents = [to_document(doc, i, limit) for i, doc in enumerate(documents)]

    # ---- evaluation, grouping, free attributes ----------------------------------------------

    def add_score(
        self,
        name: str,
        value: float | None = None,
        label: str = "",
        *,
        source: str = "",
        comment: str = "",
    ) -> None:
        """Attach an evaluation: a number, a label, or both."""
        score = Score(
            name=short(name) or "score",
            value=opt_float(value),
            label=short(label),
            source=short(source),
            comment=fit(str(comment), self._tracer.max_payload_bytes)[0],
        )
        x = self._extra()
        if x.scores is None:
            x.scores = [score]
        else:
            x.scores.append(score)

    def set_session(self, session_id: str) -> None:
        """Group traces into a conversation; spans opened under this one inherit it."""
        self._session = _short_fast(session_id)

    def set_user(self, user_id: str) -> None:
        """The end user; spans opened under this one inherit it."""
        self._user = _short_fast(user_id)

    def add_tags(self, *tags: str | Iterable[str]) -> None:
        """Add tags (`add_tags("a", "b")` or `add_tags(["a", "b"])`); spans under this one inherit them."""
        x = self._extra()
        own = x.tags
        if own is None:
            own = x.tags = []
        for tag in tags:
            for item in [tag] if isinstance(tag, str) else tag:
                text = short(item)
                if text not in own:
                    own.append(text)

    def set_attribute(self, key: str, value: Any) -> None:
        """A free attribute; the value is stored as a string (JSON for structured values)."""
        attributes = self._attributes
        if attributes is None:
            attributes = self._attributes = {}
        if type(key) is not str:
            key = str(key)
        kind = type(value)
        if kind is str and len(value) <= 256:  # the common cases, without a call
            attributes[key] = value
        elif kind is int or kind is float:
            attributes[key] = str(value)
        else:
            attributes[key] = attr_text(value, self._tracer.max_payload_bytes)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Several free attributes at once (values stringified as in `set_attribute`)."""
        own = self._attributes
        if own is None:
            own = self._attributes = {}
        limit = self._tracer.max_payload_bytes
        for key, value in attributes.items():
            if type(key) is not str:
                key = str(key)
            kind = type(value)
            if kind is str:  # inlined fast paths of attr_text: this loop runs for every attribute
                own[key] = (
                    value if len(value) <= 256 or (value.isascii() and len(value) <= limit) else attr_text(value, limit)
                )
            elif kind is int or kind is float:
                own[key] = str(value)
            else:
                own[key] = attr_text(value, limit)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, time_ns: int | None = None) -> None:
        """A point in time inside the span (e.g. "first_token", "retry")."""
        limit = self._tracer.max_payload_bytes
        event = Event(
            name=short(name) or "event",
            time_ns=time_ns if time_ns is not None else _time_ns(),
            attributes={str(k): attr_text(v, limit) for k, v in attributes.items()} if attributes else {},
        )
        x = self._extra()
        if x.events is None:
            x.events = [event]
        else:
            x.events.append(event)

    def set_status(self, status: str, message: str = "") -> None:
        """ "OK", "ERROR" or "UNSET" (any case), with an optional message."""
        upper = status if status in _STATUSES else str(status).upper()
        if upper not in _STATUSES:
            upper = "ERROR"
        self._status = upper
        if message or self._x is not None:
            self._extra().status_message = fit(str(message), self._tracer.max_payload_bytes)[0] if message else ""

    def set_name(self, name: str) -> None:
        self.name = short(name) or self.name

    def record_exception(self, exc: BaseException, *, escaped: bool = True) -> None:
        """Record `exc` as an `exception` event, set `error.type` ("rate_limit" or the class's qualified
        name) and status ERROR with the exception's message. Called for you when an exception leaves the
        span; never raises."""
        try:
            limit = self._tracer.max_payload_bytes
            self.add_event("exception", errors.exception_attributes(exc, limit, escaped))
            self.set_attribute("error.type", errors.error_type(exc))
            message = errors.exception_message(exc) or errors.qualified_name(type(exc))
            self.set_status("ERROR", message)
        except Exception:  # pragma: no cover - tracing must never replace the app's exception
            self._status = "ERROR"

    # ---- lifetime ---------------------------------------------------------------------------

    def end(self, end_time_ns: int | None = None) -> None:
        """Finish the span and hand it to the tracer's transport (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        end = _time_ns() if end_time_ns is None else end_time_ns
        self._tracer._emit(self, end if end >= self.start_time_ns else self.start_time_ns)

    def __enter__(self) -> LiveSpan:
        self._token = CURRENT_SPAN.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                CURRENT_SPAN.reset(token)
            except ValueError:  # left in another context than entered: nothing of ours to restore here
                pass
        if exc is not None:
            if not isinstance(exc, GeneratorExit):  # a consumer stopping early is not an error
                self.record_exception(exc)
        elif self._status == "UNSET":
            self._status = "OK"
        if not self._ended:  # end(), inlined: this is every span's exit path
            self._ended = True
            end = _time_ns()
            self._tracer._emit(self, end if end >= self.start_time_ns else self.start_time_ns)

    async def __aenter__(self) -> LiveSpan:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    # ---- building the wire record -----------------------------------------------------------

    def _inherited(self, x: _Extra | None) -> tuple[str, str, list[str]]:
        """Session, user and tags, filling what this span lacks from its nearest in-process ancestors."""
        session, user = self._session, self._user
        merged: list[str] = list(x.tags) if x is not None and x.tags else []
        parent = self._parent
        while parent is not None:
            if not session:
                session = parent._session
            if not user:
                user = parent._user
            px = parent._x
            if px is not None and px.tags:
                merged.extend(t for t in px.tags if t not in merged)
            parent = parent._parent
        return session, user, merged or EMPTY_LIST

    def _build(self, end_time_ns: int) -> Span:
        tracer = self._tracer
        x = self._x
        if x is None and self._parent is None:  # a root with none of the rarer fields: the fast path
            return Span(
                self.trace_id,
                self.span_id,
                self.name,
                self.start_time_ns,
                end_time_ns,
                self.parent_span_id,
                self.kind,
                tracer.service,
                self._status,
                "",
                self._input,
                self._output,
                self._attributes if self._attributes is not None else {},
                tracer.resource,
                EMPTY_LIST,
                self._llm,
                self._usage,
                None,
                None,
                EMPTY_LIST,
                EMPTY_LIST,
                self._session,
                self._user,
                EMPTY_LIST,
            )
        session, user, tags = self._inherited(x)
        if x is None:
            x = _NO_EXTRA
        return Span(
            self.trace_id,
            self.span_id,
            self.name,
            self.start_time_ns,
            end_time_ns,
            self.parent_span_id,
            self.kind,
            tracer.service,
            self._status,
            x.status_message,
            self._input,
            self._output,
            self._attributes if self._attributes is not None else {},
            tracer.resource,
            x.events or EMPTY_LIST,
            self._llm,
            self._usage,
            x.cost,
            x.prompt,
            x.documents or EMPTY_LIST,
            x.scores or EMPTY_LIST,
            session,
            user,
            tags,
        )


_NO_EXTRA = _Extra()


class NoopSpan:
    """What tracing calls return when tracing is disabled: accepts every setter and does nothing."""

    __slots__ = ()

    is_recording = False
    trace_id = ""
    span_id = ""
    parent_span_id = ""
    name = ""
    kind = "UNKNOWN"
    status = "UNSET"
    ended = True
    traceparent = None

    def __enter__(self) -> NoopSpan:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    async def __aenter__(self) -> NoopSpan:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return "<NoopSpan>"


def _noop(self: Any, *args: Any, **kwargs: Any) -> None:
    return None


# Every public method of LiveSpan exists on NoopSpan, so code written against one runs against the other.
for _name in dir(LiveSpan):
    if not _name.startswith("_") and callable(getattr(LiveSpan, _name)) and not hasattr(NoopSpan, _name):
        setattr(NoopSpan, _name, _noop)

NOOP_SPAN = NoopSpan()
