"""ClickHouse Native format for clients that name a protocol revision (clickhouse-go, hence Grafana).

Over HTTP, a client may send `client_protocol_version=N`; a ClickHouse server then writes Native blocks as
its TCP protocol does for revision N: each block starts with BlockInfo, and from revision 54454 every
column carries a "custom serialization" flag between its type and its data. chdb only writes revision 0
(what clickhouse-connect and curl get), and clickhouse-go cannot read that. This module rewrites chdb's
blocks for such clients. The flag is always 0, which is true of what chdb wrote (revision 0 never uses
sparse serialization), but placing it needs the byte length of every column, so the column data is
walked according to its type. Types whose layout is not handled here (Dynamic, Variant, JSON,
AggregateFunction states) raise UnsupportedNativeType.
"""

from __future__ import annotations

import struct

MIN_REVISION_WITH_BLOCK_INFO = 1
MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454

# BlockInfo: field 1 is_overflows=false, field 2 bucket_num=-1, field 0 terminates
_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"

_FIXED = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "DateTime": 4, "Date32": 4, "IPv4": 4, "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}  # fmt: skip

_ALIASES = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "Polygon": "Array(Ring)",
    "MultiLineString": "Array(LineString)",
    "MultiPolygon": "Array(Polygon)",
}

_U64 = struct.Struct("<Q")


class UnsupportedNativeType(Exception):
    """A column type this module cannot walk, so the block cannot be rewritten."""


class NativeFormatError(Exception):
    """The bytes are not whole Native blocks."""


# --- type names -----------------------------------------------------------------------------------


class _Type:
    __slots__ = ("args", "name")

    def __init__(self, name: str, args: list[_Type | str]):
        self.name = name
        self.args = args


def parse_type(text: str) -> _Type:
    typ, pos = _parse(text, 0)
    if text[pos:].strip():
        raise NativeFormatError(f"cannot parse type {text!r}")
    return typ


def _parse(text: str, pos: int) -> tuple[_Type, int]:
    n = len(text)
    while pos < n and text[pos] == " ":
        pos += 1
    start = pos
    while pos < n and (text[pos].isalnum() or text[pos] == "_"):
        pos += 1
    name = text[start:pos]
    # A named tuple element: `name Type`
    rest = pos
    while rest < n and text[rest] == " ":
        rest += 1
    if rest < n and rest > pos and (text[rest].isalpha() or text[rest] == "_"):
        return _parse(text, rest)
    if name in _ALIASES:
        return parse_type(_ALIASES[name]), pos
    args: list[_Type | str] = []
    if pos < n and text[pos] == "(":
        pos += 1
        while True:
            while pos < n and text[pos] == " ":
                pos += 1
            if pos < n and text[pos] in "'-0123456789":
                end = _skip_literal(text, pos)
                args.append(text[pos:end].strip())
                pos = end
            elif pos < n and text[pos] == ")":
                pass
            else:
                arg, pos = _parse(text, pos)
                args.append(arg)
            while pos < n and text[pos] == " ":
                pos += 1
            if pos >= n:
                raise NativeFormatError(f"cannot parse type {text!r}")
            if text[pos] == ",":
                pos += 1
                continue
            if text[pos] == ")":
                pos += 1
                break
            raise NativeFormatError(f"cannot parse type {text!r}")
    return _Type(name, args), pos


def _skip_literal(text: str, pos: int) -> int:
    """Past a literal argument such as `'UTC'`, `3` or `'a' = 1` up to the next top-level , or )."""
    quoted = False
    while pos < len(text):
        ch = text[pos]
        if quoted:
            if ch == "\\":
                pos += 1
            elif ch == "'":
                quoted = False
        elif ch == "'":
            quoted = True
        elif ch in ",)":
            return pos
        pos += 1
    return pos


# --- walking column data --------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip_prefix(typ: _Type, buf: bytes, pos: int) -> int:
    """Past the serialization state prefix, written for the whole column before any of its data."""
    name = typ.name
    if name == "LowCardinality":
        return pos + 8  # keys serialization version
    if name in ("Array", "Nullable", "Tuple", "Map", "SimpleAggregateFunction"):
        for arg in typ.args:
            if isinstance(arg, _Type):
                pos = _skip_prefix(arg, buf, pos)
    return pos


def _fixed_width(typ: _Type) -> int | None:
    name = typ.name
    if name == "Decimal":
        precision = int(str(typ.args[0])) if typ.args else 10
        return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
    if name == "FixedString":
        return int(str(typ.args[0]))
    if name.startswith("Interval"):
        return 8
    return _FIXED.get(name)


def _skip_data(typ: _Type, buf: bytes, pos: int, rows: int) -> int:
    """Past `rows` values of a column's bulk data."""
    if rows == 0:
        return pos
    width = _fixed_width(typ)
    if width is not None:
        return pos + width * rows
    name = typ.name
    if name == "String":
        for _ in range(rows):
            size = buf[pos]
            if size < 0x80:
                pos += 1 + size
            else:
                size, pos = _varint(buf, pos)
                pos += size
        return pos
    if name == "Nullable":
        return _skip_data(_arg(typ, 0), buf, pos + rows, rows)
    if name in ("Array", "Map"):
        (total,) = _U64.unpack_from(buf, pos + 8 * (rows - 1))
        pos += 8 * rows
        if name == "Array":
            return _skip_data(_arg(typ, 0), buf, pos, total)
        pos = _skip_data(_arg(typ, 0), buf, pos, total)
        return _skip_data(_arg(typ, 1), buf, pos, total)
    if name == "Tuple":
        for arg in typ.args:
            if isinstance(arg, _Type):
                pos = _skip_data(arg, buf, pos, rows)
        return pos
    if name == "SimpleAggregateFunction":
        return _skip_data(_arg(typ, 1), buf, pos, rows)
    if name == "LowCardinality":
        return _skip_low_cardinality(typ, buf, pos, rows)
    raise UnsupportedNativeType(name)


def _arg(typ: _Type, i: int) -> _Type:
    arg = typ.args[i]
    if not isinstance(arg, _Type):
        raise NativeFormatError(f"bad type argument in {typ.name}")
    return arg


def _skip_low_cardinality(typ: _Type, buf: bytes, pos: int, rows: int) -> int:
    inner = _arg(typ, 0)
    keys_type = _arg(inner, 0) if inner.name == "Nullable" else inner
    done = 0
    while done < rows:
        (flags,) = _U64.unpack_from(buf, pos)
        pos += 8
        index_width = 1 << (flags & 0xFF)
        if flags & (1 << 8):  # NeedGlobalDictionary: not written by a single-stream Native writer
            raise UnsupportedNativeType("LowCardinality with a shared dictionary")
        if flags & (1 << 9):  # HasAdditionalKeys
            (keys,) = _U64.unpack_from(buf, pos)
            pos = _skip_data(keys_type, buf, pos + 8, keys)
        (count,) = _U64.unpack_from(buf, pos)
        pos += 8 + count * index_width
        done += count
        if count == 0:
            break
    return pos


def upgrade_blocks(data: bytes, revision: int, single_block: bool = False) -> bytes:
    """Rewrite whole revision-0 Native blocks as a server writes them for `client_protocol_version`.

    `single_block` says `data` is exactly one block, as each piece of a chdb result stream is; below
    revision 54454 that block then only needs its BlockInfo in front, and the columns are not walked
    (clickhouse-connect asks for revision 54405, and walking strings in Python is slow).
    """
    if revision < MIN_REVISION_WITH_BLOCK_INFO or not data:
        return data
    if single_block and revision < MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
        return _BLOCK_INFO + data
    flag = b"\x00" if revision >= MIN_REVISION_WITH_CUSTOM_SERIALIZATION else b""
    view = memoryview(data)
    out: list[bytes | memoryview] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            out.append(_BLOCK_INFO)
            start = pos
            columns, pos = _varint(data, pos)
            rows, pos = _varint(data, pos)
            out.append(view[start:pos])
            for _ in range(columns):
                start = pos
                size, pos = _varint(data, pos)
                pos += size
                size, pos = _varint(data, pos)
                typ = parse_type(bytes(view[pos : pos + size]).decode())
                pos += size
                out.append(view[start:pos])
                out.append(flag)
                start = pos
                if rows:
                    pos = _skip_data(typ, data, _skip_prefix(typ, data, pos), rows)
                out.append(view[start:pos])
    except (IndexError, struct.error, ValueError) as exc:
        raise NativeFormatError(f"truncated or malformed Native block: {exc}") from None
    if pos != end:
        raise NativeFormatError("Native block ends past the data")
    return b"".join(out)


# --- ClickHouse's compressed-block framing for responses (`compress=1`) ---------------------------

_LZ4_METHOD = 0x82
_BLOCK = 1 << 20  # max_compress_block_size


_LOW_64_BITS = (1 << 64) - 1


def city_hash128(data: bytes) -> tuple[int, int]:
    """The block checksum: CityHash128 in ClickHouse's variant (CityHash v1.0.2; later CityHash releases
    changed the function), as its two 64-bit words in the order they are written.

    clickhouse-cityhash is ClickHouse's own C++ code (the clickhouse-driver project's binding), so the
    checksum is exactly what clickhouse-go verifies, at C speed. It returns one 128-bit integer whose high
    half is the word written first.
    """
    from clickhouse_cityhash.cityhash import CityHash128

    value = CityHash128(data)
    return value >> 64, value & _LOW_64_BITS


def compress_block(data: bytes) -> bytes:
    """One compressed block: CityHash128 checksum, then method, sizes and the lz4-compressed data."""
    import lz4.block

    packed = lz4.block.compress(data, store_size=False)
    body = struct.pack("<BII", _LZ4_METHOD, 9 + len(packed), len(data)) + packed
    low, high = city_hash128(body)
    return struct.pack("<QQ", low, high) + body


def compress_blocks(data: bytes) -> bytes:
    return b"".join(compress_block(data[i : i + _BLOCK]) for i in range(0, len(data), _BLOCK))
