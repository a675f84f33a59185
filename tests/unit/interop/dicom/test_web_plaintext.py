"""WADO-RS opens records streamed: with the capsule in the record's header, or with the one
its grant's capsule block holds (a record sealed before the grant); tampering is caught."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from medmesh.crypto.envelope import NoCapsuleError, RecordSealer, wrap_for_record
from medmesh.errors import MedmeshError
from medmesh.identity import Wallet
from medmesh.interop.dicom.web import _plaintext


@dataclass
class _Keeper:
    wallet: Wallet


class _Gateway:
    def __init__(self, sealed: bytes, capsule: bytes | None, piece: int) -> None:
        self.sealed = sealed
        self.capsule = capsule
        self.piece = piece
        self.capsule_asked = 0

    async def ciphertext(self, access: Any) -> AsyncIterator[bytes]:
        for at in range(0, len(self.sealed), self.piece):
            yield self.sealed[at : at + self.piece]

    async def capsule_for(self, access: Any) -> bytes | None:
        self.capsule_asked += 1
        return self.capsule


@dataclass
class _Repo:
    keeper: _Keeper
    gateway: _Gateway


def seal(data: bytes, *wallets: Wallet) -> bytes:
    sealer = RecordSealer([w.encryption_public_key for w in wallets])
    return sealer.update(data) + sealer.finalize()


def read(repo: _Repo) -> bytes:
    async def run() -> bytes:
        return b"".join([p async for p in _plaintext(repo, None)])  # type: ignore[arg-type]

    return asyncio.run(run())


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024 + 7])
@pytest.mark.parametrize("piece", [1000, 256 * 1024])
def test_sealed_for_the_institution(size: int, piece: int) -> None:
    me = Wallet.create()
    data = os.urandom(size)
    gateway = _Gateway(seal(data, Wallet.create(), me), None, piece)
    assert read(_Repo(_Keeper(me), gateway)) == data
    assert gateway.capsule_asked == 0


@pytest.mark.parametrize("size", [10, 2 * 1024 * 1024 + 1])
@pytest.mark.parametrize("piece", [7, 256 * 1024])
def test_sealed_before_the_grant_opens_with_the_grants_capsule(size: int, piece: int) -> None:
    patient, me = Wallet.create(), Wallet.create()
    data = os.urandom(size)
    sealed = seal(data, patient)
    capsule = wrap_for_record(
        sealed[: 64 * 1024], patient.encryption_keys[-1], me.encryption_public_key
    )
    gateway = _Gateway(sealed, capsule.to_bytes(), piece)
    assert read(_Repo(_Keeper(me), gateway)) == data
    assert gateway.capsule_asked == 1


def test_no_capsule_anywhere_is_refused() -> None:
    gateway = _Gateway(seal(b"x" * 5000, Wallet.create()), None, 512)
    with pytest.raises(NoCapsuleError):
        read(_Repo(_Keeper(Wallet.create()), gateway))


def test_a_truncated_record_fails_at_the_end() -> None:
    me = Wallet.create()
    sealed = seal(os.urandom(3 * 1024 * 1024), me)
    gateway = _Gateway(sealed[: len(sealed) - 100], None, 256 * 1024)
    with pytest.raises(MedmeshError):
        read(_Repo(_Keeper(me), gateway))
