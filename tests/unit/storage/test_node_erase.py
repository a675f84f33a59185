"""Erasing an object at a storage node: ``DELETE /objects/{cid}`` over real HTTP on 127.0.0.1.

The node deletes every block it holds of every manifest registered for the object (shares,
DAG nodes, stripe tables, manifest root), durably, keeps blocks another registered object
still lists, unregisters the object and withdraws its provider record. Only trusted,
correctly signed requests may erase.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from medmesh.identity import Wallet
from medmesh.storage.auth import body_digest, sign_request
from medmesh.storage.cid import Cid
from medmesh.storage.erasure import ErasureParams
from medmesh.storage.importer import ImportParams, import_bytes
from medmesh.storage.manifest import Manifest, encode_manifest
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import NodeService
from medmesh.storage.stripes import encode_stripe_group
from tests.unit.storage.test_node_http import Response, call, error_of

SEGMENT = 256
CHUNK = 1024


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture(scope="module")
def stranger() -> Wallet:
    return Wallet.create()


def _service(tmp_path: Path, wallet: Wallet) -> NodeService:
    return NodeService(NodeConfig(data=str(tmp_path / "node"), trusted=(wallet.address,)))


@pytest.fixture
def service(tmp_path: Path, wallet: Wallet) -> Iterator[NodeService]:
    svc = _service(tmp_path, wallet)
    try:
        yield svc
    finally:
        svc.close()


@asynccontextmanager
async def serving(service: NodeService, **app: Any) -> AsyncIterator[TestClient[Any, Any]]:
    server = TestServer(make_app(service, **app), host="127.0.0.1", port=0)
    async with TestClient(server) as client:
        yield client


@dataclass
class StoredObject:
    """An object as a node holds it: every share, the DAG root and the manifest blocks."""

    cid: Cid
    manifest: Cid
    shares: list[Cid]
    dag: list[Cid]
    manifest_blocks: list[Cid]

    @property
    def blocks(self) -> set[Cid]:
        return {*self.shares, *self.dag, *self.manifest_blocks}


def store_object(service: NodeService, data: bytes, *, k: int = 3, n: int = 5) -> StoredObject:
    """Import ``data`` (1 KiB leaves), erasure-code it, store it all and register it."""
    root, dag = import_bytes(data, ImportParams(chunk_size=CHUNK))
    leaves = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    stripes = encode_stripe_group(0, leaves, ErasureParams(k, n), SEGMENT)
    interior = [c for c in dag if c.codec != 0x55]
    manifest = Manifest(
        object=root,
        size=len(data),
        chunk_size=CHUNK,
        max_links=174,
        k=k,
        n=n,
        proof_segment=SEGMENT,
        dag=tuple(interior),
        stripes=tuple(s.row() for s in stripes),
    )
    mcid, mblocks = encode_manifest(manifest)
    shares = [(c, d) for st in stripes for sh in st.shares if sh is not None for c, d in [sh]]
    blocks: list[tuple[Cid, bytes | bytearray | memoryview]] = [
        *shares,
        *((c, dag[c]) for c in interior),
        *((b.cid, b.data) for b in mblocks),
    ]
    service.store.put_many(blocks)
    service.register_object(root, mcid)
    return StoredObject(root, mcid, [c for c, _ in shares], interior, [b.cid for b in mblocks])


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def held(service: NodeService, cids: set[Cid]) -> set[Cid]:
    return {c for c in cids if service.store.has(c)}


def erase_headers(signer: Wallet, service: NodeService, cid: Cid) -> dict[str, str]:
    target = f"/objects/{cid}"
    return sign_request(signer, service.node_id, "DELETE", target, body_digest(b""))


def erase(service: NodeService, signer: Wallet, cid: Cid, **app: Any) -> Response:
    async def run() -> Response:
        async with serving(service, **app) as client:
            target = f"/objects/{cid}"
            return await call(client, "DELETE", target, headers=erase_headers(signer, service, cid))

    return asyncio.run(run())


def test_erase_deletes_every_block_of_the_object_and_forgets_it(
    service: NodeService, wallet: Wallet
) -> None:
    # Prepare: an object of 7 leaves (3 stripes, a short last one) held whole here
    obj = store_object(service, payload(7 * CHUNK + 100, seed=1))
    assert held(service, obj.blocks) == obj.blocks
    assert len(obj.manifest_blocks) == 2  # the root and one stripe table

    contents = [service.store.get(c) for c in obj.blocks]

    # Execute
    status, _, body = erase(service, wallet, obj.cid)

    # Assert: shares, DAG, stripe table and manifest root are gone, and so is the object
    assert status == 200
    assert json.loads(body) == {"object": str(obj.cid), "deleted": len(obj.blocks)}
    assert held(service, obj.blocks) == set()
    assert service.store.stats().blocks == 0
    assert list(service.store.keys()) == []
    assert list(service.store.blocks_dir.rglob("*.data")) == []
    packs = b"".join(p.read_bytes() for p in service.store.packs_dir.glob("*.pack"))
    assert packs and not packs.strip(b"\0")  # erased: not a byte of any block is left
    assert not [d for d in contents if d in packs]
    assert service.manifests(obj.cid) == []
    again = erase(service, wallet, obj.cid)
    assert again[0] == 404
    assert error_of(again) == "not_found"
    assert json.loads(again[2])["message"] == "object not known to this node"

    async def info() -> Response:
        async with serving(service) as client:
            return await call(client, "GET", f"/objects/{obj.cid}")

    assert asyncio.run(info())[0] == 404


def test_erase_of_an_object_not_registered_here_is_404_and_deletes_nothing(
    service: NodeService, wallet: Wallet
) -> None:
    # a block held on its own (no manifest registered for it) is not an object to erase
    data = b"a lone block"
    cid = Cid.of(data)
    service.put_block(cid, data)
    status, _, body = erase(service, wallet, cid)
    assert status == 404
    assert json.loads(body) == {"error": "not_found", "message": "object not known to this node"}
    assert service.store.has(cid)


def _tamper(headers: dict[str, str]) -> dict[str, str]:
    sig = bytearray(bytes.fromhex(headers["X-Medmesh-Signature"].removeprefix("0x")))
    sig[10] ^= 0x01
    return {**headers, "X-Medmesh-Signature": "0x" + sig.hex()}


def test_refused_erasures_delete_nothing(
    service: NodeService, wallet: Wallet, stranger: Wallet
) -> None:
    # Prepare
    obj = store_object(service, payload(4 * CHUNK, seed=2))
    other = store_object(service, payload(4 * CHUNK, seed=3))
    target = f"/objects/{obj.cid}"
    good = erase_headers(wallet, service, obj.cid)
    attempts: dict[str, dict[str, str]] = {
        "unsigned": {},
        "untrusted": erase_headers(stranger, service, obj.cid),
        "tampered signature": _tamper(erase_headers(wallet, service, obj.cid)),
        "claims another signer": {**good, "X-Medmesh-Signer": stranger.address},
        "signed for another object": erase_headers(wallet, service, other.cid),
        "signed for another node": sign_request(
            wallet, "0x" + "11" * 20, "DELETE", target, body_digest(b"")
        ),
        "signed as a GET": sign_request(wallet, service.node_id, "GET", target, body_digest(b"")),
        "stale": sign_request(
            wallet, service.node_id, "DELETE", target, body_digest(b""), now=1_000_000
        ),
    }

    async def run() -> tuple[dict[str, Response], Response, Response]:
        async with serving(service) as client:
            refused = {
                name: await call(client, "DELETE", target, headers=headers)
                for name, headers in attempts.items()
            }
            accepted = await call(client, "DELETE", target, headers=good)
            replayed = await call(client, "DELETE", f"/objects/{obj.cid}", headers=good)
            return refused, accepted, replayed

    before = held(service, obj.blocks | other.blocks)
    refused, accepted, replayed = asyncio.run(run())

    # Assert: every forged or foreign request is refused before anything is deleted...
    statuses = {name: r[0] for name, r in refused.items()}
    assert statuses == {name: 403 if name == "untrusted" else 401 for name in attempts}
    codes = {name: error_of(r) for name, r in refused.items()}
    assert codes == {
        **dict.fromkeys(attempts, "bad_signature"),
        "unsigned": "bad_signature",
        "untrusted": "untrusted_signer",
        "stale": "replay",
    }
    # ... the genuine request then erased the object, and its replay is refused too
    assert accepted[0] == 200
    assert replayed[0] == 401
    assert before == obj.blocks | other.blocks
    assert held(service, obj.blocks) == set()
    assert held(service, other.blocks) == other.blocks
    assert service.manifests(other.cid) == [other.manifest]


def test_blocks_another_object_still_lists_are_kept(service: NodeService, wallet: Wallet) -> None:
    # Prepare: two objects whose first two leaves are the same bytes (same share blocks)
    common = payload(2 * CHUNK, seed=4)
    a = store_object(service, common + payload(4 * CHUNK, seed=5))
    b = store_object(service, common + payload(3 * CHUNK, seed=6))
    shared = a.blocks & b.blocks
    assert len(shared) == 2

    # Execute
    status, _, body = erase(service, wallet, a.cid)

    # Assert: A's own blocks are gone; B is still held whole and registered
    assert status == 200
    assert json.loads(body)["deleted"] == len(a.blocks - shared)
    assert held(service, a.blocks) == shared
    assert held(service, b.blocks) == b.blocks
    assert service.manifests(b.cid) == [b.manifest]
    assert service.manifests(a.cid) == []


def test_every_manifest_of_the_object_is_erased(service: NodeService, wallet: Wallet) -> None:
    # the same object registered under two manifests (other coding parameters)
    data = payload(5 * CHUNK, seed=7)
    first = store_object(service, data, k=3, n=5)
    second = store_object(service, data, k=2, n=4)
    assert first.cid == second.cid and first.manifest != second.manifest
    everything = first.blocks | second.blocks
    status, _, body = erase(service, wallet, first.cid)
    assert status == 200
    assert json.loads(body)["deleted"] == len({c.multihash for c in everything})
    assert held(service, everything) == set()
    assert service.manifests(first.cid) == []


def test_an_erasure_survives_a_restart(tmp_path: Path, wallet: Wallet) -> None:
    # Prepare
    service = _service(tmp_path, wallet)
    try:
        obj = store_object(service, payload(6 * CHUNK, seed=8))
        keep = store_object(service, payload(2 * CHUNK, seed=9))
        # Execute
        assert erase(service, wallet, obj.cid)[0] == 200
    finally:
        service.close()
    reopened = _service(tmp_path, wallet)
    try:
        # Assert: nothing of the erased object came back; the other one is intact
        assert reopened.manifests(obj.cid) == []
        assert held(reopened, obj.blocks) == set()
        assert held(reopened, keep.blocks) == keep.blocks
        assert reopened.store.stats().blocks == len(keep.blocks)
        assert reopened.object_info(keep.cid)["manifests"][0]["dag"] is True
    finally:
        reopened.close()


def test_a_damaged_manifest_is_erased_as_far_as_it_can_be_read(
    service: NodeService, wallet: Wallet
) -> None:
    # Prepare: the stripe table is lost, so the node no longer knows which shares it held
    obj = store_object(service, payload(5 * CHUNK, seed=10))
    (table,) = [c for c in obj.manifest_blocks if c != obj.manifest]
    assert service.delete_block(table)
    # Execute
    status, _, body = erase(service, wallet, obj.cid)
    # Assert: the manifest root and DAG nodes went, the object is forgotten; the shares
    # only the lost table listed stay behind (nothing names them any more)
    assert status == 200
    assert json.loads(body)["deleted"] == 1 + len(obj.dag)
    assert held(service, obj.blocks) == set(obj.shares) - set(obj.dag)
    assert service.manifests(obj.cid) == []


def test_without_its_manifest_root_the_object_is_still_forgotten(
    service: NodeService, wallet: Wallet
) -> None:
    obj = store_object(service, payload(5 * CHUNK, seed=13))
    assert service.delete_block(obj.manifest)
    status, _, body = erase(service, wallet, obj.cid)
    # only the object's own block is known without the manifest
    assert status == 200
    assert json.loads(body)["deleted"] == 1
    assert not service.store.has(obj.cid)
    assert service.manifests(obj.cid) == []


def test_a_successful_erasure_withdraws_the_provider_record(
    service: NodeService, wallet: Wallet, stranger: Wallet
) -> None:
    obj = store_object(service, payload(3 * CHUNK, seed=11))
    withdrawn: list[Cid] = []

    async def withdraw(cid: Cid) -> None:
        withdrawn.append(cid)

    assert erase(service, stranger, obj.cid, withdraw=withdraw)[0] == 403
    assert withdrawn == []
    assert erase(service, wallet, obj.cid, withdraw=withdraw)[0] == 200
    assert erase(service, wallet, obj.cid, withdraw=withdraw)[0] == 404
    assert withdrawn == [obj.cid]


def test_a_one_leaf_object_is_erased(service: NodeService, wallet: Wallet) -> None:
    obj = store_object(service, payload(CHUNK, seed=12))  # one leaf: the object is the leaf
    assert obj.dag == [] and obj.cid in obj.shares
    status, _, body = erase(service, wallet, obj.cid)
    assert status == 200
    assert json.loads(body)["deleted"] == len(obj.blocks)
    assert held(service, obj.blocks) == set()
