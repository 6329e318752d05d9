"""Issue 12's OTLP workload, and a pool of pre-encoded request bodies that can be re-sent as new traces.

The workload: traces of 1 AGENT + 3 children (an OpenInference LLM call, a GenAI-semconv LLM call, an
OpenInference tool call), 12 attributes per span, ~1 KB of input and ~512 B of output of varied prose-like
text, 200 spans per POST (`anchor_attributes`).

Why a pool of patched bytes: building and encoding such a request with the protobuf library costs ~60 µs
per span, so a load generator doing that while it sends cannot offer 20,000 spans/s and takes a core from
the stack it measures. `BodyPool` encodes distinct bodies once, remembers where in the bytes each span's
fixed-size fields are (trace id: 16 bytes, span and parent ids: 8, start and end times: fixed64), and for
each send copies a body and overwrites only those bytes: fresh random ids (so every stored span is
distinct) and times moved so each trace's root ends at the moment of sending. No re-encoding: patching
costs ~1.5 µs per span, and the whole generator with its HTTP client 8-12 µs (measured on the shared
2-core machine under load; about 0.2 of a core at 20,000 spans/s).

Not a benchmark itself and not a test: e2e_load.py (and anything else that posts this workload) uses it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
from dataclasses import dataclass
from pathlib import Path

SPANS_PER_TRACE = 4
SPANS_PER_BODY = 200
ATTRIBUTES_PER_SPAN = 12
# Template times are relative to this instant (a root ends at it); a send adds (now - TEMPLATE_END_NS).
TEMPLATE_END_NS = 1_000_000_000_000_000_000
RATE_LIMIT_MESSAGE = "429 Too Many Requests: rate limit exceeded for gpt-4o-mini"
_U64 = struct.Struct("<Q")

_WORDS = (
    "the of and to in is that for it as was with be by on not this are or from at which but have an they you "
    "were she there been one all we their has would when if so no will its who more out up can said about into "
    "than them only some could time these two may then first any my now such like other how over also support "
    "key rotate settings model answer context retrieval document invoice billing account refund order"
).split()


def prose(rng: random.Random, size: int) -> str:
    """`size` characters of words in random order: text that compresses like prose, not like a repeat."""
    words, length = [], 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def anchor_attributes(rng: random.Random, i: int) -> list[dict[str, object]]:
    """The four spans' attributes of one trace (12 each): AGENT, LLM (OpenInference), LLM (GenAI), TOOL."""
    people = {"session.id": f"sess-{i % 97}", "user.id": f"user-{i % 13}"}
    io = {"input.value": prose(rng, 1024), "output.value": prose(rng, 512)}
    agent = {"openinference.span.kind": "AGENT", **io, "input.mime_type": "text/plain",
             "output.mime_type": "text/plain", **people, "agent.name": "support-agent",
             "metadata": json.dumps({"tenant": f"t{i % 7}", "tier": "gold"}), "tag.tags": '["prod", "support"]',
             "graph.node.id": "agent", "llm.prompt_template.version": "v3"}  # fmt: skip
    llm = {"openinference.span.kind": "LLM", "input.value": prose(rng, 1024), "output.value": prose(rng, 512),
           "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
           "llm.invocation_parameters": '{"temperature": 0.2, "max_tokens": 512}',
           "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": prose(rng, 200),
           "llm.output_messages.0.message.role": "assistant", "llm.token_count.prompt": 312 + i % 50,
           "llm.token_count.completion": 96, "llm.token_count.total": 408 + i % 50}  # fmt: skip
    user = [{"role": "user", "parts": [{"type": "text", "content": prose(rng, 1024)}]}]
    answer = [{"role": "assistant", "parts": [{"type": "text", "content": prose(rng, 512)}], "finish_reason": "stop"}]
    genai = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
             "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.request.temperature": 0.3,
             "gen_ai.request.max_tokens": 1024, "gen_ai.usage.input_tokens": 700 + i % 30,
             "gen_ai.usage.output_tokens": 120, "gen_ai.response.finish_reasons": "stop",
             "gen_ai.response.id": f"chatcmpl-{i}", "gen_ai.input.messages": json.dumps(user),
             "gen_ai.output.messages": json.dumps(answer)}  # fmt: skip
    tool = {"openinference.span.kind": "TOOL", "input.value": prose(rng, 1024), "output.value": prose(rng, 512),
            "tool.name": "lookup_order", "tool.description": "Looks an order up",
            "tool.parameters": '{"type": "object"}',
            "input.mime_type": "application/json", "output.mime_type": "text/plain", **people,
            "http.status_code": 200, "retry.count": 0}  # fmt: skip
    return [agent, llm, genai, tool]


SPAN_NAMES = ("agent.run", "ChatCompletion", "chat gpt-4o", "lookup_order")


def _kv(key: str, value: object):  # type: ignore[no-untyped-def]
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


RESOURCE = (("service.name", "support-bot"), ("deployment.environment", "prod"))
PHASE_KEY = "bench.phase"  # a resource attribute: e2e.py finds a phase's spans by it


@dataclass(frozen=True)
class Template:
    """One encoded body and where its per-send fields are.

    `body` is the `scope_spans` field of the request's one ResourceSpans (tag included): the resource,
    which names the phase, goes in front of it per phase (`with_phase`), so one pool serves every phase.
    `trace_ids`: per trace, the offsets of its 16-byte id (one per span); `span_ids`: per trace, per span,
    the offsets of that span's 8-byte id (its own, then each child's parent reference to it);
    `times`: (offset, template value - TEMPLATE_END_NS) of every fixed64 time."""

    body: bytes
    spans: int
    rate_limited: bool
    trace_ids: tuple[tuple[int, ...], ...]
    span_ids: tuple[tuple[tuple[int, ...], ...], ...]
    times: tuple[tuple[int, int], ...]

    def with_phase(self, phase: str) -> Template:
        """The whole request body, its resource naming `phase`, offsets moved to match."""
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource

        resource = Resource(attributes=[_kv(k, v) for k, v in (*RESOURCE, (PHASE_KEY, phase))]).SerializeToString()
        resource_spans = b"\x0a" + _varint(len(resource)) + resource + self.body
        body = b"\x0a" + _varint(len(resource_spans)) + resource_spans
        shift = len(body) - len(self.body)
        return Template(
            body, self.spans, self.rate_limited,
            tuple(tuple(at + shift for at in trace) for trace in self.trace_ids),
            tuple(tuple(tuple(at + shift for at in places) for places in trace) for trace in self.span_ids),
            tuple((at + shift, rel) for at, rel in self.times),
        )  # fmt: skip


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _find(body: bytes, needle: bytes, start: int) -> int:
    at = body.find(needle, start)
    if at < 0:
        raise AssertionError(f"field {needle[:1].hex()} not found after byte {start}")
    return at


def encode_template(seed: int, index: int, *, rate_limited: bool, spans: int = SPANS_PER_BODY) -> Template:
    """Body `index` of the pool of `seed` (without its resource: see `Template`): `spans` spans of whole
    traces, ids random markers to be overwritten; with `rate_limited`, its first LLM call failed with a
    429 (status message)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

    rng = random.Random(seed * 1_000_003 + index)
    scope = ScopeSpans()
    scope.scope.name = "openinference.instrumentation.openai"
    markers = []  # per trace: (trace id, [span ids], [(start, end)])
    for t in range(spans // SPANS_PER_TRACE):
        trace_id, ids = rng.randbytes(16), [rng.randbytes(8) for _ in range(SPANS_PER_TRACE)]
        # The root ends at TEMPLATE_END_NS (when the trace is exported); each child runs inside its own
        # third of the root's time, one after the other, and ended before it.
        duration = rng.randint(1_500_000_000, 4_000_000_000)
        root_start = TEMPLATE_END_NS - duration
        times = [(root_start, TEMPLATE_END_NS)]
        third = duration // (SPANS_PER_TRACE - 1)
        for j in range(SPANS_PER_TRACE - 1):
            begin = root_start + j * third
            times.append(
                (begin + rng.randint(1_000_000, third // 10), begin + third - rng.randint(1_000_000, third // 10))
            )
        markers.append((trace_id, ids, times))
        for j, attributes in enumerate(anchor_attributes(rng, index * spans + t)):
            assert len(attributes) == ATTRIBUTES_PER_SPAN
            span = scope.spans.add(
                trace_id=trace_id, span_id=ids[j], parent_span_id=b"" if j == 0 else ids[0], name=SPAN_NAMES[j],
                kind=3 if j == 2 else 1, start_time_unix_nano=times[j][0], end_time_unix_nano=times[j][1],
            )  # fmt: skip
            failed = rate_limited and t == 0 and j == 1
            span.status.code = 2 if failed else 1
            if failed:
                span.status.message = RATE_LIMIT_MESSAGE
            span.attributes.extend(_kv(k, v) for k, v in attributes.items())
    encoded = scope.SerializeToString()
    body = b"\x12" + _varint(len(encoded)) + encoded
    # Spans are serialized in order and a span's fields in field-number order (trace_id 1, span_id 2,
    # parent_span_id 4, start 7, end 8), so one forward scan finds each field, tag included.
    trace_offsets, span_offsets, time_offsets = [], [], []
    at = 0
    for trace_id, ids, times in markers:
        tid_at: list[int] = []
        own: list[int] = []
        parent_refs: list[int] = []
        for j in range(SPANS_PER_TRACE):
            at = _find(body, b"\x0a\x10" + trace_id, at) + 2
            tid_at.append(at)
            at = _find(body, b"\x12\x08" + ids[j], at) + 2
            own.append(at)
            if j:
                at = _find(body, b"\x22\x08" + ids[0], at) + 2
                parent_refs.append(at)
            for tag, value in ((b"\x39", times[j][0]), (b"\x41", times[j][1])):
                at = _find(body, tag + _U64.pack(value), at) + 1
                time_offsets.append((at, value - TEMPLATE_END_NS))
        trace_offsets.append(tuple(tid_at))
        span_offsets.append((tuple([own[0], *parent_refs]), *((o,) for o in own[1:])))
    return Template(body, spans, rate_limited, tuple(trace_offsets), tuple(span_offsets), tuple(time_offsets))


class BodyPool:
    """Distinct encoded bodies, re-sent with fresh ids and current times (see the module's docstring).

    Traces with a rate-limited call are only in `limited` bodies, so a sender can choose when to send
    them (the benchmark's alert rule fires on them)."""

    def __init__(
        self, bodies: int, seed: int, phase: str, *, cache: Path | None = None, limited_every: int = 8
    ) -> None:
        templates = None
        if cache is not None and cache.exists():
            templates = pickle.loads(cache.read_bytes())
        if templates is None or len(templates) != bodies:
            templates = [encode_template(seed, i, rate_limited=(i % limited_every == 0)) for i in range(bodies)]
            if cache is not None:  # for the next phase's generator (~40 ms a body to build; ms to load)
                cache.parent.mkdir(parents=True, exist_ok=True)
                partial = cache.with_name(f"{cache.name}.{os.getpid()}")
                partial.write_bytes(pickle.dumps(templates, protocol=pickle.HIGHEST_PROTOCOL))
                os.replace(partial, cache)
        self.templates = [t.with_phase(phase) for t in templates]
        self.calm = [t for t in self.templates if not t.rate_limited] or self.templates
        self._i = self._j = 0

    def next(self, with_limited: bool) -> Template:
        """The next template in turn; one with a rate-limited call only when `with_limited`."""
        if with_limited:
            self._i = (self._i + 1) % len(self.templates)
            return self.templates[self._i]
        self._j = (self._j + 1) % len(self.calm)
        return self.calm[self._j]

    @staticmethod
    def fresh(template: Template, now_ns: int) -> bytearray:
        """The template's bytes with new random trace and span ids and every trace's root ending at `now_ns`."""
        buf = bytearray(template.body)
        randoms = os.urandom(len(template.trace_ids) * (16 + 8 * SPANS_PER_TRACE))
        r = 0
        for offsets, span_offsets in zip(template.trace_ids, template.span_ids, strict=True):
            trace_id = randoms[r : r + 16]
            r += 16
            for at in offsets:
                buf[at : at + 16] = trace_id
            for places in span_offsets:
                span_id = randoms[r : r + 8]
                r += 8
                for at in places:
                    buf[at : at + 8] = span_id
        pack = _U64.pack_into
        for at, rel in template.times:
            pack(buf, at, now_ns + rel)
        return buf  # not copied again into bytes: aiohttp sends a bytearray as it is
