"""FhirRepository's two write stages: a batch is sealed and stored while the one before it
is anchored, batches send their anchors in the order they stored (so the wallet's nonces
have them mined in that order), and each is indexed once durable. The keeper, ledger and
index are in-process stand-ins here; the real ones are exercised in tests/integration."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from medmesh.interop.fhir.repository import FhirRepository, _Plan, kind_of
from medmesh.ledger.contracts import kind_tag, record_id
from medmesh.ledger.indexer import RecordRow
from medmesh.storage.cid import Cid


class Keeper:
    """Records when each batch is stored and anchored; storing takes ``store_s``."""

    def __init__(self, store_s: float, anchor_s: float) -> None:
        self.wallet = SimpleNamespace(address="0x" + "11" * 20)
        self.ledger = SimpleNamespace(
            rpc=SimpleNamespace(batch=self._headers), make_durable=self._durable
        )
        self.store_s, self.anchor_s = store_s, anchor_s
        self.events: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()
        self.storing = threading.Semaphore(1)  # fails the test if two batches store at once
        self.on_anchor: Any = None  # called with each batch as its anchoring starts

    def _log(self, what: str, batch: str) -> None:
        with self.lock:
            self.events.append((what, batch, time.monotonic()))

    def _durable(self, block: int) -> None:
        self._log("durable", str(block))
        time.sleep(self.anchor_s / 2)

    def _headers(self, calls: list[Any]) -> list[dict[str, str]]:
        return [{"timestamp": hex(1_700_000_000)} for _ in calls]

    def seal_many(self, items: list[Any]) -> Any:
        return items  # (sealing runs outside both stages)

    def store_sealed(self, items: list[Any]) -> Any:
        assert self.storing.acquire(blocking=False), "two batches stored at once"
        try:
            batch = json.loads(items[0].data)["id"].split("-")[0]
            self._log("store", batch)
            time.sleep(self.store_s)
            self._log("stored", batch)
            owner = self.wallet.address
            cids = [Cid.of(item.data) for item in items]
            return SimpleNamespace(
                batch=batch, items=items, owners=[owner] * len(items),
                stored=[SimpleNamespace(cid=cid) for cid in cids],
            )  # fmt: skip
        finally:
            self.storing.release()

    def anchor_stored(self, stored: Any, *, durable: bool = True, on_sent: Any = None) -> list[Any]:
        assert durable is False  # the repository waits for durability outside the lock
        batch, items = stored.batch, stored.items
        self._log("anchor", batch)
        if self.on_anchor is not None:
            self.on_anchor(stored)
        time.sleep(self.anchor_s / 3)  # estimating, signing, sending
        self._log("sent", batch)
        on_sent()
        time.sleep(self.anchor_s * 2 / 3)  # waiting for the block
        self._log("anchored", batch)
        cid = Cid.of(batch.encode())
        block = ord(batch)  # a block per batch: 97, 98, 99
        return [SimpleNamespace(cid=cid, record=b"r" * 32, block=block) for _ in items]


class Index:
    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper

    def put(self, rows: list[Any]) -> None:
        self.keeper._log("indexed", rows[0][1]["id"].split("-")[0])


def _plans(batch: str) -> list[_Plan]:
    owner = "0x" + "11" * 20
    return [
        _Plan("Observation", {"resourceType": "Observation", "id": f"{batch}-{i}"}, owner, None)
        for i in range(3)
    ]


def test_the_next_batch_stores_while_the_one_before_anchors_and_order_is_kept() -> None:
    keeper = Keeper(store_s=0.2, anchor_s=0.6)
    repo = FhirRepository(keeper, SimpleNamespace(), Index(keeper))  # type: ignore[arg-type]
    threads = []
    for batch in ("a", "b", "c"):
        t = threading.Thread(target=repo._store, args=(_plans(batch),))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # a, b, c arrive in this order
    for t in threads:
        t.join(10)
    at = {(what, batch): when for what, batch, when in keeper.events}
    order = [(what, batch) for what, batch, _ in keeper.events]
    # anchors sent in the order stored, one batch at a time; b sends once a has sent, and
    # does not wait for a's block
    assert [b for w, b in order if w == "sent"] == ["a", "b", "c"]
    assert at[("anchor", "b")] >= at[("sent", "a")]
    assert at[("anchor", "c")] >= at[("sent", "b")]
    assert at[("sent", "b")] < at[("anchored", "a")]
    # b stored while a was anchoring: the two stages overlap
    assert at[("store", "b")] < at[("anchored", "a")]
    # each batch is indexed only once its block is durable, outside the anchor stage
    for batch in "abc":
        assert at[("anchored", batch)] <= at[("durable", str(ord(batch)))]
        assert at[("durable", str(ord(batch)))] <= at[("indexed", batch)]
    assert at[("anchor", "b")] < at[("indexed", "a")]  # b's anchors went out meanwhile


def test_write_lock_holds_both_stages() -> None:
    keeper = Keeper(store_s=0.0, anchor_s=0.0)
    repo = FhirRepository(keeper, SimpleNamespace(), Index(keeper))  # type: ignore[arg-type]
    with repo.write_lock:  # as DICOMweb's STOW: nobody else stores or anchors meanwhile
        assert repo._store_lock.locked() and repo._anchor_lock.locked()
    assert not repo._store_lock.locked() and not repo._anchor_lock.locked()


def test_records_being_written_are_marked_until_indexed() -> None:
    keeper = Keeper(store_s=0.0, anchor_s=0.0)
    repo = FhirRepository(keeper, SimpleNamespace(), Index(keeper))  # type: ignore[arg-type]
    seen: list[set[bytes]] = []
    keeper.on_anchor = lambda stored: seen.append(set(repo._writing))
    plans = _plans("a")
    repo._store(plans)
    owner = keeper.wallet.address
    expected = {
        record_id(owner, Cid.of(json.dumps(p.body, separators=(",", ":")).encode())) for p in plans
    }
    assert seen == [expected]  # while anchoring: the sync leaves these to the writer
    assert repo._writing == set()  # indexed: no longer the writer's


def test_a_failed_write_unmarks_its_records_and_asks_the_next_sync_for_a_full_sweep() -> None:
    keeper = Keeper(store_s=0.0, anchor_s=0.0)
    repo = FhirRepository(keeper, SimpleNamespace(), Index(keeper))  # type: ignore[arg-type]
    repo._last_full = time.time()

    def fail(stored: Any) -> None:
        raise ConnectionError("the ledger went away mid-batch")

    keeper.on_anchor = fail
    with pytest.raises(ConnectionError):
        repo._store(_plans("a"))
    assert repo._writing == set()
    assert repo._last_full == 0.0  # some anchors may have been mined: sweep everything
    assert not repo._store_lock.locked() and not repo._anchor_lock.locked()


def test_the_sync_does_not_fetch_what_the_gateway_is_writing() -> None:
    me = "0x" + "11" * 20
    tag = kind_tag(kind_of("Observation"))
    rows = [
        RecordRow(bytes([n]) * 32, me, tag, None, me, bytes(Cid.of(bytes([n]))), 1, False, False)
        for n in (1, 2, 3)
    ]
    keeper = SimpleNamespace(
        wallet=SimpleNamespace(address=me),
        indexer=SimpleNamespace(records=lambda patient, include_history: rows),
    )
    index = SimpleNamespace(records_of=lambda patient: [rows[0].record], drop=lambda records: 0)
    repo = FhirRepository(keeper, SimpleNamespace(), index)  # type: ignore[arg-type]
    repo._writing = {rows[1].record}
    dropped, missing, _ = repo._reconcile_plan(me, time.time())
    assert dropped == 0
    assert [r.record for r in missing] == [rows[2].record]  # not 1 (indexed), not 2 (writing)


def test_versions_of_new_records_follow_their_chain_in_any_order() -> None:
    me = "0x" + "11" * 20
    tag = kind_tag(kind_of("Observation"))

    def rec(n: int, supersedes: int | None) -> RecordRow:
        before = bytes([supersedes]) * 32 if supersedes is not None else None
        return RecordRow(
            bytes([n]) * 32, me, tag, before, me, bytes(Cid.of(bytes([n]))), 1, False, False
        )

    indexed = {bytes([1]) * 32: SimpleNamespace(version=4)}  # the index holds version 4 as record 1
    keeper = SimpleNamespace(wallet=SimpleNamespace(address=me))
    index = SimpleNamespace(
        by_record=indexed.get, known_records=lambda records: set(records) & set(indexed)
    )
    repo = FhirRepository(keeper, SimpleNamespace(), index)  # type: ignore[arg-type]
    # new: 2 supersedes 1 (indexed), 3 supersedes 2, 5 is a first version; listed out of order
    plan = repo._new_plan(me, [rec(3, 2), rec(5, None), rec(2, 1)], time.time())
    assert plan is not None
    missing, versions = plan
    assert versions == {bytes([2]) * 32: 5, bytes([3]) * 32: 6, bytes([5]) * 32: 1}
    assert [r.record[0] for r in missing] == [5, 2, 3]  # in version order
    # a new version of something the index does not hold: the patient needs a full reconcile
    assert repo._new_plan(me, [rec(7, 6)], time.time()) is None


def test_a_write_waits_for_another_of_the_same_resource_and_no_other() -> None:
    keeper = Keeper(store_s=0.0, anchor_s=0.0)
    repo = FhirRepository(keeper, SimpleNamespace(), Index(keeper))  # type: ignore[arg-type]
    done: list[str] = []

    def write(name: str, keys: list[str]) -> None:
        with repo._claim(keys):
            done.append(name)

    with repo._claim(["Observation/a", "Observation/b"]):
        same = threading.Thread(target=write, args=("same", ["Observation/c", "Observation/b"]))
        other = threading.Thread(target=write, args=("other", ["Observation/c", "Patient/a"]))
        same.start()
        time.sleep(0.05)
        other.start()
        other.join(5)
        time.sleep(0.2)
        assert done == ["other"]  # the write of b waits; c was free again once other let go
    same.join(5)
    assert done == ["other", "same"]
    assert repo._claimed == set()
