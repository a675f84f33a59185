"""Consent policy, pure: does a grant cover this request, now?

The contract (``contracts/Consent.vy``) is the authority; this module states the same rules in
Python so that answers built from the indexer ("who can see my records?") and the gateway's
explanations agree with the chain. A request is allowed when:

- the record exists and is not erased;
- the requester owns it, or
- the requester is registered and some grant from the owner to the requester, at the
  record's scope, its kind's scope, all records, or break-glass, has not expired and covers
  every requested purpose (break-glass covers only EMERGENCY).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from medmesh.ledger.contracts import ALL_SCOPE, BREAK_GLASS_SCOPE, Purpose

__all__ = ["Decision", "Grant", "Request", "decide", "scopes_for"]


@dataclass(frozen=True)
class Grant:
    patient: str
    grantee: str
    scope: bytes
    purposes: Purpose
    expiry: int


@dataclass(frozen=True)
class Request:
    requester: str
    record: bytes
    kind: bytes  # 4-byte tag
    owner: str
    purpose: Purpose
    erased: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # short, machine-friendly: "owner", "grant", "no-grant", "expired", ...
    grant: Grant | None = None


def scopes_for(record: bytes, kind: bytes) -> tuple[bytes, ...]:
    """The grant scopes that can cover ``record`` of ``kind``, most specific first."""
    return (record, b"\0" * 28 + kind, ALL_SCOPE, BREAK_GLASS_SCOPE)


def decide(request: Request, grants: Iterable[Grant], *, now: float, registered: bool) -> Decision:
    """Apply the consent rules to ``request`` given the owner's current ``grants``."""
    if request.erased:
        return Decision(False, "erased")
    if request.requester.lower() == request.owner.lower():
        return Decision(True, "owner")
    if not registered:
        return Decision(False, "not-registered")
    if not request.purpose:
        return Decision(False, "no-purpose")
    wanted = set(scopes_for(request.record, request.kind))
    expired = False
    for grant in grants:
        if (
            grant.patient.lower() != request.owner.lower()
            or grant.grantee.lower() != request.requester.lower()
        ):
            continue
        if grant.scope not in wanted:
            continue
        if grant.expiry <= now:
            expired = True
            continue
        if request.purpose & grant.purposes == request.purpose:
            return Decision(True, "grant", grant)
    return Decision(False, "expired" if expired else "no-grant")
