"""Request bodies: the content encodings OTLP senders use, decompressed under a hard size limit.

OTLP/HTTP exporters gzip by default in most SDKs; some send `deflate`. A gzip body of 1 MB can expand
to gigabytes (a "gzip bomb"), so decompression asks zlib for at most `limit + 1` bytes and refuses the
body the moment the output passes the limit: memory stays bounded by the limit whatever was sent.
aiohttp's own transparent decompression is switched off where the receiver is served, so this code
sees the bytes as sent and can tell the compressed size from the decompressed one.
"""

from __future__ import annotations

import zlib

from .errors import BadRequest, PayloadTooLarge, UnsupportedMedia

__all__ = ["SUPPORTED_ENCODINGS", "decompress"]

SUPPORTED_ENCODINGS = frozenset(("", "identity", "gzip", "x-gzip", "deflate"))
_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"decompressed body is above the limit of {limit} bytes")


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    """Decompress every member of a zlib/gzip stream, never holding more than `limit + 1` bytes."""
    out: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequest(f"body is not valid {name}: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        out.append(chunk)
        if not inflater.eof:
            raise BadRequest(f"body is not valid {name}: the compressed stream is truncated")
        data = inflater.unused_data
        if not data.strip(b"\x00"):  # some writers pad with zeros after the last member
            break
    return out[0] if len(out) == 1 else b"".join(out)


def decompress(data: bytes, content_encoding: str, limit: int) -> bytes:
    """The body's bytes after `Content-Encoding`; PayloadTooLarge above `limit`, BadRequest when the
    compressed data is corrupt, UnsupportedMedia for an encoding this receiver does not speak."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(data) > limit:
            raise _too_large(limit)
        return data
    if encoding in ("gzip", "x-gzip"):
        return _inflate(data, _GZIP, limit, "gzip")
    if encoding == "deflate":
        # HTTP's "deflate" is zlib-wrapped (RFC 9110), but some clients send raw deflate: accept both.
        if data[:1] and (data[0] & 0x0F) == 8 and int.from_bytes(data[:2], "big") % 31 == 0:
            return _inflate(data, _ZLIB, limit, "deflate")
        return _inflate(data, _RAW_DEFLATE, limit, "deflate")
    raise UnsupportedMedia(f"Content-Encoding {content_encoding!r} is not supported; use gzip, deflate or identity")
