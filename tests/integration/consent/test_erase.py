"""Erasing a record for good (crypto-shredding), end to end: real Anvil, storage nodes, gateway.

Every version is marked erased on chain and refused by the gateway; the capsule blocks that held
its data key are destroyed, and a current grant that referenced one is re-granted with a block
that still opens the patient's other records; the ciphertext is gone from every node. Running
erase again is harmless, and nobody but the owner can erase.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from medmesh.consent.capsules import CapsuleBlock, cid_of_digest
from medmesh.crypto.capsule import KeyCapsule
from medmesh.crypto.envelope import RecordOpener
from medmesh.errors import NotFoundError
from medmesh.ledger.contracts import Purpose, Scope
from medmesh.storage.cid import Cid
from tests.integration.consent.test_gateway import World, _wait_indexed
from tests.integration.consent.test_gateway import world as world  # the module's network

HOUR = 3600


def _open(world: World, record: bytes, token: str) -> bytes:
    r = world.ask(record, token, what="")
    assert r.status_code == 200, r.text
    capsule = KeyCapsule.from_bytes(base64.b64decode(r.headers["X-Medmesh-Capsule"]))
    opener = RecordOpener(world.provider.encryption_keys, extra=[capsule])
    return opener.update(r.content) + opener.finalize()


def _raw(world: World, cid: Cid) -> bytes:
    """The stored (ciphertext or capsule block) bytes of ``cid``, verified, not decrypted."""

    async def fetch() -> bytes:
        store = world.client(world.governance).store
        try:
            return b"".join([piece async for piece in store.get(cid)])
        finally:
            await store.close()

    return asyncio.run(fetch())


def _held_anywhere(world: World, cid: Cid) -> bool:
    try:
        _raw(world, cid)
    except NotFoundError:
        return False
    return True


def test_erase_shreds_every_version_and_keeps_other_grants_working(world: World) -> None:
    keeper = world.keeper(world.patient)
    v1 = keeper.put(b"blood pressure 150/95 mmHg", "fhir:Observation")
    v2 = keeper.put(b"blood pressure 150/90 mmHg", "fhir:Observation", supersedes=v1.cid)
    other = keeper.put(b"heart rate 72 /min", "fhir:Observation")
    expiry = int(time.time()) + HOUR
    # capsule blocks made after the records: one for a current kind grant (covers v1, v2,
    # other), one for a record grant to the stranger that is then revoked
    kind_grant = keeper.grant(
        world.provider.address, Scope.kind("fhir:Observation"), Purpose.TREATMENT, expiry
    )
    keeper.grant(
        world.stranger.address,
        Scope.record(world.patient.address, v2.cid),
        Purpose.RESEARCH,
        expiry,
    )
    keeper.revoke(world.stranger.address, Scope.record(world.patient.address, v2.cid))
    assert kind_grant.capsules == 3 and kind_grant.capsule_block is not None
    _wait_indexed(world, other.record)
    token = world.login(world.provider)
    assert _open(world, v2.record, token) == b"blood pressure 150/90 mmHg"
    keeper.indexer.sync()
    old_blocks = [cid_of_digest(d) for d in keeper.indexer.capsule_refs(world.patient.address)]
    assert len(old_blocks) == 2

    result = keeper.erase(v2.cid)  # naming any version erases the whole record

    assert result.cids == [str(v1.cid), str(v2.cid)]
    assert len(result.txs) == 2
    assert result.regranted == [world.provider.address]
    assert result.capsule_blocks == 2
    assert result.blocks_deleted > 0 and result.complete
    ledger = world.ledger(None)
    for v in (v1, v2):
        assert ledger.records.anchor_of(v.record).erased is True
        assert (
            ledger.consent.has_access(world.provider.address, v.record, Purpose.TREATMENT) is False
        )
        assert world.ask(v.record, token).status_code == 403
        assert not _held_anywhere(world, v.cid)  # ciphertext gone from every node
    for block in old_blocks:
        assert not _held_anywhere(world, block)  # capsules holding its key destroyed

    # the provider's grant lives on with a new capsule block that no longer holds the record
    keeper.indexer.sync()
    (grant,) = [
        g
        for g in keeper.indexer.grants(patient=world.patient.address, active_at=time.time())
        if g.grantee == world.provider.address
    ]
    assert (grant.scope, grant.purposes, grant.expiry) == (
        Scope.kind("fhir:Observation").word,
        Purpose.TREATMENT,
        expiry,
    )
    assert grant.capsule is not None
    new_block = CapsuleBlock.decode(_raw(world, cid_of_digest(grant.capsule)))
    assert set(new_block.capsules) == {other.record}
    deadline = time.monotonic() + 10
    while (
        world.gateway.indexer.capsule_ref(
            world.patient.address, world.provider.address, grant.scope
        )
        != grant.capsule
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert _open(world, other.record, token) == b"heart rate 72 /min"

    # erasing again finds nothing left to do, and says it is complete
    again = keeper.erase(v1.cid)
    assert (again.txs, again.capsule_blocks, again.blocks_deleted) == ([], 0, 0)
    assert again.complete


def test_only_the_owner_can_erase(world: World) -> None:
    mine = world.keeper(world.patient).put(b"allergy: penicillin", "fhir:AllergyIntolerance")
    with pytest.raises(NotFoundError, match="no record of yours"):
        world.keeper(world.provider).erase(mine.cid)
    ledger = world.ledger(None)
    assert ledger.records.anchor_of(mine.record).erased is False
    assert _held_anywhere(world, mine.cid)
