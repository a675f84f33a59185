"""Record anchors seen from Python: record ids, kind tags, and the plan of an ``anchor_many``.

A record version's id is ``keccak256(patient address ‖ binary CID)`` (:func:`record_id`); its
kind travels as the 4-byte tag ``keccak256(name)[:4]`` (:func:`kind_tag`).

``Records.anchor_many`` anchors up to :data:`ANCHOR_MANY_MAX` record versions in one
transaction, each by the rules of ``anchor`` and ``anchor_for``. :class:`AnchorPlan` turns a
caller's list of any length into such transactions (sent by
:meth:`~medmesh.ledger.contracts.RecordsContract.anchor_many`):

- entries are checked first, for what the list alone shows: addresses, kinds, CID lengths,
  a record twice, a version superseded twice, an entry superseding one that comes after it
  (:class:`~medmesh.errors.InvalidInputError` naming the entry);
- entry ``i`` goes into transaction ``i // ANCHOR_MANY_MAX``; inside one, entries are sent
  grouped by (patient, kind), because the contract checks a contributor's consent once per
  run of the same pair (a stable sort: a version still follows the one it supersedes);
- transactions are estimated before they are sent, against the chain as it is, so one whose
  entry supersedes a record of an earlier transaction of the list waits until that one is
  mined: the transactions fall into *waves*;
- a wave goes out in rounds of at most :data:`ROUND_BLOCKS` blocks of gas (:func:`rounds`);
- the contract names a refused entry by its place in its transaction
  (``records: already anchored (entry 17)``); :meth:`AnchorPlan.refusal` turns that into
  :class:`AnchorRefusedError` with the entry's index in the caller's list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from medmesh.errors import InvalidInputError, RevertError

__all__ = [
    "ANCHOR_MANY_MAX",
    "MAX_CID",
    "ROUND_BLOCKS",
    "AnchorEntry",
    "AnchorPlan",
    "AnchorRefusedError",
    "AnchoredRecord",
    "kind_tag",
    "record_id",
    "rounds",
]

ANCHOR_MANY_MAX: Final = 256  # Records.MAX_ANCHORS: entries per anchor_many transaction
ROUND_BLOCKS: Final = 4  # blocks' worth of gas anchor_many sends before it waits (rounds)
MAX_CID: Final = 64  # Records.MAX_CID: bytes of a binary CID
_ZERO: Final = bytes(32)
_ROW: Final = "(address,bytes,bytes4,bytes32)"
_SELECTOR: Final = keccak(f"anchor_many({_ROW}[])".encode())[:4]
_ENTRY_REASON: Final = re.compile(r"(?P<reason>.*) \(entry (?P<entry>[0-9]+)\)", re.DOTALL)

AnchorEntry = tuple[str, Any, str, bytes]
"""One record version to anchor: ``(patient, cid, kind, supersedes)``; ``supersedes`` is the
id of the version it replaces, or 32 zero bytes."""

_Row = tuple[str, bytes, bytes, bytes]  # (patient, cid, kind tag, supersedes) as the ABI takes it


def record_id(patient: str, cid: bytes | Any) -> bytes:
    """The on-chain id of a record version: ``keccak256(patient's 20 bytes ‖ binary CID)``."""
    return _record_id(patient, bytes(cid))


@functools.lru_cache(maxsize=16_384)
def _record_id(patient: str, cid: bytes) -> bytes:
    # cached: a writer asks for a batch's ids before it anchors, and anchoring asks again
    owner = bytes.fromhex(patient.removeprefix("0x"))
    if len(owner) != 20:
        raise InvalidInputError(f"not an address: {patient!r}")
    return keccak(owner + cid)


@functools.lru_cache(maxsize=1024)
def kind_tag(kind: str) -> bytes:
    """The 4-byte tag of a record kind name (cached: a few kinds recur in every batch)."""
    if not kind or len(kind) > 64 or not kind.isprintable():
        raise InvalidInputError("a record kind is a short printable name, e.g. fhir:Observation")
    return keccak(text=kind)[:4]


@dataclass(frozen=True)
class AnchoredRecord:
    """A record version anchored by ``anchor_many``."""

    record: bytes  # its id, keccak256(patient ‖ cid)
    tx_hash: str  # the anchor_many transaction that anchored it
    block_number: int


class AnchorRefusedError(RevertError):
    """``Records.anchor_many`` refused one entry, so its whole transaction reverted.

    ``index`` is the refused entry's position in the caller's list; ``reason`` is what
    ``anchor`` or ``anchor_for`` would have said for it alone (``records: no consent to
    contribute``, ...). ``anchored`` lists the entries anchored nonetheless (by other
    transactions, already mined): anchor the rest again without the refused one.
    """

    def __init__(self, index: int, reason: str, anchored: Sequence[int] = ()) -> None:
        self.index = index
        self.anchored = tuple(anchored)
        super().__init__(reason, f"anchor_many entry {index} refused: {reason}")


@dataclass(frozen=True)
class AnchorPlan:
    """A list of entries checked and cut into ``anchor_many`` transactions.

    >>> plan = AnchorPlan.of([(patient, cid, "fhir:Observation", bytes(32))])
    >>> plan.records[0] == record_id(patient, cid), plan.transactions, plan.waves
    (True, [[0]], [[0]])
    """

    rows: list[_Row]
    records: list[bytes]  # the record id of each entry
    transactions: list[list[int]]  # entries of each transaction, in the order it sends them
    waves: list[list[int]]  # transactions that can be estimated and sent together, in turn

    @classmethod
    def of(cls, entries: Sequence[AnchorEntry]) -> AnchorPlan:
        """Check ``entries`` (:class:`InvalidInputError` naming the first bad one) and plan."""
        rows, records = _check(entries)
        transactions = [
            # stable: a version supersedes only one of the same patient and kind
            sorted(
                range(a, min(a + ANCHOR_MANY_MAX, len(rows))),
                key=lambda i: (rows[i][0], rows[i][2]),
            )
            for a in range(0, len(rows), ANCHOR_MANY_MAX)
        ]
        return cls(rows, records, transactions, _waves(rows, records))

    def calldata(self, tx: int) -> bytes:
        """The ``anchor_many`` call data of transaction ``tx``."""
        return _SELECTOR + encode_rows([self.rows[i] for i in self.transactions[tx]])

    def label(self, tx: int) -> str:
        first = tx * ANCHOR_MANY_MAX
        return f"anchor_many[{first}:{first + len(self.transactions[tx])}]"

    def refusal(self, exc: RevertError, tx: int, anchored: Sequence[int]) -> RevertError:
        """``exc`` of transaction ``tx`` as :class:`AnchorRefusedError` if its reason names
        an entry (as the contract does), else ``exc`` itself."""
        found = _ENTRY_REASON.fullmatch(exc.reason or "")
        order = self.transactions[tx]
        if found is None or int(found["entry"]) >= len(order):
            return exc
        return AnchorRefusedError(order[int(found["entry"])], found["reason"], anchored)


def rounds(limits: Sequence[int], block_gas: int) -> list[list[int]]:
    """Consecutive transactions (by index) whose gas limits together fill at most
    :data:`ROUND_BLOCKS` blocks.

    ``anchor_many`` sends a round, waits until it is mined, then sends the next with a fresh
    fee quote. A quote allows twice the base fee, which rises by up to 12.5 % a full block:
    after six full blocks in a row it has doubled, and transactions signed before wait
    unmined until blocks empty again.
    """
    budget = ROUND_BLOCKS * block_gas
    out: list[list[int]] = []
    used = budget  # start a new round at once
    for i, limit in enumerate(limits):
        if used + limit > budget:
            out.append([])
            used = 0
        out[-1].append(i)
        used += limit
    return out


def _check(entries: Sequence[AnchorEntry]) -> tuple[list[_Row], list[bytes]]:
    rows: list[_Row] = []
    records: list[bytes] = []
    owners: dict[str, str] = {}  # checksums and tags are slow to make: once per value
    tags: dict[str, bytes] = {}
    position: dict[bytes, int] = {}
    superseded: dict[bytes, int] = {}
    for i, entry in enumerate(entries):
        if len(entry) != 4:
            raise InvalidInputError(f"entry {i}: give (patient, cid, kind, supersedes)")
        patient, cid, kind, supersedes = entry
        if patient not in owners:
            try:
                owners[patient] = to_checksum_address(patient)
            except (TypeError, ValueError):
                raise InvalidInputError(f"entry {i}: not an address: {patient!r}") from None
        if kind not in tags:
            try:
                tags[kind] = kind_tag(kind)
            except InvalidInputError as exc:
                raise InvalidInputError(f"entry {i}: {exc}") from None
        owner, tag = owners[patient], tags[kind]
        raw = bytes(cid)
        if not 0 < len(raw) <= MAX_CID:
            raise InvalidInputError(f"entry {i}: a binary CID has 1 to {MAX_CID} bytes")
        previous = bytes(supersedes)
        if len(previous) != 32:
            raise InvalidInputError(f"entry {i}: supersedes is a 32-byte record id")
        record = record_id(owner, raw)
        if record in position:
            raise InvalidInputError(f"entry {i}: the same record as entry {position[record]}")
        if previous != _ZERO:
            if previous in superseded:
                raise InvalidInputError(
                    f"entry {i}: supersedes the version entry {superseded[previous]} supersedes"
                )
            superseded[previous] = i
        position[record] = i
        rows.append((owner, raw, tag, previous))
        records.append(record)
    for previous, i in superseded.items():
        if position.get(previous, -1) > i:
            raise InvalidInputError(
                f"entry {i}: supersedes entry {position[previous]}, which comes after it"
            )
    return rows, records


def encode_rows(rows: Sequence[_Row]) -> bytes:
    """``abi_encode(["(address,bytes,bytes4,bytes32)[]"], [rows])`` of checked rows, written
    out directly: eth_abi's generic encoder took 5 % of a FHIR gateway's CPU during an
    import (tests check the two agree).

    Layout: the array's offset (32), its length, one offset per row (from the first of
    them), then each row: address, the offset of its bytes (128), tag, supersedes, and the
    bytes (length, then data padded to 32).
    """
    heads = [(0x20).to_bytes(32, "big"), len(rows).to_bytes(32, "big")]
    bodies: list[bytes] = []
    at = 32 * len(rows)
    for owner, cid, tag, previous in rows:
        heads.append(at.to_bytes(32, "big"))
        pad = -len(cid) % 32
        body = b"".join((
            bytes(12), bytes.fromhex(owner[2:]), _BYTES_AT, tag.ljust(32, b"\0"), previous,
            len(cid).to_bytes(32, "big"), cid, bytes(pad),
        ))  # fmt: skip
        bodies.append(body)
        at += len(body)
    return b"".join(heads) + b"".join(bodies)


_BYTES_AT: Final = (128).to_bytes(32, "big")  # a row's bytes follow its four head words


def _waves(rows: Sequence[_Row], records: Sequence[bytes]) -> list[list[int]]:
    """Transactions grouped into waves: one with an entry superseding a record of an earlier
    transaction of the same wave starts the next wave."""
    tx_of = {record: i // ANCHOR_MANY_MAX for i, record in enumerate(records)}
    waves: list[list[int]] = []
    first = 0  # the first transaction of the current wave
    for tx in range((len(rows) + ANCHOR_MANY_MAX - 1) // ANCHOR_MANY_MAX):
        chunk = rows[tx * ANCHOR_MANY_MAX : (tx + 1) * ANCHOR_MANY_MAX]
        if not waves or any(first <= tx_of.get(row[3], -1) < tx for row in chunk):
            waves.append([])
            first = tx
        waves[-1].append(tx)
    return waves
