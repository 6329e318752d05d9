"""The web explorer's one write: `POST /api/traces/{trace_id}/scores` (a thumbs-down, a rating, a review).

The explorer reads only, unless its operator turns writes on (`WebWrites.from_env`):

- `TRACEHOUSE_WEB_WRITE_TOKEN=secret`: a write must carry `Authorization: Bearer secret` (several tokens:
  comma-separated; compared in constant time, as the receiver's);
- `TRACEHOUSE_WEB_WRITES=1`: anyone who can reach the server may write (a laptop, a trusted network).
  When a token is set too, the token is still required.

Otherwise a write is a 403 that says how to turn writes on. The cross-site guard (`app.writes_guard`)
runs before any of this: a page on another site cannot make a browser write, whatever the settings.

A score is checked by `ScoreBody` (the body; 400 naming the field) and then by the record's own rules in
core (`core.scores.validated`), gets source `human`, and goes to `tracehouse.scores` through an
acknowledged sender (`producers.acked_scores`, the receiver's machinery): a 200 means Kafka holds it. The
sender is started on the first write, so an explorer that never writes never connects to Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from tracehouse.core import settings
from tracehouse.core.config import Settings
from tracehouse.core.schema import SchemaError
from tracehouse.core.scores import (
    Author,
    Comment,
    Label,
    OptionalSpanId,
    Score,
    ScoreId,
    ScoreName,
    validated,
    validation_reason,
)
from tracehouse.producers.acked_scores import scores_sender, store_scores
from tracehouse.producers.otlp.auth import TokenCheck
from tracehouse.web.api import json_response
from tracehouse.web.params import ApiError, trace_id_of

__all__ = [
    "SCORES_PATH",
    "WEB_WRITES_ENV",
    "WEB_WRITE_TOKEN_ENV",
    "ScoreAccepted",
    "ScoreBody",
    "WebWrites",
    "install",
    "post_score",
]

WEB_WRITES_ENV = settings.WEB_WRITES.name
WEB_WRITE_TOKEN_ENV = settings.WEB_WRITE_TOKEN.name
SCORES_PATH = "/api/traces/{trace_id}/scores"
ACK_TIMEOUT_S = 5.0  # longest wait for Kafka's acknowledgement before answering 503

HOW_TO_ENABLE = (
    f"the web explorer is read-only: set {WEB_WRITE_TOKEN_ENV}=<secret> (writes then need "
    f"'Authorization: Bearer <secret>') or {WEB_WRITES_ENV}=1 (anyone who can reach this server may write), "
    "and restart `tracehouse web`"
)


class ScoreBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A score on this trace, as the explorer's thumbs and comment box (or any client) send it: a number,
    a label, or both."""

    name: ScoreName = "user_feedback"
    value: float | None = None
    label: Label = ""
    span_id: OptionalSpanId = ""
    comment: Comment = ""
    author: Author = ""
    score_id: ScoreId = ""


class ScoreAccepted(msgspec.Struct):
    """Kafka holds the score; sending the same score_id again stores it once."""

    score_id: str
    trace_id: str


@dataclass(frozen=True)
class WebWrites:
    """Whether writes are on, and the tokens they need."""

    enabled: bool = False
    tokens: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebWrites:
        tokens: tuple[str, ...] = settings.get(settings.WEB_WRITE_TOKEN, env) or ()
        flag = bool(settings.get(settings.WEB_WRITES, env))
        return cls(enabled=flag or bool(tokens), tokens=tokens)

    def refusal(self, check: TokenCheck, authorization: str | None) -> ApiError | None:
        if not self.enabled:
            return ApiError(403, "writes_disabled", HOW_TO_ENABLE)
        if check.enabled and not check.allows(authorization):
            return ApiError(403, "write_token_required", f"writes need 'Authorization: Bearer <{WEB_WRITE_TOKEN_ENV}>'")
        return None


@dataclass
class _State:
    writes: WebWrites
    check: TokenCheck
    bootstrap: str
    sender: object | None = None  # AckedSpanSender, started on the first write
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)


STATE = web.AppKey("score_writes", _State)

_decode_body = msgspec.json.Decoder(ScoreBody)


async def _sender(state: _State) -> object:
    async with state.starting:
        if state.sender is None:
            sender = scores_sender(state.bootstrap, client_id="tracehouse-web")
            await sender.start()
            state.sender = sender
        return state.sender


async def post_score(request: web.Request) -> web.Response:
    """POST /api/traces/{trace_id}/scores: one score (source `human`), 200 once Kafka holds it."""
    state = request.app[STATE]
    refused = state.writes.refusal(state.check, request.headers.get("Authorization"))
    if refused is not None:
        raise refused
    trace_id = trace_id_of(request.match_info["trace_id"])
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the score as application/json")
    try:
        body = _decode_body.decode(await request.read())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "bad_body", validation_reason(exc)) from None
    try:
        score = validated(
            Score(
                trace_id=trace_id,
                name=body.name,
                value=body.value,
                label=body.label,
                span_id=body.span_id,
                comment=body.comment,
                author=body.author,
                score_id=body.score_id,
                source="human",
            )
        )
    except (SchemaError, ValueError) as exc:  # ValueError: the record's own rules (value or label, finite)
        raise ApiError(400, "bad_body", str(exc).removeprefix("score.")) from None
    sender = await _sender(state)
    refusal = await store_scores(sender, [score], ACK_TIMEOUT_S)  # type: ignore[arg-type]
    if refusal is not None:
        raise ApiError(refusal.status, "kafka_unavailable", refusal.message)
    return json_response(ScoreAccepted(score.score_id, trace_id))


def install(app: web.Application, settings: Settings, writes: WebWrites | None = None) -> None:
    """Add the scores route to the explorer; its sender stops (flushes) with the app."""
    writes = writes or WebWrites.from_env()
    app[STATE] = _State(writes, TokenCheck(writes.tokens), settings.kafka_bootstrap)

    async def stop_sender(app: web.Application) -> AsyncIterator[None]:
        yield
        sender = app[STATE].sender
        if sender is not None:
            await sender.stop(timeout=ACK_TIMEOUT_S + 5)  # type: ignore[attr-defined]

    app.cleanup_ctx.append(stop_sender)
    app.router.add_post(SCORES_PATH, post_score)
