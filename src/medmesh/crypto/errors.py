"""Errors raised when sealed data or key capsules fail to open.

Every failure to open protected data is a :class:`DecryptionError`, itself a
:class:`medmesh.errors.IntegrityError`, so callers can catch the whole family at once or
one precise cause. Messages name the failing part (header, segment index, capsule field)
and never contain key bytes, plaintext or ciphertext.

    IntegrityError (medmesh.errors)
    └── DecryptionError                  sealed stream or capsule failed to open
        ├── InvalidHeaderError           bad magic, version, suite or segment size; short header
        ├── WrongKeyError                key commitment mismatch (checked before any segment)
        ├── TruncatedStreamError         the stream ends without its final segment
        ├── SegmentOrderError            a segment authenticates at another position
        ├── SegmentTamperedError         a segment fails authentication (index in message)
        ├── TrailingDataError            bytes follow the final segment
        └── CapsuleError                 key capsule malformed or fails to decrypt
            └── WrongRecipientError      capsule is addressed to another key
"""

from __future__ import annotations

from medmesh.errors import IntegrityError

__all__ = [
    "CapsuleError",
    "DecryptionError",
    "InvalidHeaderError",
    "SegmentOrderError",
    "SegmentTamperedError",
    "TrailingDataError",
    "TruncatedStreamError",
    "WrongKeyError",
    "WrongRecipientError",
]


class DecryptionError(IntegrityError):
    """Sealed data or a key capsule failed to open."""

    code = "decryption_failed"


class InvalidHeaderError(DecryptionError):
    """The sealed stream's header is malformed or unsupported."""

    code = "invalid_seal_header"


class WrongKeyError(DecryptionError):
    """The data key does not match the sealed stream's key commitment."""

    code = "wrong_key"


class TruncatedStreamError(DecryptionError):
    """The sealed stream ends before its final segment."""

    code = "truncated_stream"


class SegmentOrderError(DecryptionError):
    """A segment of the sealed stream is out of place (reordered or spliced)."""

    code = "segment_order"

    def __init__(
        self, message: str | None = None, index: int | None = None, found: int | None = None
    ) -> None:
        super().__init__(message)
        self.index = index
        self.found = found


class SegmentTamperedError(DecryptionError):
    """A segment of the sealed stream failed authentication."""

    code = "segment_tampered"

    def __init__(self, message: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class TrailingDataError(DecryptionError):
    """Bytes follow the final segment of the sealed stream."""

    code = "trailing_data"


class CapsuleError(DecryptionError):
    """The key capsule is malformed or failed to decrypt."""

    code = "capsule"


class WrongRecipientError(CapsuleError):
    """The key capsule is addressed to a different key."""

    code = "wrong_recipient"
