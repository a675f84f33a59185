"""The record keeper: what a patient's (or provider's) client does with records and consents.

It ties the three planes together for one wallet:

- ``put``: seal the record for its owner and for every grantee whose current kind or
  all-records grant covers it (so new versions reach current grantees, with a fresh data
  key, and never revoked ones), store the ciphertext, anchor its CID on the ledger;
- ``grant``: look up the grantee's registered encryption key, wrap the data key of every
  record in scope for it (a capsule block in the storage network), then grant on chain with
  that block's digest;
- ``revoke``: end the grant on chain (the gateway refuses from the next block on);
- ``erase``: mark every version of a record erased on chain (no grant reaches it any more, at
  once), rewrite the capsule blocks of current grants without its capsules (re-granting with
  the new block), delete every capsule block that held one of its capsules, and delete its
  ciphertext from the storage nodes (crypto-shredding: the data key lived only in the
  record's header and in those capsules). Nodes that cannot be reached are reported; running
  ``erase`` again finishes the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address

from medmesh.consent.capsules import CapsuleBlock, cid_of_digest
from medmesh.crypto.capsule import KeyCapsule
from medmesh.crypto.envelope import NoCapsuleError, wrap_for_record
from medmesh.crypto.keys import EncryptionPublicKey
from medmesh.errors import InvalidInputError, NotFoundError
from medmesh.identity.wallet import Wallet
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Scope, kind_tag, record_id
from medmesh.ledger.events import checksum
from medmesh.ledger.indexer import GrantRow, Indexer, RecordRow
from medmesh.ledger.tx import Receipt
from medmesh.storage.cid import Cid
from medmesh.storage.client import Client, PutResult, Source

__all__ = [
    "EraseResult",
    "GrantResult",
    "NewRecord",
    "PutRecord",
    "RecordKeeper",
    "SealedRecords",
    "StoredRecords",
]

PREFIX_BYTES = 64 * 1024  # enough for the capsules and the stream header of any record


@dataclass(frozen=True)
class NewRecord:
    """One record for :meth:`RecordKeeper.put_many`."""

    data: bytes
    kind: str
    supersedes: Cid | None = None
    patient: str | None = None  # the owner, when writing for a patient


@dataclass(frozen=True)
class SealedRecords:
    """Records :meth:`RecordKeeper.seal_many` sealed, not stored yet."""

    items: list[NewRecord]
    owners: list[str]  # checksummed, one per item
    recipients: list[list[EncryptionPublicKey]]  # whom each was sealed for besides us
    sealed: list[Any]  # the ciphertext of each, prepared for the store (Client.seal_many)


@dataclass(frozen=True)
class StoredRecords:
    """Records :meth:`RecordKeeper.store_many` sealed and stored, not anchored yet."""

    items: list[NewRecord]
    owners: list[str]  # checksummed, one per item
    recipients: list[list[EncryptionPublicKey]]  # whom each was sealed for besides us
    stored: list[PutResult]  # where each went


@dataclass(frozen=True)
class PutRecord:
    cid: Cid
    record: bytes
    kind: str
    size: int
    recipients: int
    tx: str
    block: int = -1  # the block the anchor was mined in (put_many), -1 if not recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "cid": str(self.cid),
            "record": "0x" + self.record.hex(),
            "kind": self.kind,
            "size": self.size,
            "recipients": self.recipients,
            "tx": self.tx,
        }


@dataclass(frozen=True)
class GrantResult:
    grantee: str
    scope: str
    purposes: str
    expiry: int
    capsules: int
    capsule_block: str | None
    tx: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EraseResult:
    cids: list[str]  # every version of the record
    txs: list[str]  # erase transactions sent now (empty when all were already erased)
    regranted: list[str]  # grantees whose capsule block was rewritten without the record
    capsule_blocks: int  # capsule blocks destroyed
    blocks_deleted: int  # blocks deleted from storage nodes (ciphertext and capsule blocks)
    unreachable: list[str]  # nodes that may still hold blocks: run erase again

    @property
    def complete(self) -> bool:
        return not self.unreachable

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "complete": self.complete}


class RecordKeeper:
    """One wallet's records and consents."""

    def __init__(self, wallet: Wallet, ledger: Ledger, indexer: Indexer, client: Client) -> None:
        self.wallet = wallet
        self.ledger = ledger
        self.indexer = indexer
        self.client = client

    # -- keys of others ------------------------------------------------------------------------

    def encryption_key_of(self, account: str) -> EncryptionPublicKey:
        """``account``'s registered encryption key (read from the chain, not the index)."""
        return self.encryption_keys_of([account])[account]

    def encryption_keys_of(self, accounts: Sequence[str]) -> dict[str, EncryptionPublicKey]:
        """:meth:`encryption_key_of` each account, asked of the chain in one batch."""
        wanted = list(dict.fromkeys(accounts))
        out = {}
        for account, (raw, registered) in zip(
            wanted, self.ledger.registry.encryption_keys(wanted), strict=True
        ):
            if not any(raw) or not registered:
                raise NotFoundError(
                    f"{to_checksum_address(account)} is not registered with an encryption key"
                )
            out[account] = EncryptionPublicKey.from_bytes("x25519", raw)
        return out

    def _recipients(
        self, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[EncryptionPublicKey]]:
        """Whom a new record of each ``(owner, kind)`` is sealed for besides this wallet: the
        owner and every current kind or all-records grantee (from the index, which the
        caller has synced: one query for every owner; their keys from the chain, in one
        request)."""
        current: dict[str, list[GrantRow]] = {owner: [] for owner, _ in pairs}
        for g in self.indexer.grants(patients=list(current), active_at=time.time()):
            current[g.patient].append(g)
        whom: dict[tuple[str, str], list[str]] = {}
        for owner, kind in pairs:
            scopes = (Scope.kind(kind).word, Scope.all().word)
            grantees = {
                g.grantee for g in current[owner] if not g.break_glass and g.scope in scopes
            }
            whom[(owner, kind)] = [owner, *sorted(grantees)]
        me = self.wallet.address
        keys = self.encryption_keys_of([a for acc in whom.values() for a in acc if a != me])
        return {pair: [keys[a] for a in acc if a != me] for pair, acc in whom.items()}

    # -- records --------------------------------------------------------------------------------

    def put(
        self,
        source: Source,
        kind: str,
        *,
        supersedes: Cid | None = None,
        patient: str | None = None,
    ) -> PutRecord:
        """Seal, store and anchor a record (for ``patient``, when writing as a provider)."""
        kind_tag(kind)  # validate before any work
        owner = to_checksum_address(patient) if patient else self.wallet.address
        self.indexer.sync()
        recipients = self._recipients([(owner, kind)])[(owner, kind)]
        stored = self.client.put(source, recipients=recipients)
        previous = record_id(owner, supersedes) if supersedes is not None else b"\0" * 32
        if owner == self.wallet.address:
            receipt = self.ledger.records.anchor(stored.cid, kind, previous)
        else:
            receipt = self.ledger.records.anchor_for(owner, stored.cid, kind, previous)
        return PutRecord(
            stored.cid,
            record_id(owner, stored.cid),
            kind,
            stored.size,
            len(recipients) + 1,
            receipt.tx_hash,
        )

    def put_many(self, items: Sequence[NewRecord]) -> list[PutRecord]:
        """:meth:`put` for many small records: sealed and stored in batches (one object per
        record, a few signed requests per node per batch: ``Client.aput_many``), then
        anchored with ``Records.anchor_many``, 256 records per transaction.

        Stored ciphertext whose anchor then fails is unreachable (no anchor, no grant); the
        error (``AnchorRefusedError`` names the refused item and what was anchored before
        it) reaches the caller, who may retry.
        """
        return self.anchor_stored(self.store_many(items))

    def store_many(self, items: Sequence[NewRecord]) -> StoredRecords:
        """The first half of :meth:`put_many`: seal and store, anchor nothing yet.

        A writer can store its next batch while the previous one waits for its block
        (:meth:`anchor_stored`), as the FHIR repository does; the two halves share nothing
        but the wallet, whose transactions are numbered under the sender's lock. It can
        also seal a batch (:meth:`seal_many`) while another one uploads
        (:meth:`store_sealed`).
        """
        return self.store_sealed(self.seal_many(items))

    def seal_many(self, items: Sequence[NewRecord]) -> SealedRecords:
        """Seal records for their owners and current grantees (from the synced index;
        their keys from the chain, in one request); store nothing."""
        for item in items:
            kind_tag(item.kind)
        if not items:
            return SealedRecords([], [], [], [])
        self.indexer.sync()
        owners = [checksum(i.patient) if i.patient else self.wallet.address for i in items]
        pairs = [(owner, item.kind) for owner, item in zip(owners, items, strict=True)]
        sealed_for = self._recipients(list(dict.fromkeys(pairs)))
        plan = [sealed_for[pair] for pair in pairs]
        sealed = self.client.seal_many([(i.data, r) for i, r in zip(items, plan, strict=True)])
        return SealedRecords(list(items), owners, plan, sealed)

    def store_sealed(self, batch: SealedRecords) -> StoredRecords:
        """Store what :meth:`seal_many` sealed (one batch at a time per keeper: its storage
        client serves one event loop at a time)."""
        if not batch.items:
            return StoredRecords([], [], [], [])

        async def store_all() -> list[PutResult]:
            try:  # few signed requests per node for the whole batch, one object per record
                return await self.client.aput_many(
                    [(i.data, r) for i, r in zip(batch.items, batch.recipients, strict=True)],
                    sealed=batch.sealed,
                )
            finally:
                await self.client.store.close()

        stored = asyncio.run(store_all())
        return StoredRecords(batch.items, batch.owners, batch.recipients, stored)

    def anchor_stored(
        self,
        batch: StoredRecords,
        *,
        durable: bool = True,
        on_sent: Callable[[], None] | None = None,
    ) -> list[PutRecord]:
        """The second half of :meth:`put_many`: anchor what :meth:`store_many` stored.

        ``durable=False``: return once mined; the caller waits for durability itself
        (``ledger.make_durable``). ``on_sent``: called once every anchor is sent, before
        they are mined (see ``Records.anchor_many``).
        """
        if not batch.items:
            return []
        entries = [
            (owner, put.cid, item.kind,
             record_id(owner, item.supersedes) if item.supersedes else b"\0" * 32)
            for item, owner, put in zip(batch.items, batch.owners, batch.stored, strict=True)
        ]  # fmt: skip
        # 256 per transaction; durable unless the caller waits for it
        anchored = self.ledger.records.anchor_many(entries, durable=durable, on_sent=on_sent)
        return [
            PutRecord(put.cid, a.record, item.kind, put.size, len(keys_) + 1, a.tx_hash, a.block_number)
            for item, put, keys_, a in zip(batch.items, batch.stored, batch.recipients, anchored, strict=True)
        ]  # fmt: skip

    def records(self, *, include_history: bool = False) -> list[RecordRow]:
        self.indexer.sync()
        return self.indexer.records(self.wallet.address, include_history=include_history)

    def _records_in(self, scope: Scope) -> list[RecordRow]:
        rows = [
            r
            for r in self.indexer.records(self.wallet.address, include_history=True)
            if not r.erased
        ]
        if scope.word == Scope.all().word:
            return rows
        if scope.word[:28] == b"\0" * 28:
            return [r for r in rows if r.kind == scope.word[28:]]
        return [r for r in rows if r.record == scope.word]

    async def _read(self, cid: Cid, limit: int | None = None) -> bytes:
        """The stored bytes of ``cid`` (verified, not decrypted), or their first ``limit``."""
        buf = bytearray()
        pieces = self.client.store.get(cid)
        try:
            async for piece in pieces:
                buf += piece
                if limit is not None and len(buf) >= limit:
                    break
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()
        return bytes(buf)

    async def _capsule_block(
        self, grantee: str, rows: list[RecordRow], key: EncryptionPublicKey
    ) -> tuple[Cid | None, int]:
        """Wrap each record's data key for ``key`` and store the capsule block (if any)."""
        try:
            capsules = {}
            for row in rows:
                capsules[row.record] = self._wrap(
                    await self._read(Cid.from_bytes(row.cid), PREFIX_BYTES), key
                )
            if not capsules:
                return None, 0
            return await self.client.aput_block(CapsuleBlock(grantee, capsules).encode()), len(
                capsules
            )
        finally:
            await self.client.store.close()

    def _wrap(self, prefix: bytes, recipient: EncryptionPublicKey) -> KeyCapsule:
        for key in reversed(self.wallet.encryption_keys):
            try:
                return wrap_for_record(prefix, key, recipient)
            except NoCapsuleError:
                continue
        raise NoCapsuleError("a record in scope was not sealed for this wallet")

    # -- consents -------------------------------------------------------------------------------

    def grant(self, grantee: str, scope: Scope, purposes: Purpose, expiry: int) -> GrantResult:
        """Give ``grantee`` capsules for the records in ``scope`` and grant on chain."""
        grantee = to_checksum_address(grantee)
        if grantee == self.wallet.address:
            raise InvalidInputError("you always have access to your own records")
        if expiry <= time.time():
            raise InvalidInputError("the expiry must be in the future")
        self.indexer.sync()
        key = self.encryption_key_of(grantee)
        rows = self._records_in(scope)
        if scope.label.startswith("record:") and not rows:
            raise NotFoundError("no such record of yours on the ledger")
        stored, count = asyncio.run(self._capsule_block(grantee, rows, key))
        digest = bytes(stored.digest) if stored is not None else bytes(32)
        receipt: Receipt = self.ledger.consent.grant(grantee, scope, purposes, expiry, digest)
        block = str(stored) if stored is not None else None
        return GrantResult(
            grantee, scope.label, purposes.names(), expiry, count, block, receipt.tx_hash
        )

    def revoke(self, grantee: str, scope: Scope) -> str:
        return self.ledger.consent.revoke(to_checksum_address(grantee), scope).tx_hash

    # -- erasure ------------------------------------------------------------------------------

    def _versions(self, cid: Cid) -> list[RecordRow]:
        """Every version of the record that ``cid`` is a version of (oldest first)."""
        rows = self.indexer.records(self.wallet.address, include_history=True)
        by_id = {r.record: r for r in rows}
        start = next((r for r in rows if r.cid == bytes(cid)), None)
        if start is None:
            raise NotFoundError("no record of yours has this CID")
        newer = {r.supersedes: r for r in rows if r.supersedes is not None}
        chain = [start]
        while chain[0].supersedes is not None and chain[0].supersedes in by_id:
            chain.insert(0, by_id[chain[0].supersedes])
        while chain[-1].record in newer:
            chain.append(newer[chain[-1].record])
        return chain

    def erase(self, cid: Cid) -> EraseResult:
        """Erase every version of the record ``cid`` belongs to; see the module docstring."""
        self.indexer.sync()
        versions = self._versions(cid)
        erase = [self.ledger.records.tx("erase", v.record) for v in versions if not v.erased]
        txs = [r.tx_hash for r in self.ledger.transact_many(erase)]
        self.indexer.sync()
        return asyncio.run(self._erase_off_chain(versions, txs))

    async def _erase_off_chain(self, versions: list[RecordRow], txs: list[str]) -> EraseResult:
        ids = {v.record for v in versions}
        result = EraseResult([str(Cid.from_bytes(v.cid)) for v in versions], txs, [], 0, 0, [])
        unreachable: set[str] = set()
        try:
            current = {
                g.capsule: g
                for g in self.indexer.grants(patient=self.wallet.address, active_at=time.time())
                if g.capsule is not None
            }
            for digest in self.indexer.capsule_refs(self.wallet.address):
                block_cid = cid_of_digest(digest)
                try:
                    block = CapsuleBlock.decode(await self._read(block_cid))
                except NotFoundError:
                    continue  # already destroyed (a previous erase) or never stored
                if not ids & block.capsules.keys():
                    continue
                grant = current.get(digest)
                if grant is not None:
                    kept = {r: c for r, c in block.capsules.items() if r not in ids}
                    new_digest = bytes(32)
                    if kept:
                        new_cid = await self.client.aput_block(
                            CapsuleBlock(block.grantee, kept).encode()
                        )
                        new_digest = bytes(new_cid.digest)
                    self.ledger.consent.grant(
                        grant.grantee,
                        Scope.from_word(grant.scope),
                        grant.purposes,
                        grant.expiry,
                        new_digest,
                    )
                    result.regranted.append(grant.grantee)
                report = await self.client.aerase(block_cid)
                result.capsule_blocks += 1
                result.blocks_deleted += report.deleted
                unreachable.update(report.unreachable)
            for v in versions:
                report = await self.client.aerase(Cid.from_bytes(v.cid))
                result.blocks_deleted += report.deleted
                unreachable.update(report.unreachable)
        finally:
            await self.client.store.close()
        result.unreachable = sorted(unreachable)
        return result
