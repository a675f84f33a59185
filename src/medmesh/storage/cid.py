"""Content identifiers (CIDs).

A :class:`Cid` wraps the canonical *binary* form of a CID (v0 or v1). Parsing text that comes
from users or URLs goes through the ``multiformats`` package, the reference Python
implementation; the hot paths (building CIDs for thousands of blocks, printing CIDv1 as
base32) are done here directly on bytes, and tests cross-check both against ``multiformats``.

Only the hash functions the network uses are accepted for verification:
``sha2-256`` (the UnixFS file DAG, as IPFS makes it), ``blake3`` (erasure-coded share blocks,
which IPFS also supports) and ``identity`` (inline data, e.g. the ``bafkqaaa`` probe).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

import blake3
from multiformats import CID as _MfCid

from medmesh.errors import BlockMismatchError, InvalidCidError, InvalidInputError
from medmesh.storage.varint import encode_varint, read_varint

__all__ = [
    "BLAKE3",
    "DAG_CBOR",
    "DAG_PB",
    "IDENTITY",
    "RAW",
    "SHA2_256",
    "Cid",
]

# multicodec codes
RAW: Final = 0x55
DAG_PB: Final = 0x70
DAG_CBOR: Final = 0x71
IDENTITY: Final = 0x00
SHA2_256: Final = 0x12
BLAKE3: Final = 0x1E

_CODEC_NAMES: Final = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}
_HASH_NAMES: Final = {SHA2_256: "sha2-256", BLAKE3: "blake3", IDENTITY: "identity"}
_MAX_IDENTITY_DIGEST: Final = 128  # inline data larger than this is refused
_BASE32_LOWER: Final = re.compile(r"[a-z2-7]+")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(buf, pos, "CID")
    except InvalidInputError as exc:
        raise InvalidCidError("CID has a truncated or oversized varint") from exc


_B32_VALUE: Final = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz234567")}


def _canonical_b32(body: str) -> bool:
    """Whether unpadded lowercase base32 ``body`` is what encoding its bytes gives back: a
    length an encoder can produce and no bits set past the last whole byte."""
    spare = (5 * len(body)) % 8  # bits of the last character beyond the last whole byte
    return spare < 5 and _B32_VALUE[body[-1]] & ((1 << spare) - 1) == 0


def hash_digest(hash_code: int, data: bytes | bytearray | memoryview) -> bytes:
    """Digest of ``data`` under the multihash function ``hash_code``."""
    if hash_code == SHA2_256:
        return hashlib.sha256(data).digest()
    if hash_code == BLAKE3:
        return blake3.blake3(data).digest()
    if hash_code == IDENTITY:
        return bytes(data)
    raise InvalidCidError(f"unsupported multihash function 0x{hash_code:x}")


class Cid:
    """An immutable, hashable CID held in its binary form.

    >>> c = Cid.of(b"hello world\\n")
    >>> str(c)
    'bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4'
    >>> Cid.parse(str(c)) == c
    True
    """

    __slots__ = ("_bytes", "_text", "codec", "digest", "hash_code", "version")

    version: int
    codec: int
    hash_code: int
    digest: bytes
    _bytes: bytes
    _text: str  # the text form, set on first use

    def __init__(self, version: int, codec: int, hash_code: int, digest: bytes) -> None:
        if version == 0 and (codec != DAG_PB or hash_code != SHA2_256 or len(digest) != 32):
            raise InvalidCidError("CIDv0 must be dag-pb with a 32-byte sha2-256 digest")
        if version not in (0, 1):
            raise InvalidCidError(f"unsupported CID version {version}")
        if hash_code not in _HASH_NAMES:
            raise InvalidCidError(f"unsupported multihash function 0x{hash_code:x}")
        if hash_code == IDENTITY and len(digest) > _MAX_IDENTITY_DIGEST:
            raise InvalidCidError("identity CID too large")
        if hash_code != IDENTITY and len(digest) != 32:
            raise InvalidCidError("digest must be 32 bytes")
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "hash_code", hash_code)
        object.__setattr__(self, "digest", digest)
        mh = encode_varint(hash_code) + encode_varint(len(digest)) + digest
        raw = mh if version == 0 else b"\x01" + encode_varint(codec) + mh
        object.__setattr__(self, "_bytes", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Cid is immutable")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def of(
        cls,
        data: bytes | bytearray | memoryview,
        codec: int = RAW,
        hash_code: int = SHA2_256,
        version: int = 1,
    ) -> Cid:
        """The CID of a block's bytes."""
        return cls(version, codec, hash_code, hash_digest(hash_code, data))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Cid:
        """Decode the binary form (as found in dag-pb links, CAR files, DAG-CBOR tag 42)."""
        raw = bytes(raw)
        if len(raw) == 34 and raw[0] == 0x12 and raw[1] == 0x20:
            return cls(0, DAG_PB, SHA2_256, raw[2:])
        version, pos = _read_varint(raw, 0)
        if version != 1:
            raise InvalidCidError(f"unsupported CID version {version}")
        codec, pos = _read_varint(raw, pos)
        hash_code, pos = _read_varint(raw, pos)
        length, pos = _read_varint(raw, pos)
        if len(raw) != pos + length:
            raise InvalidCidError("CID digest length does not match")
        return cls(1, codec, hash_code, raw[pos:])

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Parse a CID string (any multibase, v0 or v1) using ``multiformats``.

        Raises :class:`InvalidCidError` with a message that repeats none of the input.
        """
        if not isinstance(text, str) or not text or len(text) > 512:
            raise InvalidCidError("not a CID: empty or too long")
        if not text.isascii() or not text.isprintable():
            raise InvalidCidError("not a CID: non-printable characters")
        if text[0] == "b" and _BASE32_LOWER.fullmatch(text, 1) and _canonical_b32(text[1:]):
            # fast path for the CIDv1 form medmesh prints (same result as multiformats)
            try:
                raw = base64.b32decode(text[1:].upper() + "=" * (-(len(text) - 1) % 8))
                cid = cls.from_bytes(raw)
            except (ValueError, InvalidCidError):
                cid = None
            if cid is not None:
                object.__setattr__(cid, "_text", text)  # it is its own text form
                return cid
        try:
            mf = _MfCid.decode(text)
        except Exception as exc:  # multiformats raises ValueError, KeyError, binascii.Error
            raise InvalidCidError("not a valid CID") from exc
        try:
            return cls.from_bytes(bytes(mf))
        except InvalidCidError:
            raise
        except Exception as exc:
            raise InvalidCidError("not a valid CID") from exc

    # -- properties --------------------------------------------------------------------
    @property
    def codec_name(self) -> str:
        return _CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")

    @property
    def hash_name(self) -> str:
        return _HASH_NAMES[self.hash_code]

    def __bytes__(self) -> bytes:
        return self._bytes

    @property
    def multihash(self) -> bytes:
        return encode_varint(self.hash_code) + encode_varint(len(self.digest)) + self.digest

    def to_v1(self) -> Cid:
        return self if self.version == 1 else Cid(1, self.codec, self.hash_code, self.digest)

    # -- verification ------------------------------------------------------------------
    def matches(self, block: bytes | bytearray | memoryview) -> bool:
        """True if ``block`` hashes to this CID's digest."""
        return hash_digest(self.hash_code, block) == self.digest

    def verify(self, block: bytes | bytearray | memoryview) -> None:
        """Raise :class:`BlockMismatchError` unless ``block`` hashes to this CID."""
        if not self.matches(block):
            raise BlockMismatchError(f"block does not match CID {self}")

    # -- text form ---------------------------------------------------------------------
    def __str__(self) -> str:
        try:
            return self._text
        except AttributeError:
            pass
        if self.version == 0:
            text = str(_MfCid.decode(self._bytes))  # base58btc
        else:
            text = "b" + base64.b32encode(self._bytes).decode("ascii").rstrip("=").lower()
        object.__setattr__(self, "_text", text)  # computed once: base32 is slow in Python
        return text

    def __repr__(self) -> str:
        return f"Cid({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cid) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __lt__(self, other: Cid) -> bool:
        return self._bytes < other._bytes

    def __reduce__(self) -> tuple[object, ...]:
        # pickled between medmesh's own processes (worker pools send encoded objects, ten
        # CIDs each): rebuilt from its parts, not parsed and checked again
        # (with its text form, if made: base32 is slow in Python, better made in a worker)
        text = getattr(self, "_text", None)
        parts = (self.version, self.codec, self.hash_code, self.digest, self._bytes, text)
        return (_rebuild, parts)


def _rebuild(
    version: int, codec: int, hash_code: int, digest: bytes, raw: bytes, text: str | None = None
) -> Cid:
    cid = object.__new__(Cid)
    for name, value in (
        ("version", version), ("codec", codec), ("hash_code", hash_code), ("digest", digest),
        ("_bytes", raw),
    ):  # fmt: skip
        object.__setattr__(cid, name, value)
    if text is not None:
        object.__setattr__(cid, "_text", text)
    return cid


#: The empty identity CID used by IPFS gateways as a liveness probe.
PROBE_CID: Final = Cid(1, RAW, IDENTITY, b"")
