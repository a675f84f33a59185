"""The sealed record: key capsules for its recipients, then the sealed stream.

This is the byte format of every object medmesh stores. Layout::

    magic     5 bytes   b"MMREC"
    version   1 byte    1
    count     u16 BE    number of capsules (1..1024)
    count x   u32 BE length || KeyCapsule bytes   (see capsule.py)
    stream              the STREAM header and segments (see stream.py)

One fresh data key (DEK) seals the stream; each capsule wraps that DEK for one recipient
with HPKE, with the SHA-256 of the stream header as HPKE context, so a capsule only opens
the stream it was made for. Capsules sit in front of the stream so that a reader holding
only the object (from any store, including plain IPFS) can open it: it finds the capsule
for its key id, unwraps the DEK and checks it against the stream's key commitment before
decrypting anything. More recipients can be given capsules later, as separate small blocks
made with :func:`wrap_for_record` (the gateway of a later layer hands them out).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from medmesh.crypto.capsule import KeyCapsule, unwrap_key, wrap_key
from medmesh.crypto.errors import CapsuleError, InvalidHeaderError, WrongRecipientError
from medmesh.crypto.keys import EncryptionPrivateKey, EncryptionPublicKey
from medmesh.crypto.stream import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    BytesLike,
    Opener,
    Sealer,
    new_data_key,
)
from medmesh.errors import InvalidInputError

__all__ = [
    "MAX_RECIPIENTS",
    "RECORD_MAGIC",
    "NoCapsuleError",
    "RecordOpener",
    "RecordSealer",
    "SealJob",
    "open_record",
    "read_prefix",
    "seal_job",
    "seal_one",
    "seal_record",
    "wrap_for_record",
]

RECORD_MAGIC: Final = b"MMREC"
RECORD_VERSION: Final = 1
MAX_RECIPIENTS: Final = 1024
_MAX_CAPSULE: Final = 4096
_FIXED: Final = struct.Struct(">5sBH")


class NoCapsuleError(WrongRecipientError):
    """The record holds no capsule for any of the given keys."""

    code = "no_capsule"


def _context(stream_header: bytes) -> bytes:
    return hashlib.sha256(stream_header).digest()


class RecordSealer:
    """Seal a record for ``recipients`` (at least one), streaming, bounded memory.

    >>> sealer = RecordSealer([alice.public_key()])      # doctest: +SKIP
    >>> blob = sealer.update(b"...") + sealer.finalize()  # doctest: +SKIP
    """

    def __init__(
        self,
        recipients: Sequence[EncryptionPublicKey],
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        if not recipients:
            raise InvalidInputError("a record needs at least one recipient")
        if len(recipients) > MAX_RECIPIENTS:
            raise InvalidInputError(f"at most {MAX_RECIPIENTS} recipients per record")
        dek = new_data_key()
        self._sealer = Sealer(dek, segment_size)
        ctx = _context(self._sealer.header)
        capsules = [wrap_key(dek, r, ctx).to_bytes() for r in recipients]
        parts = [_FIXED.pack(RECORD_MAGIC, RECORD_VERSION, len(capsules))]
        for c in capsules:
            parts.append(struct.pack(">I", len(c)))
            parts.append(c)
        self._prefix: bytes | None = b"".join(parts)
        self._dek = dek

    def update(self, data: BytesLike) -> bytes:
        out = self._sealer.update(data)
        if self._prefix is not None:
            out, self._prefix = self._prefix + out, None
        return out

    def finalize(self) -> bytes:
        out = self._sealer.finalize()
        if self._prefix is not None:
            out, self._prefix = self._prefix + out, None
        return out


#: A record to seal in another process: its plaintext and each recipient's (suite, key).
SealJob = tuple[bytes, tuple[tuple[str, bytes], ...]]


def seal_job(data: bytes, recipients: Sequence[EncryptionPublicKey]) -> SealJob:
    """What :func:`seal_one` needs, as plain picklable values."""
    return bytes(data), tuple((r.suite, r.to_bytes()) for r in recipients)


def seal_one(job: SealJob) -> bytes:
    """Seal one small record in one piece (a module-level function: a worker process can
    run it, ``medmesh.workers``)."""
    data, keys = job
    sealer = RecordSealer([_public_key(suite, raw) for suite, raw in keys])
    return sealer.update(data) + sealer.finalize()


@functools.lru_cache(maxsize=4096)
def _public_key(suite: str, raw: bytes) -> EncryptionPublicKey:
    """A recipient's key, parsed once per worker (a batch names the same few thousand)."""
    return EncryptionPublicKey.from_bytes(suite, raw)


def seal_record(
    chunks: Iterable[BytesLike],
    recipients: Sequence[EncryptionPublicKey],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> Iterator[bytes]:
    """Yield the sealed record of the plaintext ``chunks``."""
    sealer = RecordSealer(recipients, segment_size)
    for chunk in chunks:
        out = sealer.update(chunk)
        if out:
            yield out
    yield sealer.finalize()


def read_prefix(data: bytes) -> tuple[list[KeyCapsule], int] | None:
    """Parse the capsules at the start of ``data``.

    Returns ``(capsules, offset of the stream)``, or None if ``data`` is too short to tell.
    Raises :class:`InvalidHeaderError` if it is not a medmesh record.
    """
    if len(data) < _FIXED.size:
        if not RECORD_MAGIC.startswith(bytes(data[:5])):
            raise InvalidHeaderError("not a medmesh record")
        return None
    magic, version, count = _FIXED.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise InvalidHeaderError("not a medmesh record")
    if version != RECORD_VERSION:
        raise InvalidHeaderError(f"unsupported record version {version}")
    if not 1 <= count <= MAX_RECIPIENTS:
        raise InvalidHeaderError("record has an invalid capsule count")
    pos = _FIXED.size
    capsules: list[KeyCapsule] = []
    for _ in range(count):
        if len(data) < pos + 4:
            return None
        (length,) = struct.unpack_from(">I", data, pos)
        if not 0 < length <= _MAX_CAPSULE:
            raise InvalidHeaderError("record has a malformed capsule")
        if len(data) < pos + 4 + length:
            return None
        capsules.append(KeyCapsule.from_bytes(bytes(data[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return capsules, pos


class RecordOpener:
    """Open a sealed record with one of ``keys`` (or an ``extra`` capsule given separately).

    Plaintext returned by :meth:`update` is authentic but the record is only known to be
    complete after :meth:`finalize` returns: write to a temporary file and rename it then.
    """

    def __init__(
        self, keys: Sequence[EncryptionPrivateKey], extra: Sequence[KeyCapsule] = ()
    ) -> None:
        if not keys:
            raise InvalidInputError("no decryption key given")
        self._keys = list(keys)
        self._extra = list(extra)
        self._buf = bytearray()
        self._opener: Opener | None = None

    def _start(self) -> bytes:
        parsed = read_prefix(bytes(self._buf))
        if parsed is None:
            return b""
        capsules, offset = parsed
        if len(self._buf) < offset + HEADER_SIZE:
            return b""
        stream_header = bytes(self._buf[offset : offset + HEADER_SIZE])
        ctx = _context(stream_header)
        dek: bytes | None = None
        by_id = {(k.suite, bytes(k.key_id)): k for k in self._keys}
        for capsule in [*self._extra, *capsules]:
            key = by_id.get((capsule.suite, bytes(capsule.key_id)))
            if key is None:
                continue
            try:
                dek = unwrap_key(capsule, key, ctx)
                break
            except CapsuleError:
                continue
        if dek is None:
            raise NoCapsuleError("this record was not sealed for any of your keys")
        self._opener = Opener(dek)
        rest = bytes(self._buf[offset:])
        self._buf.clear()
        return self._opener.update(rest)

    def update(self, data: BytesLike) -> bytes:
        if self._opener is not None:
            return self._opener.update(data)
        self._buf += data
        return self._start()

    def finalize(self) -> bytes:
        if self._opener is None:
            out = self._start()
            if self._opener is None:
                raise InvalidHeaderError("record is truncated before its sealed stream")
            return out + self._opener.finalize()
        return self._opener.finalize()


def open_record(
    chunks: Iterable[BytesLike], keys: Sequence[EncryptionPrivateKey]
) -> Iterator[bytes]:
    """Yield the plaintext of a sealed record (raises on any tampering, at the end at latest)."""
    opener = RecordOpener(keys)
    for chunk in chunks:
        out = opener.update(chunk)
        if out:
            yield out
    yield opener.finalize()


def wrap_for_record(
    record_prefix: bytes, owner_key: EncryptionPrivateKey, recipient: EncryptionPublicKey
) -> KeyCapsule:
    """A new capsule for ``recipient``, made by a current recipient from the record's start."""
    parsed = read_prefix(record_prefix)
    if parsed is None or len(record_prefix) < parsed[1] + HEADER_SIZE:
        raise InvalidInputError("need the record's first bytes up to its stream header")
    capsules, offset = parsed
    stream_header = record_prefix[offset : offset + HEADER_SIZE]
    ctx = _context(stream_header)
    for capsule in capsules:
        if capsule.key_id == owner_key.key_id and capsule.suite == owner_key.suite:
            return wrap_key(unwrap_key(capsule, owner_key, ctx), recipient, ctx)
    raise NoCapsuleError("this record was not sealed for your key")
