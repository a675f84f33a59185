"""Streaming AEAD: the format every medmesh record is sealed in.

Design
------
A record is encrypted under a fresh random 32-byte data key (DEK) with AES-256-GCM, cut into
fixed-size plaintext segments (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
Vizár, as used by Tink's streaming AEAD and by age). Each segment is sealed on its own with a
nonce made of a random per-object prefix, the segment's counter and a "last segment" flag, so:

* memory stays bounded for multi-GB objects (one segment at a time);
* any segment can be opened alone (random access, range reads);
* reordering, splicing, truncation and appending are detected, because a segment only
  authenticates at its own position and only the final segment carries the last flag.

The DEK is used directly as the AES-256-GCM key; it is random per object and never reused, so
a 7-byte random prefix is enough to keep nonces distinct even if a key were reused by mistake.
GCM does not commit to its key, so the header carries an HMAC-SHA256 key commitment: a wrong
key is rejected before any segment is decrypted, and no two keys can open the same stream.

Byte layout (all integers big-endian)
-------------------------------------
Header, ``HEADER_SIZE`` = 51 bytes::

    offset  size  field
         0     6  magic            b"MMSEAL"
         6     1  version          1
         7     1  suite            1 = AES-256-GCM
         8     4  segment_size     u32, plaintext bytes per segment, 4096 .. 16 MiB
        12     7  nonce_prefix     random
        19    32  commitment       HMAC-SHA256(DEK, b"medmesh/seal/v1/commit" || header[0:19])

Then segments ``0 .. n-1`` (n >= 1) follow back to back::

    segment i  = AES-256-GCM(DEK, nonce_i, plaintext_i, aad = header[0:51])
               = ciphertext_i (len(plaintext_i) bytes) || tag (16 bytes)
    nonce_i    = nonce_prefix (7) || i (u32) || last (1 byte: 1 for segment n-1, else 0)

Every segment but the last holds exactly ``segment_size`` plaintext bytes; the last holds
``0 .. segment_size`` bytes. An empty plaintext is one empty final segment; a plaintext that is
an exact multiple of ``segment_size`` ends with a full final segment (no extra empty one). So
``sealed_size(p) = 51 + p + 16 * max(1, ceil(p / segment_size))``, and segment i starts at byte
``51 + i * (segment_size + 16)``.

Failures raise the typed errors of :mod:`medmesh.crypto.errors`. Diagnosis (reordered,
truncated, trailing) only runs on the error path, by trying the failing segment under the other
last flag and under counters within ``ORDER_SEARCH_WINDOW`` of the expected one. No plaintext of
a segment is ever returned before that segment's tag has been verified. Note that the streaming
APIs release each verified segment as soon as it is known not to be the last one: a consumer
must treat the output as incomplete until ``finalize()`` (or the generator) returns without
error.

Limitation: bytes appended after a *partial* final segment cannot be told apart from a tampered
final segment (the stream does not record its own length), so they raise
:class:`SegmentTamperedError`; bytes appended after a full final segment raise
:class:`TrailingDataError`.

Example::

    key = new_data_key()
    sealed = seal(key, b"record")
    assert open_sealed(key, sealed) == b"record"
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medmesh.crypto.errors import (
    DecryptionError,
    InvalidHeaderError,
    SegmentOrderError,
    SegmentTamperedError,
    TrailingDataError,
    TruncatedStreamError,
    WrongKeyError,
)
from medmesh.errors import InvalidInputError

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "NONCE_PREFIX_SIZE",
    "SUITE_AES_256_GCM",
    "TAG_SIZE",
    "VERSION",
    "BytesLike",
    "Opener",
    "SealHeader",
    "Sealer",
    "new_data_key",
    "open_chunks",
    "open_sealed",
    "open_segment",
    "parse_header",
    "plaintext_size",
    "seal",
    "seal_chunks",
    "sealed_size",
    "segment_offset",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""Any contiguous byte buffer accepted as input."""

MAGIC: Final = b"MMSEAL"
VERSION: Final = 1
SUITE_AES_256_GCM: Final = 1
KEY_SIZE: Final = 32
TAG_SIZE: Final = 16
NONCE_PREFIX_SIZE: Final = 7
COMMITMENT_SIZE: Final = 32
MIN_SEGMENT_SIZE: Final = 4096
MAX_SEGMENT_SIZE: Final = 16 * 1024 * 1024
DEFAULT_SEGMENT_SIZE: Final = 1024 * 1024
MAX_SEGMENTS: Final = 2**32
ORDER_SEARCH_WINDOW: Final = 16

_FIXED = struct.Struct(">6sBBI7s")  # magic, version, suite, segment_size, nonce_prefix
_COUNTER = struct.Struct(">IB")  # segment counter, last flag
_COMMIT_LABEL: Final = b"medmesh/seal/v1/commit"
HEADER_SIZE: Final = _FIXED.size + COMMITMENT_SIZE  # 19 + 32 = 51


def new_data_key() -> bytes:
    """Return a fresh random 32-byte data key (DEK) for one record version."""
    return os.urandom(KEY_SIZE)


def _check_key(key: BytesLike) -> bytes:
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise InvalidInputError(f"data key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def _check_segment_size(segment_size: int) -> int:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidInputError(
            f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE} bytes, got {segment_size}"
        )
    return segment_size


def _as_view(data: BytesLike) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _commitment(key: bytes, fixed: bytes) -> bytes:
    return hmac.new(key, _COMMIT_LABEL + fixed, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class SealHeader:
    """The parsed header of a sealed stream (see the module docstring for the layout)."""

    segment_size: int
    nonce_prefix: bytes
    commitment: bytes
    version: int = VERSION
    suite: int = SUITE_AES_256_GCM

    @classmethod
    def create(cls, key: BytesLike, segment_size: int, nonce_prefix: bytes) -> SealHeader:
        """Build the header for ``key``, committing to it."""
        key = _check_key(key)
        _check_segment_size(segment_size)
        if len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise InvalidInputError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
        fixed = _FIXED.pack(MAGIC, VERSION, SUITE_AES_256_GCM, segment_size, bytes(nonce_prefix))
        return cls(segment_size, bytes(nonce_prefix), _commitment(key, fixed))

    def _fixed(self) -> bytes:
        return _FIXED.pack(MAGIC, self.version, self.suite, self.segment_size, self.nonce_prefix)

    def to_bytes(self) -> bytes:
        """Serialize to the fixed ``HEADER_SIZE``-byte layout."""
        return self._fixed() + self.commitment

    def verify_key(self, key: BytesLike) -> None:
        """Raise :class:`WrongKeyError` unless ``key`` matches the key commitment."""
        expected = _commitment(_check_key(key), self._fixed())
        if not hmac.compare_digest(expected, self.commitment):
            raise WrongKeyError(
                "the data key does not match the header's key commitment "
                "(wrong key, or the header was altered)"
            )

    @property
    def segment_ciphertext_size(self) -> int:
        """Size in bytes of a full ciphertext segment (``segment_size + 16``)."""
        return self.segment_size + TAG_SIZE


def parse_header(data: BytesLike) -> SealHeader:
    """Parse the first ``HEADER_SIZE`` bytes of a sealed stream.

    Extra bytes after the header are ignored, so the start of a sealed object can be passed.
    Raises :class:`InvalidHeaderError` on a short header, bad magic, unknown version or suite,
    or a segment size out of range. The key commitment is not checked here (it needs the key):
    see :meth:`SealHeader.verify_key`.
    """
    view = _as_view(data)
    if len(view) < HEADER_SIZE:
        raise InvalidHeaderError(
            f"sealed header is {len(view)} bytes, expected at least {HEADER_SIZE}"
        )
    magic, version, suite, segment_size, prefix = _FIXED.unpack(view[: _FIXED.size])
    if magic != MAGIC:
        raise InvalidHeaderError("not a medmesh sealed stream (bad magic)")
    if version != VERSION:
        raise InvalidHeaderError(f"unsupported sealed stream version {version}")
    if suite != SUITE_AES_256_GCM:
        raise InvalidHeaderError(f"unsupported sealed stream suite {suite}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidHeaderError(f"segment size {segment_size} out of range")
    return SealHeader(segment_size, prefix, bytes(view[_FIXED.size : HEADER_SIZE]), version, suite)


def sealed_size(plaintext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Return the size of the sealed stream for a plaintext of ``plaintext_size`` bytes."""
    _check_segment_size(segment_size)
    if plaintext_size < 0:
        raise InvalidInputError("plaintext size must be >= 0")
    segments = max(1, -(-plaintext_size // segment_size))
    if segments > MAX_SEGMENTS:
        raise InvalidInputError("plaintext too large for this segment size")
    return HEADER_SIZE + plaintext_size + TAG_SIZE * segments


def plaintext_size(sealed_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Return the plaintext size of a sealed stream of ``sealed_size`` bytes.

    The inverse of :func:`sealed_size`. Raises :class:`InvalidInputError` for a size no
    sealed stream can have.
    """
    _check_segment_size(segment_size)
    body = sealed_size - HEADER_SIZE
    full, rest = divmod(body, segment_size + TAG_SIZE)
    if body < TAG_SIZE or 0 < rest < TAG_SIZE or (rest == TAG_SIZE and full > 0):
        raise InvalidInputError(f"{sealed_size} bytes is not a valid sealed stream size")
    if rest == 0:
        return full * segment_size
    return full * segment_size + rest - TAG_SIZE


def segment_offset(index: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Return the byte offset of ciphertext segment ``index`` in the sealed stream."""
    _check_segment_size(segment_size)
    if not 0 <= index < MAX_SEGMENTS:
        raise InvalidInputError(f"segment index {index} out of range")
    return HEADER_SIZE + index * (segment_size + TAG_SIZE)


class _SegmentCipher:
    """AES-256-GCM over the segments of one stream; internal."""

    __slots__ = ("_aad", "_aead", "_prefix")

    def __init__(self, key: bytes, header: SealHeader) -> None:
        self._aead = AESGCM(key)
        self._aad = header.to_bytes()
        self._prefix = header.nonce_prefix

    def _nonce(self, index: int, last: bool) -> bytes:
        return self._prefix + _COUNTER.pack(index, last)

    def seal(self, index: int, plaintext: BytesLike, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plaintext, self._aad)

    def open(self, index: int, ciphertext: BytesLike, last: bool) -> bytes:
        """Decrypt one segment; raises :class:`InvalidTag` (never returns unverified data)."""
        return self._aead.decrypt(self._nonce(index, last), ciphertext, self._aad)

    def _authenticates(self, index: int, ciphertext: BytesLike, last: bool) -> bool:
        try:
            self.open(index, ciphertext, last)
        except InvalidTag:
            return False
        return True

    def diagnose(
        self, index: int, ciphertext: BytesLike, last: bool, hint: str = ""
    ) -> DecryptionError:
        """Explain why ``ciphertext`` did not authenticate as segment ``index``/``last``.

        Error path only: it may decrypt the segment up to ``4 * ORDER_SEARCH_WINDOW + 1``
        more times.
        """
        if self._authenticates(index, ciphertext, not last):
            if last:
                return TruncatedStreamError(
                    f"sealed stream ends after segment {index} without its final segment"
                )
            return TrailingDataError(f"data follows the final segment (segment {index})")
        low = max(0, index - ORDER_SEARCH_WINDOW)
        high = min(MAX_SEGMENTS - 1, index + ORDER_SEARCH_WINDOW)
        for other in range(low, high + 1):
            if other == index:
                continue
            for flag in (False, True):
                if self._authenticates(other, ciphertext, flag):
                    return SegmentOrderError(
                        f"segment at position {index} belongs at position {other}",
                        index=index,
                        found=other,
                    )
        return SegmentTamperedError(f"segment {index} failed authentication{hint}", index=index)


class _Framer:
    """Cuts a byte stream into frames of ``size`` bytes, holding back the last one.

    A frame is released only once at least one more byte has arrived after it, because until
    then it could be the stream's final frame. Frames are handed out as memoryviews valid only
    during the callback; the held-back tail (at most ``size`` bytes) is copied.
    """

    __slots__ = ("_buf", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._buf = bytearray()

    def push(self, data: memoryview, emit: Callable[[memoryview], None]) -> None:
        size, buf = self._size, self._buf
        n, pos = len(data), 0
        if buf:
            pos = min(size - len(buf), n)
            buf += data[:pos]
            if pos == n:
                return
            with memoryview(buf) as frame:  # buf is full and more data follows
                emit(frame)
            buf.clear()
        while n - pos > size:
            emit(data[pos : pos + size])
            pos += size
        buf += data[pos:]

    @property
    def tail(self) -> bytearray:
        return self._buf


class Sealer:
    """Incremental sealer with bounded memory.

    The first output (of ``update`` or ``finalize``) starts with the header; the concatenation
    of all outputs is the sealed stream, identical to :func:`seal` with the same nonce prefix.
    ``update`` returns the ciphertext of each segment that is complete and known not to be the
    last (one segment is held back so the last flag can be set); ``finalize`` seals the rest.

    Example::

        sealer = Sealer(key)
        with open(src, "rb") as f, open(dst, "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(sealer.update(chunk))
            out.write(sealer.finalize())

    ``nonce_prefix`` is for tests and reproducible vectors only; leave it ``None``.
    """

    def __init__(
        self,
        key: BytesLike,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        nonce_prefix: bytes | None = None,
    ) -> None:
        key = _check_key(key)
        if nonce_prefix is None:
            nonce_prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._header = SealHeader.create(key, segment_size, nonce_prefix)
        self._header_bytes = self._header.to_bytes()
        self._cipher = _SegmentCipher(key, self._header)
        self._framer = _Framer(segment_size)
        self._index = 0
        self._header_sent = False
        self._finished = False

    @property
    def header(self) -> bytes:
        """The ``HEADER_SIZE``-byte header (also emitted at the start of the first output)."""
        return self._header_bytes

    @property
    def seal_header(self) -> SealHeader:
        """The header as a :class:`SealHeader`."""
        return self._header

    def _start(self) -> list[bytes]:
        if self._finished:
            raise InvalidInputError("this Sealer is already finalized")
        if self._header_sent:
            return []
        self._header_sent = True
        return [self._header_bytes]

    def _seal_next(self, plaintext: BytesLike, last: bool) -> bytes:
        index = self._index
        if index >= MAX_SEGMENTS - (0 if last else 1):
            raise InvalidInputError("plaintext too large for this segment size")
        self._index = index + 1
        return self._cipher.seal(index, plaintext, last)

    def update(self, data: BytesLike) -> bytes:
        """Add plaintext; return the sealed bytes that are ready (possibly empty)."""
        out = self._start()
        self._framer.push(
            _as_view(data), lambda segment: out.append(self._seal_next(segment, last=False))
        )
        return b"".join(out)

    def finalize(self) -> bytes:
        """Seal the final segment and return the remaining sealed bytes."""
        out = self._start()
        out.append(self._seal_next(self._framer.tail, last=True))
        self._framer.tail.clear()
        self._finished = True
        return b"".join(out)


class Opener:
    """Incremental opener with bounded memory.

    ``update`` returns the plaintext of every segment that has been verified and is known not
    to be the last one; ``finalize`` verifies and returns the final segment and raises if the
    stream was truncated. The key commitment is checked as soon as the header is complete,
    before any segment is decrypted. After an error the opener refuses further input.

    Example::

        opener = Opener(key)
        for chunk in chunks:
            sink.write(opener.update(chunk))
        sink.write(opener.finalize())   # only now is the plaintext known to be complete
    """

    def __init__(self, key: BytesLike) -> None:
        self._key = _check_key(key)
        self._head = bytearray()
        self._header: SealHeader | None = None
        self._cipher: _SegmentCipher | None = None
        self._framer: _Framer | None = None
        self._index = 0
        self._failed = False
        self._finished = False

    @property
    def header(self) -> SealHeader | None:
        """The parsed header, once it has been read."""
        return self._header

    def _check_usable(self) -> None:
        if self._failed:
            raise InvalidInputError("this Opener already failed")
        if self._finished:
            raise InvalidInputError("this Opener is already finalized")

    def _read_header(self, view: memoryview) -> memoryview:
        need = HEADER_SIZE - len(self._head)
        self._head += view[:need]
        if len(self._head) < HEADER_SIZE:
            return view[len(view) :]
        header = parse_header(self._head)
        header.verify_key(self._key)
        self._header = header
        self._cipher = _SegmentCipher(self._key, header)
        self._framer = _Framer(header.segment_ciphertext_size)
        return view[need:]

    def _open_next(self, cipher: _SegmentCipher, segment: memoryview) -> bytes:
        index = self._index
        if index >= MAX_SEGMENTS - 1:
            raise TrailingDataError("sealed stream has more segments than its counter allows")
        try:
            plaintext = cipher.open(index, segment, last=False)
        except InvalidTag:
            raise cipher.diagnose(index, segment, last=False) from None
        self._index = index + 1
        return plaintext

    def _feed(self, data: BytesLike, out: list[bytes]) -> None:
        self._check_usable()
        try:
            view = _as_view(data)
            if self._cipher is None:
                view = self._read_header(view)
            if self._cipher is None or self._framer is None:
                return
            cipher = self._cipher
            self._framer.push(view, lambda segment: out.append(self._open_next(cipher, segment)))
        except DecryptionError:
            self._failed = True
            raise

    def _finish(self, out: list[bytes]) -> None:
        self._check_usable()
        self._failed = True  # cleared on success
        if self._cipher is None or self._framer is None:
            raise InvalidHeaderError(
                f"sealed stream is {len(self._head)} bytes, shorter than its header"
            )
        tail, index = self._framer.tail, self._index
        if len(tail) < TAG_SIZE:
            where = "inside" if tail else "before"
            raise TruncatedStreamError(f"sealed stream ends {where} segment {index}")
        try:
            out.append(self._cipher.open(index, tail, last=True))
        except InvalidTag:
            hint = " (tampered, cut short, or followed by extra bytes)"
            raise self._cipher.diagnose(index, tail, last=True, hint=hint) from None
        tail.clear()
        self._failed = False
        self._finished = True

    def update(self, data: BytesLike) -> bytes:
        """Add sealed bytes; return the plaintext that is verified and ready (maybe empty)."""
        out: list[bytes] = []
        self._feed(data, out)
        return b"".join(out)

    def finalize(self) -> bytes:
        """Verify the final segment and return its plaintext.

        Raises :class:`TruncatedStreamError` when the stream ends without a final segment.
        """
        out: list[bytes] = []
        self._finish(out)
        return out[0]


def seal_chunks(
    key: BytesLike,
    chunks: Iterable[BytesLike],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    nonce_prefix: bytes | None = None,
) -> Iterator[bytes]:
    """Seal an iterable of plaintext chunks; yield the sealed stream piece by piece."""
    sealer = Sealer(key, segment_size, nonce_prefix)
    for chunk in chunks:
        out = sealer.update(chunk)
        if out:
            yield out
    yield sealer.finalize()


def open_chunks(key: BytesLike, chunks: Iterable[BytesLike]) -> Iterator[bytes]:
    """Open an iterable of sealed chunks; yield verified plaintext piece by piece.

    The plaintext is complete only when the generator finishes without raising.
    """
    opener = Opener(key)
    for chunk in chunks:
        out = opener.update(chunk)
        if out:
            yield out
    out = opener.finalize()
    if out:
        yield out


def seal(
    key: BytesLike,
    data: BytesLike,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    nonce_prefix: bytes | None = None,
) -> bytes:
    """Seal ``data`` in one call (the whole output is built in memory)."""
    sealer = Sealer(key, segment_size, nonce_prefix)
    cipher, view = sealer._cipher, _as_view(data)
    total = len(view)
    count = max(1, -(-total // segment_size))
    if count > MAX_SEGMENTS:
        raise InvalidInputError("plaintext too large for this segment size")
    parts = [sealer.header]
    for index in range(count):
        start = index * segment_size
        parts.append(cipher.seal(index, view[start : start + segment_size], index == count - 1))
    return b"".join(parts)


def open_sealed(key: BytesLike, data: BytesLike) -> bytes:
    """Open a whole sealed stream in one call; see :class:`Opener` for the errors."""
    opener = Opener(key)
    pieces: list[bytes] = []
    opener._feed(data, pieces)
    opener._finish(pieces)
    return b"".join(pieces)


def open_segment(
    key: BytesLike,
    header: BytesLike | SealHeader,
    index: int,
    segment_ciphertext: BytesLike,
    last: bool,
) -> bytes:
    """Open one segment alone (random access).

    ``header`` is the stream's header (bytes or parsed), ``index`` the segment's position,
    ``segment_ciphertext`` its ``len + 16`` bytes as stored at :func:`segment_offset`, and
    ``last`` whether it is the stream's final segment. Raises :class:`WrongKeyError`,
    :class:`SegmentOrderError`, :class:`SegmentTamperedError`, or (if ``last`` is wrong)
    :class:`TruncatedStreamError` / :class:`TrailingDataError`.
    """
    key = _check_key(key)
    parsed = header if isinstance(header, SealHeader) else parse_header(header)
    parsed.verify_key(key)
    if not 0 <= index < MAX_SEGMENTS:
        raise InvalidInputError(f"segment index {index} out of range")
    size = len(_as_view(segment_ciphertext))
    full = parsed.segment_ciphertext_size
    if size != full and (not last or not TAG_SIZE <= size < full):
        raise SegmentTamperedError(
            f"segment {index} is {size} bytes; expected "
            + (f"{TAG_SIZE}..{full}" if last else str(full)),
            index=index,
        )
    cipher = _SegmentCipher(key, parsed)
    try:
        return cipher.open(index, segment_ciphertext, last)
    except InvalidTag:
        raise cipher.diagnose(index, segment_ciphertext, last) from None
