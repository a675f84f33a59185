"""Names for what the chain stores as bytes: record kinds, scopes, purposes, addresses, times."""

from __future__ import annotations

import time
from typing import Final

from medmesh.interop.fhir.types import SUPPORTED_TYPES
from medmesh.ledger.contracts import ALL_SCOPE, BREAK_GLASS_SCOPE, Purpose, kind_tag

__all__ = [
    "DURATIONS",
    "KNOWN_KINDS",
    "PURPOSES",
    "kind_name",
    "scope_label",
    "short_address",
    "when",
]

KNOWN_KINDS: Final[tuple[str, ...]] = (
    *(f"fhir:{t}" for t in SUPPORTED_TYPES),
    "dicom:study",
    "dicom:instance",
    "document",
)
_BY_TAG: Final = {kind_tag(k): k for k in KNOWN_KINDS}
PURPOSES: Final[tuple[str, ...]] = tuple(m.name.lower() for m in Purpose if m.name)
DURATIONS: Final[tuple[tuple[str, str, int], ...]] = (
    ("1d", "1 day", 86400),
    ("30d", "30 days", 30 * 86400),
    ("90d", "90 days", 90 * 86400),
    ("1y", "1 year", 365 * 86400),
)


def kind_name(tag: bytes) -> str:
    """``fhir:Observation`` for its 4-byte tag (``kind 0x…`` for kinds not known here)."""
    return _BY_TAG.get(bytes(tag), f"kind 0x{bytes(tag).hex()}")


def kind_label(tag: bytes) -> str:
    """``Observation``, ``DICOM study``, ``Document``: a kind for people."""
    name = kind_name(tag)
    if name.startswith("fhir:"):
        return name[5:]
    return {
        "dicom:study": "DICOM study",
        "dicom:instance": "DICOM image",
        "document": "Document",
    }.get(name, name)


def scope_label(word: bytes, records: dict[bytes, str] | None = None) -> str:
    """What a grant covers, for people: ``all records``, ``Observation records``, ``one
    record (…)``."""
    if word == ALL_SCOPE:
        return "all records"
    if word == BREAK_GLASS_SCOPE:
        return "emergency access (break-glass)"
    if word[:28] == b"\0" * 28:
        return f"{kind_label(word[28:])} records"
    named = (records or {}).get(word)
    return f"one record: {named}" if named else f"one record (0x{word[:4].hex()}…)"


def short_address(address: str) -> str:
    """``0x1234…abcd``."""
    return f"{address[:6]}…{address[-4:]}" if len(address) > 12 else address


def when(at: float) -> str:
    """A unix time as ``2026-12-06 06:25 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
