"""Compression on ClickHouse's HTTP interface: request bodies in, result bodies out.

Request bodies arrive with HTTP `Content-Encoding` (clickhouse-connect's `insert()` compresses with the
client's `compress` method, lz4 by default; its `raw_insert` sends a body as given; curl users send gzip),
or in ClickHouse's own block framing when the URL has `decompress=1`. Decoders here are incremental so a
large insert never has to sit in memory whole, and they accept concatenated frames: clickhouse-connect
compresses every insert block as a separate lz4/zstd frame. Where the engine can undo an encoding itself
(`ENGINE_DECODES`), the server hands it the body as it came instead (engine.py). Results are compressed
only when the client asks (`enable_http_compression=1` plus `Accept-Encoding`), as one frame per
response because clickhouse-connect's lz4 reader expects that.

Only libraries tracehouse already depends on are used: zlib, lz4 (aiokafka[lz4]) and zstd (the stdlib on
3.14, backports.zstd before, which clickhouse-connect pulls in); xz and bz2 from the standard library;
brotli goes through cramjam if present.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

try:
    import lz4.block as _lz4_block
    import lz4.frame as _lz4_frame
except ImportError:  # pragma: no cover - lz4 ships with aiokafka[lz4]
    _lz4_frame = None
    _lz4_block = None

try:
    from compression import zstd as _zstd  # type: ignore[import-not-found]  # Python 3.14+
except ImportError:
    try:
        from backports import zstd as _zstd  # type: ignore[import-not-found,no-redef]
    except ImportError:  # pragma: no cover
        _zstd = None  # type: ignore[assignment]

try:
    import cramjam as _cramjam
except ImportError:  # pragma: no cover
    _cramjam = None


class CodecError(Exception):
    """A body that cannot be decoded, or an encoding this server does not speak."""

    def __init__(self, message: str, code: int = 271):  # CANNOT_DECOMPRESS
        super().__init__(message)
        self.code = code


# --- request bodies -------------------------------------------------------------------------------


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _Zlib:
    """gzip (possibly several members) or zlib-wrapped deflate."""

    def __init__(self, wbits: int):
        self._wbits = wbits
        self._obj = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._obj.decompress(data))
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = zlib.decompressobj(self._wbits)
        return b"".join(out)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Frames:
    """lz4 or zstd: a series of independent frames, each needing a fresh decompressor."""

    def __init__(self, factory: Callable[[], object]):
        self._factory = factory
        self._obj = factory()

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._obj.decompress(data))  # type: ignore[attr-defined]
            if not self._obj.eof:  # type: ignore[attr-defined]
                break
            data = self._obj.unused_data  # type: ignore[attr-defined]
            self._obj = self._factory()
        return b"".join(out)

    def finish(self) -> bytes:
        return b""


class _Whole:
    """Codecs without a streaming decoder here (brotli): buffer, then decompress once."""

    def __init__(self, fn: Callable[[bytes], bytes]):
        self._fn = fn
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        self._parts.append(data)
        return b""

    def finish(self) -> bytes:
        return self._fn(b"".join(self._parts)) if self._parts else b""


_NATIVE_HEADER = 16 + 9  # CityHash128 checksum, then method byte, compressed size, decompressed size
_NATIVE_NONE, _NATIVE_LZ4, _NATIVE_ZSTD = 0x02, 0x82, 0x90


class _NativeBlocks:
    """ClickHouse's own compressed-block framing (`decompress=1`). Checksums are not verified: the
    server is local, and a request body is read the same way whether or not the client sent them right
    (`native.city_hash128` could check them, if that is ever wanted)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while len(self._buf) >= _NATIVE_HEADER:
            method = self._buf[16]
            compressed, size = struct.unpack_from("<II", self._buf, 17)
            total = 16 + compressed
            if len(self._buf) < total:
                break
            payload = bytes(self._buf[_NATIVE_HEADER:total])
            del self._buf[:total]
            if method == _NATIVE_NONE:
                out.append(payload)
            elif method == _NATIVE_LZ4 and _lz4_block is not None:
                out.append(_lz4_block.decompress(payload, uncompressed_size=size))
            elif method == _NATIVE_ZSTD and _zstd is not None:
                out.append(_zstd.decompress(payload))
            else:
                raise CodecError(f"Unknown compression method in native block: 0x{method:02x}", code=89)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._buf:
            raise CodecError("Truncated compressed block at the end of the body", code=32)
        return b""


# Content-Encodings the engine decompresses itself when reading a file (`FROM INFILE ... COMPRESSION`),
# by ClickHouse's name for them; each reads concatenated frames (members), tested with chdb-core 26.9.
ENGINE_DECODES = {"lz4": "lz4", "zstd": "zstd", "zstandard": "zstd", "gzip": "gzip", "x-gzip": "gzip"}


class BodyDecoder:
    """Chains the HTTP Content-Encoding decoder and, with `decompress=1`, the native block decoder."""

    def __init__(self, content_encoding: str | None, native: bool):
        self._stages = [s for s in (_http_decoder(content_encoding), _NativeBlocks() if native else None) if s]
        self.identity = not self._stages
        # The engine's name for the body's compression if the engine can undo it alone, else None
        encoding = (content_encoding or "").strip().lower()
        self.engine_compression = None if native else ENGINE_DECODES.get(encoding)

    def feed(self, data: bytes) -> bytes:
        for stage in self._stages:
            if not data:
                break
            data = stage.feed(data)
        return data

    def finish(self) -> bytes:
        tail = b""
        for stage in self._stages:
            tail = (stage.feed(tail) if tail else b"") + stage.finish()
        return tail


def _http_decoder(encoding: str | None):
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return None
    if enc in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    if enc == "lz4" and _lz4_frame is not None:
        return _Frames(_lz4_frame.LZ4FrameDecompressor)
    if enc in ("zstd", "zstandard") and _zstd is not None:
        return _Frames(_zstd.ZstdDecompressor)
    if enc in ("br", "brotli") and _cramjam is not None:
        return _Whole(lambda b: bytes(_cramjam.brotli.decompress(b)))
    if enc in ("xz", "lzma"):
        return _Frames(lzma.LZMADecompressor)
    if enc in ("bz2", "bzip2"):
        return _Frames(bz2.BZ2Decompressor)
    # 89 = UNKNOWN_COMPRESSION_METHOD
    raise CodecError(f"Unknown Content-Encoding of HTTP request: {encoding}", code=89)


# --- responses ------------------------------------------------------------------------------------


class Encoder:
    """Compresses one response as a single stream, chunk by chunk."""

    name = "identity"  # the Content-Encoding it produces

    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _GzipEncoder(Encoder):
    def __init__(self, name: str, level: int):
        self.name = name
        wbits = 16 + zlib.MAX_WBITS if name == "gzip" else zlib.MAX_WBITS
        self._obj = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


class _Lz4Encoder(Encoder):
    name = "lz4"

    def __init__(self) -> None:
        self._obj = _lz4_frame.LZ4FrameCompressor()  # type: ignore[union-attr]
        self._started = False

    def compress(self, data: bytes) -> bytes:
        head = b""
        if not self._started:
            self._started = True
            head = self._obj.begin()
        return head + self._obj.compress(data) if data else head

    def flush(self) -> bytes:
        head = b"" if self._started else self._obj.begin()
        self._started = True
        return head + self._obj.flush()


class _ZstdEncoder(Encoder):
    name = "zstd"

    def __init__(self) -> None:
        self._obj = _zstd.ZstdCompressor(level=1)  # type: ignore[union-attr]

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


class ResponseBody:
    """Turns engine output into response bytes: an optional rewrite of each piece (the Native protocol
    revision a client asked for), then ClickHouse's block compression (`compress=1`) or HTTP compression.
    One per response; pieces must be fed in order."""

    def __init__(
        self,
        encoder: Encoder | None = None,
        rewrite: Callable[[bytes], bytes] | None = None,
        blocks: Callable[[bytes], bytes] | None = None,
    ):
        self.encoder = encoder
        self.rewrite = rewrite
        self.blocks = blocks
        self.content_encoding = encoder.name if encoder is not None and blocks is None else None

    def feed(self, data: bytes) -> bytes:
        if self.rewrite is not None and data:
            data = self.rewrite(data)
        return self.frame(data)

    def frame(self, data: bytes) -> bytes:
        """Compression only, for text that is not engine output (an error written mid-stream)."""
        if self.blocks is not None:
            return self.blocks(data) if data else b""
        if self.encoder is not None:
            return self.encoder.compress(data)
        return data

    def finish(self) -> bytes:
        if self.blocks is None and self.encoder is not None:
            return self.encoder.flush()
        return b""


def _supported_encoders() -> dict[str, Callable[[int], Encoder]]:
    found: dict[str, Callable[[int], Encoder]] = {}
    # Preference order: cheapest first, the server is usually on the same host as the client
    if _lz4_frame is not None:
        found["lz4"] = lambda level: _Lz4Encoder()
    if _zstd is not None:
        found["zstd"] = lambda level: _ZstdEncoder()
    found["gzip"] = lambda level: _GzipEncoder("gzip", level)
    found["deflate"] = lambda level: _GzipEncoder("deflate", level)
    return found


_ENCODERS = _supported_encoders()


def response_encoder(accept_encoding: str | None, level: int = 3) -> Encoder | None:
    """The encoder for a client's Accept-Encoding, or None to answer uncompressed."""
    if not accept_encoding:
        return None
    offered = set()
    for item in accept_encoding.split(","):
        name, _, params = item.strip().lower().partition(";")
        if params.replace(" ", "") in ("q=0", "q=0.0"):
            continue
        offered.add(name.strip())
    for name, factory in _ENCODERS.items():
        if name in offered:
            return factory(level)
    return None
