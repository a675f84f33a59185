"""Typed Python faces of the medmesh contracts, over web3.py's ABI codec.

Each wrapper turns Python values into calldata with web3's contract objects (offline: no
provider is attached) and reads through :class:`~medmesh.ledger.rpc.Rpc`. Writes come in two
forms: ``grant(...)`` sends one transaction and waits for it; ``grant_call(...)`` returns a
:class:`~medmesh.ledger.tx.Call` for pipelining many in one batch
(:meth:`TxSender.transact_many`).

Vocabulary shared with the contracts:

- :class:`Role` and :class:`Purpose` mirror the Vyper flags bit for bit;
- a record id is ``keccak256(patient address ‖ cid bytes)`` (:func:`record_id`): binding the
  patient means a CID seen by others cannot be anchored first by someone else;
- a kind is a short name (``fhir:Observation``, ``dicom:study``, ``document``) and travels as a
  4-byte tag, ``keccak256(name)[:4]`` (:func:`kind_tag`);
- a :class:`Scope` is one record, one kind, or all records, as the 32-byte word the contract
  keys grants by.

Many records are anchored with :meth:`RecordsContract.anchor_many`: up to 256 per
transaction (``Records.anchor_many``), so an import pays the 21,000 gas of a transaction once
per 256 records instead of once per record; :mod:`medmesh.ledger.anchoring` plans them.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3

from medmesh.errors import InvalidInputError, LedgerError, RevertError
from medmesh.ledger.anchoring import (
    ANCHOR_MANY_MAX,
    AnchoredRecord,
    AnchorEntry,
    AnchorPlan,
    AnchorRefusedError,
    kind_tag,
    record_id,
    rounds,
)
from medmesh.ledger.artifacts import Artifact
from medmesh.ledger.events import EventCodec, checksum
from medmesh.ledger.rpc import Rpc, RpcCallError
from medmesh.ledger.tx import Call, Receipt, TxSender

__all__ = [
    "ALL_SCOPE",
    "ANCHOR_MANY_MAX",
    "BREAK_GLASS_SCOPE",
    "Anchor",
    "AnchorEntry",
    "AnchorRefusedError",
    "AnchoredRecord",
    "ConsentContract",
    "Contract",
    "Purpose",
    "RecordsContract",
    "RegistryContract",
    "Role",
    "Scope",
    "TokenContract",
    "kind_tag",
    "record_id",
]


class Role(enum.IntFlag):
    """Participant roles (``Registry.Role``)."""

    PATIENT = 1
    PROVIDER = 2
    RESEARCHER = 4
    STORAGE_NODE = 8
    COMPUTE_NODE = 16
    INSURER = 32
    INSPECTOR = 64
    GOVERNANCE = 128
    GATEWAY = 256


class Purpose(enum.IntFlag):
    """Purposes of use (``Consent.Purpose``), after HL7's PurposeOfUse codes."""

    TREATMENT = 1
    PAYMENT = 2
    OPERATIONS = 4
    RESEARCH = 8
    PUBLIC_HEALTH = 16
    EMERGENCY = 32
    CONTRIBUTE = 64  # may anchor new records for the patient

    @classmethod
    def parse(cls, text: str) -> Purpose:
        """``"treatment,research"`` → ``TREATMENT|RESEARCH``."""
        value = cls(0)
        for part in text.replace("|", ",").split(","):
            name = part.strip().upper().replace("-", "_")
            if not name:
                continue
            try:
                value |= cls[name]
            except KeyError:
                choices = ", ".join(m.name.lower() for m in cls if m.name)
                raise InvalidInputError(
                    f"unknown purpose {part.strip()!r} (one of {choices})"
                ) from None
        if not value:
            raise InvalidInputError("give at least one purpose")
        return value

    def names(self) -> str:
        return ",".join(m.name.lower() for m in Purpose if m in self and m.name)


ZERO: Final = b"\0" * 32
ALL_SCOPE: Final = ZERO
BREAK_GLASS_SCOPE: Final = keccak(b"medmesh:break-glass")


@dataclass(frozen=True)
class Scope:
    """What a grant covers: one record version, one kind of record, or all records."""

    word: bytes
    label: str

    @classmethod
    def all(cls) -> Scope:
        return cls(ALL_SCOPE, "all")

    @classmethod
    def kind(cls, kind: str) -> Scope:
        return cls(b"\0" * 28 + kind_tag(kind), f"kind:{kind}")

    @classmethod
    def record(cls, patient: str, cid: Any) -> Scope:
        """One record version of ``patient``'s, named by its CID."""
        return cls(record_id(patient, cid), f"record:{cid}")

    @classmethod
    def break_glass(cls) -> Scope:
        return cls(BREAK_GLASS_SCOPE, "break-glass")

    @classmethod
    def from_word(cls, word: bytes, kinds: dict[bytes, str] | None = None) -> Scope:
        """Name a scope read back from the chain (kinds: tag → name, when known)."""
        if word == ALL_SCOPE:
            return cls.all()
        if word == BREAK_GLASS_SCOPE:
            return cls.break_glass()
        if word[:28] == b"\0" * 28:
            name = (kinds or {}).get(word[28:])
            return cls(word, f"kind:{name}" if name else f"kind:0x{word[28:].hex()}")
        return cls(word, f"record:0x{word.hex()}")


@dataclass(frozen=True)
class Anchor:
    """A record version's anchor, as read from Records."""

    record: bytes
    owner: str
    kind: bytes
    anchored_at: int
    superseded: bool
    erased: bool

    @property
    def exists(self) -> bool:
        return int(self.owner, 16) != 0


class Contract:
    """A deployed contract: encode calls, read views, decode events."""

    def __init__(
        self,
        artifact: Artifact,
        address: str,
        rpc: Rpc,
        sender: TxSender | None = None,
        on_mined: Callable[[Sequence[Receipt]], None] | None = None,
    ) -> None:
        self.address = to_checksum_address(address)
        self.rpc = rpc
        self.sender = sender
        self._on_mined = on_mined
        self.web3 = Web3().eth.contract(address=self.address, abi=artifact.abi)
        self._outputs = {
            e["name"]: [o["type"] for o in e.get("outputs", [])]
            for e in artifact.abi
            if e.get("type") == "function"
        }
        self.codec = EventCodec(artifact.abi)
        self.event_names = list(self.codec.by_name)
        # (name, number of arguments) -> (selector, input types), where that names one
        # function: encoded here, without web3's per-call ABI lookup (which hashes the
        # signature of every candidate each call: 1 ms a call, a tenth of an import's CPU)
        found: dict[tuple[str, int], list[tuple[bytes, list[str]]]] = {}
        for e in artifact.abi:
            if e.get("type") == "function":
                types = [collapse_if_tuple(dict(i)) for i in e.get("inputs", [])]
                key = (e["name"], len(types))
                selector = function_abi_to_4byte_selector(e)  # type: ignore[arg-type]
                found.setdefault(key, []).append((selector, types))
        self._encoders = {k: v[0] for k, v in found.items() if len(v) == 1}

    def call_data(self, fn: str, *args: Any) -> bytes:
        known = self._encoders.get((fn, len(args)))
        if known is None:  # an overloaded name: web3 picks by argument types
            return bytes.fromhex(self.web3.encode_abi(fn, args=list(args))[2:])
        selector, types = known
        return selector + abi_encode(types, args)

    def call(self, fn: str, *args: Any, block: str | int = "latest") -> Any:
        """Run a view; one output comes back bare, several as a tuple."""
        tag = block if isinstance(block, str) else hex(block)
        raw = self.rpc.call(
            "eth_call", {"to": self.address, "data": "0x" + self.call_data(fn, *args).hex()}, tag
        )
        values = abi_decode(self._outputs[fn], bytes.fromhex(raw[2:]))
        return values[0] if len(values) == 1 else values

    def call_many(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run many views at the latest block in one JSON-RPC batch, as :meth:`call` each;
        raises the first refusal."""
        raws = self.rpc.batch([
            ("eth_call", [{"to": self.address, "data": "0x" + self.call_data(fn, *args).hex()}, "latest"])
            for fn, args in calls
        ])  # fmt: skip
        out = []
        for (fn, _), raw in zip(calls, raws, strict=True):
            if isinstance(raw, RpcCallError):
                raise raw.to_exception()
            values = abi_decode(self._outputs[fn], bytes.fromhex(raw[2:]))
            out.append(values[0] if len(values) == 1 else values)
        return out

    def tx(self, fn: str, *args: Any, gas: int | None = None) -> Call:
        return Call(self.address, self.call_data(fn, *args), gas=gas, label=fn)

    def _sender(self) -> TxSender:
        if self.sender is None:
            raise InvalidInputError("this ledger client has no wallet: it can only read")
        return self.sender

    def transact(self, fn: str, *args: Any, gas: int | None = None) -> Receipt:
        """Send one call, wait until it is mined (and durable, on the local chain)."""
        receipt = self._sender().transact(self.tx(fn, *args, gas=gas))
        if self._on_mined:
            self._on_mined([receipt])
        return receipt

    def events(self, receipt: Receipt, name: str) -> list[dict[str, Any]]:
        """Decoded ``name`` events of this contract in ``receipt``."""
        out = []
        for log in receipt.logs:
            if checksum(log["address"]) != self.address:
                continue
            decoded = self.codec.decode(log)
            if decoded is not None and decoded[0] == name:
                out.append(decoded[1])
        return out


class RegistryContract(Contract):
    """Participants, roles and encryption keys."""

    def register(self, encryption_key: bytes, metadata_uri: str = "") -> Receipt:
        return self.transact("register", encryption_key, metadata_uri)

    def admit(self, account: str, roles: Role) -> Receipt:
        return self.transact("admit", to_checksum_address(account), int(roles))

    def expel(self, account: str, roles: Role) -> Receipt:
        return self.transact("expel", to_checksum_address(account), int(roles))

    def rotate_key(self, encryption_key: bytes) -> Receipt:
        return self.transact("rotate_key", encryption_key)

    def roles(self, account: str) -> Role:
        return Role(self.call("roles", to_checksum_address(account)))

    def encryption_key(self, account: str) -> bytes:
        return bytes(self.call("encryption_key", to_checksum_address(account)))

    def metadata_uri(self, account: str) -> str:
        return str(self.call("metadata_uri", to_checksum_address(account)))

    def is_registered(self, account: str) -> bool:
        return bool(self.call("is_registered", to_checksum_address(account)))

    def encryption_keys(self, accounts: Sequence[str]) -> list[tuple[bytes, bool]]:
        """``(encryption_key, is_registered)`` of each account, in one JSON-RPC batch."""
        calls = [
            (fn, (to_checksum_address(a),))
            for a in accounts
            for fn in ("encryption_key", "is_registered")
        ]
        got = self.call_many(calls)
        return [(bytes(got[2 * i]), bool(got[2 * i + 1])) for i in range(len(accounts))]


class RecordsContract(Contract):
    """Record anchors."""

    def anchor_call(self, cid: Any, kind: str, supersedes: bytes = ZERO) -> Call:
        return self.tx("anchor", bytes(cid), kind_tag(kind), supersedes)

    def anchor(self, cid: Any, kind: str, supersedes: bytes = ZERO) -> Receipt:
        return self.transact("anchor", bytes(cid), kind_tag(kind), supersedes)

    def anchor_for_call(self, patient: str, cid: Any, kind: str, supersedes: bytes = ZERO) -> Call:
        return self.tx(
            "anchor_for", to_checksum_address(patient), bytes(cid), kind_tag(kind), supersedes
        )

    def anchor_for(self, patient: str, cid: Any, kind: str, supersedes: bytes = ZERO) -> Receipt:
        return self.transact(
            "anchor_for", to_checksum_address(patient), bytes(cid), kind_tag(kind), supersedes
        )

    def anchor_many_call(self, entries: Sequence[AnchorEntry]) -> list[Call]:
        """``anchor_many`` transactions for ``entries``, to pipeline with other calls
        (:meth:`Ledger.transact_many`): entry ``i`` is in call ``i // ANCHOR_MANY_MAX``.

        Prefer :meth:`anchor_many`, which sends rounds of a few blocks, keeps the gas limits
        of what it sends together from decreasing (Anvil drops the smaller last call that
        fits a full block after a bigger one did not) and names a refused entry by its index
        in ``entries``. Here a refusal is a plain :class:`RevertError` whose reason counts
        entries in the call's own order (grouped by patient and kind, see
        :class:`~medmesh.ledger.anchoring.AnchorPlan`). The calls are all estimated before
        any is sent, so an entry superseding one of an earlier call of the same list would
        fail: that raises :class:`InvalidInputError`.
        """
        plan = AnchorPlan.of(entries)
        if len(plan.waves) > 1:
            raise InvalidInputError(
                "an entry supersedes a record anchored by an earlier transaction of the list "
                f"(more than {ANCHOR_MANY_MAX} entries before it): use anchor_many"
            )
        return [self._anchor_many_tx(plan, tx) for tx in range(len(plan.transactions))]

    def anchor_many(
        self,
        entries: Sequence[AnchorEntry],
        *,
        timeout: float = 60.0,
        durable: bool = True,
        on_sent: Callable[[], None] | None = None,
    ) -> list[AnchoredRecord]:
        """Anchor record versions, :data:`ANCHOR_MANY_MAX` per transaction; return once all
        are mined (and durable, on the local chain), one :class:`AnchoredRecord` per entry.
        With ``durable=False`` it returns once they are mined, and the caller makes them
        durable (:meth:`Ledger.make_durable`) before it reports them anchored: a writer can
        send its next anchors meanwhile. (On an error it still waits, as without.)
        ``on_sent`` is called once the last transaction is sent, before waiting for it to
        be mined: a writer's next transactions, sent after it, come after these in nonce
        order and are mined after them (or in the same block).

        Each entry is ``(patient, cid, kind, supersedes)``: records of the sender need no
        consent, another patient's need its CONTRIBUTE consent for the kind, exactly as
        :meth:`anchor` and :meth:`anchor_for`; an entry may supersede an earlier one. The
        transactions are estimated together, then sent in rounds that fill up to four blocks,
        each once the one before is mined (see :func:`~medmesh.ledger.anchoring.rounds`).

        Raises :class:`InvalidInputError` naming an entry the list alone shows is wrong
        (nothing is sent), and :class:`AnchorRefusedError` naming the entry the chain
        refused; its ``anchored`` lists the entries of the transactions mined before.

        >>> [a.record for a in ledger.records.anchor_many([(me, cid, "document", ZERO)])]
        [record_id(me, cid)]
        """
        plan = AnchorPlan.of(entries)
        sender = self._sender()
        block_gas = int(self.rpc.call("eth_getBlockByNumber", "latest", False)["gasLimit"], 16)
        done: list[AnchoredRecord | None] = [None] * len(plan.rows)
        mined: list[Receipt] = []

        def settle() -> None:  # what is anchored is durable before we return or raise
            if self._on_mined and mined:
                self._on_mined(mined)

        def refused(exc: RevertError, tx: int) -> RevertError:
            settle()
            return plan.refusal(exc, tx, [i for i, d in enumerate(done) if d is not None])

        for wave in plan.waves:
            calls = [self._anchor_many_tx(plan, tx) for tx in wave]
            try:
                limits = sender.estimate(calls)
            except RevertError as exc:  # which call? estimate them one by one
                for tx, call in zip(wave, calls, strict=True):
                    try:
                        sender.estimate([call])
                    except RevertError as one:
                        raise refused(one, tx) from exc
                settle()
                raise
            # Anvil drops a pending transaction that fits in a full block after an earlier one
            # of the same sender did not (it tries it, finds its nonce too high, discards it):
            # limits that never decrease make the later ones wait for the next block too
            limits = list(itertools.accumulate(limits, max))
            batches = rounds(limits, block_gas)
            for batch in batches:
                sent = [dataclasses.replace(calls[k], gas=limits[k]) for k in batch]
                hashes = sender.send_many(sent)
                if on_sent is not None and wave is plan.waves[-1] and batch is batches[-1]:
                    on_sent()
                receipts = sender.wait(hashes, timeout=timeout, calls=sent, check=False)
                for k, receipt in zip(batch, receipts, strict=True):
                    if receipt.status == 1:
                        mined.append(receipt)
                        for i in plan.transactions[wave[k]]:
                            done[i] = AnchoredRecord(
                                plan.records[i], receipt.tx_hash, receipt.block_number
                            )
                for k, receipt in zip(batch, receipts, strict=True):
                    if receipt.status != 1:  # reverted when mined: raise its reason, traced
                        try:
                            sender.wait([receipt.tx_hash], calls=[calls[k]])
                        except RevertError as exc:
                            raise refused(exc, wave[k]) from exc
                        except LedgerError:
                            settle()
                            raise
        if durable:
            settle()
        return [d for d in done if d is not None]

    def _anchor_many_tx(self, plan: AnchorPlan, tx: int) -> Call:
        return Call(self.address, plan.calldata(tx), label=plan.label(tx))

    def anchor_batch(self, root: bytes, count: int) -> Receipt:
        return self.transact("anchor_batch", root, count)

    def erase(self, record: bytes) -> Receipt:
        return self.transact("erase", record)

    def anchor_of(self, record: bytes) -> Anchor:
        owner, kind, at, flags = self.call("anchor_of", record)
        return Anchor(
            record,
            to_checksum_address(owner),
            bytes(kind),
            int(at),
            bool(flags & 1),
            bool(flags & 2),
        )

    def in_batch(
        self,
        root: bytes,
        patient: str,
        record: bytes,
        kind: str,
        supersedes: bytes,
        proof: Sequence[bytes],
    ) -> bool:
        return bool(
            self.call(
                "in_batch",
                root,
                to_checksum_address(patient),
                record,
                kind_tag(kind),
                supersedes,
                list(proof),
            )
        )


class ConsentContract(Contract):
    """Grants, revocations, break-glass and the access log."""

    def grant_call(
        self, grantee: str, scope: Scope, purposes: Purpose, expiry: int, capsule: bytes = ZERO
    ) -> Call:
        return self.tx(
            "grant", to_checksum_address(grantee), scope.word, int(purposes), expiry, capsule
        )

    def grant(
        self, grantee: str, scope: Scope, purposes: Purpose, expiry: int, capsule: bytes = ZERO
    ) -> Receipt:
        return self.transact(
            "grant", to_checksum_address(grantee), scope.word, int(purposes), expiry, capsule
        )

    def revoke(self, grantee: str, scope: Scope) -> Receipt:
        return self.transact("revoke", to_checksum_address(grantee), scope.word)

    def break_glass(self, patient: str, reason_digest: bytes) -> Receipt:
        return self.transact("break_glass", to_checksum_address(patient), reason_digest)

    def log_access_call(self, entries: Sequence[tuple[str, str, bytes, Purpose, int]]) -> Call:
        rows = [
            (to_checksum_address(p), to_checksum_address(a), r, int(pu), at)
            for p, a, r, pu, at in entries
        ]
        return self.tx("log_access", rows)

    def has_access(
        self, grantee: str, record: bytes, purpose: Purpose, block: str | int = "latest"
    ) -> bool:
        return bool(
            self.call("has_access", to_checksum_address(grantee), record, int(purpose), block=block)
        )

    def has_kind_access(self, patient: str, grantee: str, kind: str, purpose: Purpose) -> bool:
        return bool(
            self.call(
                "has_kind_access",
                to_checksum_address(patient),
                to_checksum_address(grantee),
                kind_tag(kind),
                int(purpose),
            )
        )

    def grant_of(self, patient: str, grantee: str, scope: Scope) -> tuple[Purpose, int]:
        purposes, expiry = self.call(
            "grant_of", to_checksum_address(patient), to_checksum_address(grantee), scope.word
        )
        return Purpose(purposes), int(expiry)


class TokenContract(Contract):
    """HealthToken (ERC-20)."""

    def balance_of(self, account: str) -> int:
        return int(self.call("balanceOf", to_checksum_address(account)))

    def transfer(self, to: str, amount: int) -> Receipt:
        return self.transact("transfer", to_checksum_address(to), amount)
