"""CityHash128 as ClickHouse uses it (CityHash v1.0.2): the checksum of its compressed-block framing.

Needed to answer `compress=1` requests (clickhouse-go asks for that when told to use lz4 or zstd over
HTTP), because the client verifies every block's checksum. No installed library provides this variant,
so it is ported from github.com/go-faster/city (the Go client's own implementation). Pure Python costs
roughly 50 ms per MiB, acceptable for the dashboard-sized results that come this way.
"""

from __future__ import annotations

import struct

_M = 0xFFFFFFFFFFFFFFFF
K0 = 0xC3A5C85C97CB3127
K1 = 0xB492B66FBE98F273
K2 = 0x9AE16A3B2F90404F
K3 = 0xC949D7C7509E6557
_KMUL = 0x9DDFEA08EB382D69

_u64 = struct.Struct("<Q").unpack_from
_u32 = struct.Struct("<I").unpack_from
_four = struct.Struct("<4Q").unpack_from


def _rot(val: int, shift: int) -> int:
    return val if shift == 0 else ((val >> shift) | (val << (64 - shift))) & _M


def _h16(u: int, v: int) -> int:
    a = ((u ^ v) * _KMUL) & _M
    a ^= a >> 47
    b = ((v ^ a) * _KMUL) & _M
    b ^= b >> 47
    return (b * _KMUL) & _M


def _shift_mix(val: int) -> int:
    return val ^ (val >> 47)


def _h0to16(s: bytes, off: int, length: int) -> int:
    if length > 8:
        a = _u64(s, off)[0]
        b = _u64(s, off + length - 8)[0]
        return _h16(a, _rot((b + length) & _M, length)) ^ b
    if length >= 4:
        a = _u32(s, off)[0]
        return _h16((length + (a << 3)) & _M, _u32(s, off + length - 4)[0])
    if length > 0:
        a, b, c = s[off], s[off + (length >> 1)], s[off + length - 1]
        y = a + (b << 8)
        z = length + (c << 2)
        return (_shift_mix(((y * K2) ^ (z * K3)) & _M) * K2) & _M
    return K2


def _weak32(s: bytes, off: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = _four(s, off)
    a = (a + w) & _M
    b = _rot((b + a + z) & _M, 21)
    c = a
    a = (a + x + y) & _M
    b = (b + _rot(a, 44)) & _M
    return (a + z) & _M, (b + c) & _M


def _murmur(s: bytes, off: int, length: int, lo: int, hi: int) -> tuple[int, int]:
    a, b = lo, hi
    if length <= 16:
        a = (_shift_mix((a * K1) & _M) * K1) & _M
        c = (b * K1 + _h0to16(s, off, length)) & _M
        d = _shift_mix((a + (_u64(s, off)[0] if length >= 8 else c)) & _M)
    else:
        c = _h16((_u64(s, off + length - 8)[0] + K1) & _M, a)
        d = _h16((b + length) & _M, (c + _u64(s, off + length - 16)[0]) & _M)
        a = (a + d) & _M
        remaining = length - 16
        while True:  # a do-while in the original
            a ^= (_shift_mix((_u64(s, off)[0] * K1) & _M) * K1) & _M
            a = (a * K1) & _M
            b ^= a
            c ^= (_shift_mix((_u64(s, off + 8)[0] * K1) & _M) * K1) & _M
            c = (c * K1) & _M
            d ^= c
            off += 16
            remaining -= 16
            if remaining <= 0:
                break
    a = _h16(a, c)
    b = _h16(d, b)
    return a ^ b, _h16(b, a)


def _seeded(s: bytes, off: int, length: int, lo: int, hi: int) -> tuple[int, int]:
    if length < 128:
        return _murmur(s, off, length, lo, hi)
    end = off + length
    x, y = lo, hi
    z = (length * K1) & _M
    v0 = (_rot(y ^ K1, 49) * K1 + _u64(s, off)[0]) & _M
    v1 = (_rot(v0, 42) * K1 + _u64(s, off + 8)[0]) & _M
    w0 = (_rot((y + z) & _M, 35) * K1 + x) & _M
    w1 = (_rot((x + _u64(s, off + 88)[0]) & _M, 53) * K1) & _M
    while end - off >= 128:
        for base in (off, off + 64):
            x = (_rot((x + y + v0 + _u64(s, base + 16)[0]) & _M, 37) * K1) & _M
            y = (_rot((y + v1 + _u64(s, base + 48)[0]) & _M, 42) * K1) & _M
            x ^= w1
            y ^= v0
            z = _rot(z ^ w0, 33)
            v0, v1 = _weak32(s, base, (v1 * K1) & _M, (x + w0) & _M)
            w0, w1 = _weak32(s, base + 32, (z + w1) & _M, y)
            z, x = x, z
        off += 128
    y = (y + _rot(w0, 37) * K0 + z) & _M
    x = (x + _rot((v0 + z) & _M, 49) * K0) & _M
    tail = end - off
    i = 0
    while i < tail:
        i += 32
        y = (_rot((y - x) & _M, 42) * K0 + v1) & _M
        w0 = (w0 + _u64(s, end - i + 16)[0]) & _M
        x = (_rot(x, 49) * K0 + w0) & _M
        w0 = (w0 + v0) & _M
        v0, v1 = _weak32(s, end - i, v0, v1)
    x = _h16(x, v0)
    y = _h16(y, w0)
    return (_h16((x + v1) & _M, w1) + y) & _M, _h16((x + w1) & _M, (y + v1) & _M)


def city_hash128(data: bytes) -> tuple[int, int]:
    """(low, high) 64-bit halves of ClickHouse's CityHash128 of `data`."""
    length = len(data)
    if length >= 16:
        return _seeded(data, 16, length - 16, _u64(data, 0)[0] ^ K3, _u64(data, 8)[0])
    if length >= 8:
        return _seeded(b"", 0, 0, _u64(data, 0)[0] ^ ((length * K0) & _M), _u64(data, length - 8)[0] ^ K1)
    return _seeded(data, 0, length, K0, K1)
