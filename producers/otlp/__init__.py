"""The OTLP/HTTP receiver: any OpenTelemetry exporter in, tracehouse spans out to Kafka.

    from tracehouse.producers.otlp import run_receiver       # `tracehouse receiver`
    from tracehouse.producers.otlp import BackgroundReceiver  # in-process, for tests and notebooks

`POST /v1/traces` takes protobuf or OTLP/JSON (gzip or deflate), maps OpenInference and OpenTelemetry
GenAI attributes onto tracehouse's `Span` (see `mapping`), and answers 200 once Kafka has acknowledged
the spans (`AckedSpanSender`: trace-partitioned, many spans per message, the SDK's rule). Needs
`opentelemetry-proto` and `aiohttp` (the `receiver` extra).
"""

from .app import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TRACES_PATH,
    Receiver,
    ReceiverOptions,
    ReceiverStats,
    SpanSender,
    create_app,
)
from .auth import TokenCheck, load_tokens
from .errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMedia
from .ingest import IngestResult, ingest
from .mapping import SpanRejected, map_span, origin_for
from .records import Origin, OtlpEvent, OtlpLink, OtlpSpan
from .server import BackgroundReceiver, ReceiverServer, run_receiver

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TRACES_PATH",
    "BackgroundReceiver",
    "BadRequest",
    "IngestResult",
    "Origin",
    "OtlpEvent",
    "OtlpLink",
    "OtlpSpan",
    "PayloadTooLarge",
    "Receiver",
    "ReceiverOptions",
    "ReceiverServer",
    "ReceiverStats",
    "RequestError",
    "SpanRejected",
    "SpanSender",
    "TokenCheck",
    "UnsupportedMedia",
    "create_app",
    "ingest",
    "load_tokens",
    "map_span",
    "origin_for",
    "run_receiver",
]
