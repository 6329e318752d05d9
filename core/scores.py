"""Scores added after the fact: user feedback, human review labels, evaluation results.

A `Score` is one judgement about a trace (or one span of it): a number, a label, or both. It travels on
`tracehouse.scores` (many per Kafka message, `ScoreBatch`, in the partition of its trace, as spans do) and
lands in the `scores` table, a ReplacingMergeTree keyed by `score_id`: the same score sent twice (a retry,
a double click) is stored once. Every way in (the receiver's `POST /v1/scores`, the SDK's `score()`, the
web explorer's `POST /api/traces/{id}/scores`) validates here, once, so each refuses the same things
with the same words: the reason names the field (`scores[2].value: ...`).

`score_id` and `created_at` are filled in when absent, at the producer (a uuid4 and the current time), so
the record on the topic is complete and a redelivered message keeps its id. A client that wants retries to
be idempotent sends its own `score_id` (32 hex digits: a uuid4's hex, or an MD5 of its own key).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from tracehouse.core.schema import RejectedRecord, SchemaError, TraceId, decode_records

__all__ = [
    "MAX_SCORES_PER_REQUEST",
    "SCORE_SOURCES",
    "Author",
    "Comment",
    "Label",
    "OptionalSpanId",
    "Score",
    "ScoreBatch",
    "ScoreId",
    "ScoreName",
    "ScoreSource",
    "decode_score_batch",
    "decode_score_item",
    "decode_score_items",
    "encode_score_batch",
    "new_score_id",
    "validated",
    "validation_reason",
]

SCORES_VERSION = 1

ScoreSource = Literal["api", "sdk", "human", "eval"]
SCORE_SOURCES: tuple[str, ...] = ScoreSource.__args__  # type: ignore[attr-defined]

ScoreId = Annotated[
    str, Meta(pattern="^([0-9a-f]{32})?$", description="32 lowercase hex digits; generated when absent")
]
ScoreName = Annotated[str, Meta(min_length=1, max_length=256, description="what is scored, e.g. user_feedback")]
Label = Annotated[str, Meta(max_length=256, description="a categorical value, e.g. thumbs_down")]
Comment = Annotated[str, Meta(max_length=8192, description="free text, e.g. the user's correction")]
Author = Annotated[str, Meta(max_length=256, description="who or what gave the score")]
# Nanoseconds since the epoch (0: now); the same bounds as span times.
CreatedAt = Annotated[int, Meta(ge=0, le=9_223_372_036_854_775_807)]
OptionalSpanId = Annotated[str, Meta(pattern="^([0-9a-f]{16})?$", description="16 lowercase hex digits, or empty")]

MAX_SCORES_PER_REQUEST = 1000  # one POST; more is a 400 that says so (send fewer per request)
MAX_SCORES_PER_BATCH = 100_000  # one Kafka message


def new_score_id() -> str:
    return uuid.uuid4().hex


class Score(Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False, kw_only=True):
    """One score about a trace (or one of its spans); field names are the `scores` table's columns.

    Not to be confused with `core.schema.Score`, the evaluation a span carries inside itself
    (`add_score` in a live span); those reach the same table through a materialized view (source `sdk`).
    """

    trace_id: TraceId
    name: ScoreName
    value: float | None = None
    label: Label = ""
    span_id: OptionalSpanId = ""
    comment: Comment = ""
    source: ScoreSource = "api"
    author: Author = ""
    score_id: ScoreId = ""
    created_at: CreatedAt = 0

    def __post_init__(self) -> None:
        if self.value is None and not self.label:
            raise ValueError("value: a score needs a `value` (a number) or a `label` (text), or both")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"value: must be a finite number, got {self.value}")
        if not self.score_id:
            self.score_id = new_score_id()
        if not self.created_at:
            self.created_at = time.time_ns()


class _ClientScore(Score, forbid_unknown_fields=True):
    """A score as a client sends it: an unknown field is a typo (`vale`) to refuse, not to ignore. (On
    the topic, unknown fields are ignored: a newer producer's records stay readable.)"""


class ScoreBatch(Struct, omit_defaults=True, gc=False):
    """What one Kafka message on `tracehouse.scores` carries: many scores, all in one partition."""

    scores: list[Score]
    v: int = SCORES_VERSION


class _RawScoreBatch(Struct):
    scores: list[Raw]
    v: int = SCORES_VERSION


class _RawScoresRequest(Struct, forbid_unknown_fields=True):
    """A client's JSON body: `{"scores": [...]}`, each item decoded on its own to name it in an error."""

    scores: list[Raw]


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(ScoreBatch)
_raw_batch_decoder = msgspec.msgpack.Decoder(_RawScoreBatch)
_score_decoder = msgspec.msgpack.Decoder(Score)
_json_request_decoder = msgspec.json.Decoder(_RawScoresRequest)
_json_score_decoder = msgspec.json.Decoder(_ClientScore)


def encode_score_batch(scores: list[Score]) -> bytes:
    return _encoder.encode(ScoreBatch(scores=scores))


_FIELD_IN_MESSAGE = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<field>[^`]+)`$")
_FIELD_FIRST = re.compile(r"^(?P<field>[a-z_]+): (?P<message>.*)$", re.DOTALL)


def validation_reason(exc: Exception, where: str = "") -> str:
    """msgspec's message as `where.field: message` (its `$.field` path, or the field a message names)."""
    text = str(exc)
    message, sep, path = text.rpartition(" - at `$")
    field = path.rstrip("`").lstrip(".") if sep else ""
    if not sep:
        message = text
        named = _FIELD_IN_MESSAGE.match(text) or _FIELD_FIRST.match(text)  # our own __post_init__ says it first
        if named is not None:
            field = named.group("field")
            message = named.groupdict().get("message") or text
    if not field:
        return f"{where}: {message}" if where else message
    return f"{where}.{field}: {message}" if where else f"{field}: {message}"


def _decode_score(payload: bytes) -> Score:
    try:
        return _score_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"invalid score: {validation_reason(exc)}") from None


def decode_score_batch(data: bytes) -> tuple[list[Score], list[RejectedRecord]]:
    """A message from `tracehouse.scores`: its valid scores and the rejected ones with their reasons and
    bytes (`core.schema.decode_records`, the spans' rule)."""
    return decode_records(
        data,
        kind="scores",
        item="score",
        batch=_batch_decoder,
        raw=_raw_batch_decoder,
        version=SCORES_VERSION,
        max_items=MAX_SCORES_PER_BATCH,
        decode_item=_decode_score,
    )


def decode_score_items(
    body: bytes, *, source: ScoreSource | None = None, max_items: int = MAX_SCORES_PER_REQUEST
) -> list[Score]:
    """A client's JSON `{"scores": [...]}` as Scores, all or nothing: the first bad item raises SchemaError
    naming its index and field (`scores[2].value: ...`), so a request is stored whole or not at all.
    `source`: what every score of this way in is (the web explorer's are `human`); None keeps the item's."""
    try:
        request = _json_request_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f'the body must be JSON {{"scores": [...]}}: {validation_reason(exc)}') from None
    if not request.scores:
        raise SchemaError("scores: the list is empty")
    if len(request.scores) > max_items:
        raise SchemaError(f"scores: {len(request.scores)} items, above the limit of {max_items} per request")
    out: list[Score] = []
    for index, item in enumerate(request.scores):
        out.append(decode_score_item(bytes(item), f"scores[{index}]", source=source))
    return out


def decode_score_item(item: bytes, where: str = "score", *, source: ScoreSource | None = None) -> Score:
    """One JSON score object; SchemaError names `where` and the field."""
    try:
        score = _json_score_decoder.decode(item)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(validation_reason(exc, where)) from None
    if source is not None:
        score.source = source
    return score


def validated(score: Score) -> Score:
    """`score` checked against every rule of the record (msgspec checks constraints when decoding, not
    when a Struct is built in code, so the SDK's scores go through one round trip); SchemaError names the
    field."""
    try:
        return _score_decoder.decode(_encoder.encode(score))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(validation_reason(exc, "score")) from None
