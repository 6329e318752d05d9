"""Why a request to the receiver fails, one exception per HTTP answer the OTLP/HTTP spec prescribes.

The decoding and decompression code raises these without knowing about HTTP; the app turns each into its
status code and a `google.rpc.Status` body, so the rules for "what is a 400 and what is a 413" live with
the code that finds the problem.
"""

from __future__ import annotations


class RequestError(ValueError):
    """A request the receiver refuses; `status` is the HTTP code, `reason` the message sent back."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(RequestError):
    """The body cannot be decoded (not protobuf, not OTLP/JSON, corrupt gzip): 400, do not retry."""

    status = 400


class PayloadTooLarge(RequestError):
    """The body, or what it decompresses to, is above the configured limit: 413."""

    status = 413


class UnsupportedMedia(RequestError):
    """A content type or content encoding the receiver does not speak: 415."""

    status = 415


class RequestTimeout(RequestError):
    """The body did not arrive within its deadline (a client too slow, or stalled): 408."""

    status = 408
