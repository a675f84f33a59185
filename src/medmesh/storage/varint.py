"""Unsigned LEB128 varints, as protobuf and every multiformats encoding use them."""

from __future__ import annotations

from typing import Final

from medmesh.errors import InvalidInputError

__all__ = ["encode_varint", "read_varint", "varint_size"]

_U64: Final = 1 << 64
_SMALL_VARINTS: Final = tuple(bytes([i]) for i in range(128))


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128 (protobuf / multiformats varint) encoding of ``0 <= n < 2**64``."""
    if n < 128:
        if n < 0:
            raise InvalidInputError("varint must not be negative")
        return _SMALL_VARINTS[n]
    if n >= _U64:
        raise InvalidInputError("varint out of range (>= 2**64)")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint_size(n: int) -> int:
    """Number of bytes :func:`encode_varint` produces for ``n``."""
    return max(1, (n.bit_length() + 6) // 7)


def read_varint(buf: bytes | memoryview, pos: int, what: str = "protobuf") -> tuple[int, int]:
    """Decode a varint at ``buf[pos:]``; return ``(value, new_pos)``.

    Raises :class:`InvalidInputError` if it is truncated, longer than 10 bytes or >= 2**64.
    """
    value = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise InvalidInputError(f"{what}: truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise InvalidInputError(f"{what}: varint longer than 10 bytes")
    if value >= _U64:
        raise InvalidInputError(f"{what}: varint out of range (>= 2**64)")
    return value, pos
