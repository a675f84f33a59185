"""``POST /objects/batch`` over real HTTP: many objects indexed in one signed request, each
entry checked like ``POST /objects``, bad entries reported one by one."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from medmesh.identity import Wallet
from medmesh.storage import transport
from medmesh.storage.auth import body_digest, sign_request
from medmesh.storage.block import Block
from medmesh.storage.car import car_bytes
from medmesh.storage.cid import Cid
from medmesh.storage.erasure import ErasureParams
from medmesh.storage.importer import ImportParams, import_bytes
from medmesh.storage.manifest import Manifest, encode_manifest
from medmesh.storage.node import service as node_service
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import MAX_REGISTER_BATCH, NodeService
from medmesh.storage.stripes import encode_stripe_group

SECRET = "PATIENT-SECRET-7f3a9c"  # must never come back in an answer


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


def _config(tmp_path: Path, wallet: Wallet) -> NodeConfig:
    return NodeConfig(data=str(tmp_path / "node"), trusted=(wallet.address,), fsync=True)


@pytest.fixture
def service(tmp_path: Path, wallet: Wallet) -> Iterator[NodeService]:
    svc = NodeService(_config(tmp_path, wallet))
    try:
        yield svc
    finally:
        svc.close()


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield client


def obj(seed: int) -> tuple[Cid, Cid, list[Block]]:
    """A small object: (object CID, manifest CID, manifest blocks, root last)."""
    data = random.Random(seed).randbytes(3 * 1024)
    root, _ = import_bytes(data, ImportParams(chunk_size=1024))
    leaves = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    stripes = encode_stripe_group(0, leaves, ErasureParams(2, 3), 256)
    manifest = Manifest(
        root, len(data), 1024, 174, 2, 3, 256, (root,), tuple(s.row() for s in stripes)
    )
    mcid, mblocks = encode_manifest(manifest)
    return root, mcid, mblocks


def body_of(entries: Sequence[tuple[Cid, Cid]]) -> bytes:
    return json.dumps(
        {"objects": [{"object": str(o), "manifest": str(m)} for o, m in entries]}
    ).encode()


async def post(
    client: TestClient[Any, Any],
    service: NodeService,
    signer: Wallet | None,
    body: bytes,
    target: str = "/objects/batch",
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if signer is not None:
        headers.update(sign_request(signer, service.node_id, "POST", target, body_digest(body)))
    async with client.post(target, data=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw)


def store_meta(service: NodeService, *objects: tuple[Cid, Cid, list[Block]]) -> None:
    blocks = [b for _, _, mblocks in objects for b in mblocks]
    service.put_car(car_bytes([blocks[0].cid], blocks))


def test_many_objects_are_indexed_by_one_signed_request(
    service: NodeService, wallet: Wallet
) -> None:
    # Prepare: three objects whose manifests the node holds
    objects = [obj(i) for i in range(3)]
    store_meta(service, *objects)
    body = body_of([(o, m) for o, m, _ in objects])

    async def run() -> tuple[tuple[int, Any], list[int]]:
        async with serving(make_app(service)) as client:
            answer = await post(client, service, wallet, body)
            looks = []
            for o, _, _ in objects:
                async with client.get(f"/objects/{o}") as resp:
                    looks.append(resp.status)
            return answer, looks

    # Execute
    (status, doc), looks = asyncio.run(run())
    # Assert
    assert status == 200
    assert doc == {
        "registered": 3,
        "results": [{"object": str(o), "manifest": str(m)} for o, m, _ in objects],
    }
    assert looks == [200, 200, 200]
    for o, m, _ in objects:
        assert service.manifests(o) == [m]


def test_bad_entries_are_refused_one_by_one(service: NodeService, wallet: Wallet) -> None:
    good, other, no_tables = obj(10), obj(11), obj(12)
    store_meta(service, good, other)
    service.put_block(no_tables[2][-1].cid, no_tables[2][-1].data)  # the root, no table
    missing = Cid.of(b"no such manifest")
    body = json.dumps(
        {
            "objects": [
                {"object": str(good[0]), "manifest": str(good[1])},
                {"object": str(good[0]), "manifest": str(other[1])},  # names another object
                {"object": str(good[0]), "manifest": str(missing)},  # not stored here
                {"object": str(no_tables[0]), "manifest": str(no_tables[1])},  # no tables
                {"object": SECRET, "manifest": str(good[1])},  # not a CID
                {"manifest": str(good[1])},  # no object
                {"object": str(other[0]), "manifest": str(other[1])},
            ]
        }
    ).encode()

    async def run() -> tuple[int, Any]:
        async with serving(make_app(service)) as client:
            return await post(client, service, wallet, body)

    status, doc = asyncio.run(run())
    assert status == 200
    assert doc["registered"] == 2
    results = doc["results"]
    assert "error" not in results[0] and "error" not in results[6]
    assert results[1]["error"] == "invalid_input"
    assert "does not describe this object" in results[1]["message"]
    assert results[2]["error"] == "not_found"
    assert results[3]["error"] == "invalid_input" and "tables" in results[3]["message"]
    assert results[4] == {"error": "invalid_input", "message": "entry must be {object, manifest}"}
    assert results[5]["error"] == "invalid_input"
    assert SECRET not in json.dumps(doc)
    # the good entries are indexed, the bad ones are not
    assert service.manifests(good[0]) == [good[1]]
    assert service.manifests(other[0]) == [other[1]]
    assert service.manifests(no_tables[0]) == []


def test_unsigned_or_untrusted_batches_index_nothing(service: NodeService, wallet: Wallet) -> None:
    o, m, mblocks = obj(20)
    store_meta(service, (o, m, mblocks))
    body = body_of([(o, m)])
    stranger = Wallet.create()

    async def run() -> list[tuple[int, Any]]:
        async with serving(make_app(service)) as client:
            unsigned = await post(client, service, None, body)
            untrusted = await post(client, service, stranger, body)
            return [unsigned, untrusted]

    (s1, d1), (s2, d2) = asyncio.run(run())
    assert (s1, d1["error"]) == (401, "bad_signature")
    assert (s2, d2["error"]) == (403, "untrusted_signer")
    assert service.manifests(o) == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'{"objects": {}}',
        b'{"objects": []}',
        b"[1, 2]",
    ],
)
def test_malformed_batches_are_400(service: NodeService, wallet: Wallet, body: bytes) -> None:
    async def run() -> tuple[int, Any]:
        async with serving(make_app(service)) as client:
            return await post(client, service, wallet, body)

    status, doc = asyncio.run(run())
    assert status == 400 and doc["error"] == "invalid_input"


def test_size_limits(service: NodeService, wallet: Wallet) -> None:
    o, m, mblocks = obj(30)
    store_meta(service, (o, m, mblocks))
    too_many = body_of([(o, m)] * (MAX_REGISTER_BATCH + 1))
    huge = b" " * (300 * 1024) + body_of([(o, m)])

    async def run() -> list[tuple[int, Any]]:
        async with serving(make_app(service)) as client:
            return [
                await post(client, service, wallet, too_many),
                await post(client, service, wallet, huge),
            ]

    (s1, d1), (s2, d2) = asyncio.run(run())
    assert s1 == 400 and str(MAX_REGISTER_BATCH) in d1["message"]
    assert (s2, d2["error"]) == (413, "too_large")
    assert service.manifests(o) == []
    # the client splits at the node's limit
    assert transport.MAX_REGISTER_BATCH == node_service.MAX_REGISTER_BATCH


def test_registrations_are_durable(tmp_path: Path, wallet: Wallet) -> None:
    svc = NodeService(_config(tmp_path, wallet))
    objects = [obj(40 + i) for i in range(5)]
    try:
        store_meta(svc, *objects)
        assert svc.register_objects([(o, m) for o, m, _ in objects]) == [None] * 5
        # every commit syncs the WAL before the node answers
        assert svc._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        svc.close()
    again = NodeService(_config(tmp_path, wallet))
    try:
        for o, m, _ in objects:
            assert again.manifests(o) == [m]
    finally:
        again.close()


def test_registered_objects_are_announced_once_each(service: NodeService, wallet: Wallet) -> None:
    a, b = obj(50), obj(51)
    store_meta(service, a, b)
    body = body_of([(a[0], a[1]), (b[0], b[1]), (a[0], a[1]), (a[0], Cid.of(b"missing"))])
    batches: list[list[Cid]] = []
    singles: list[Cid] = []

    async def announce_many(cids: Sequence[Cid]) -> None:
        batches.append(list(cids))

    async def announce(cid: Cid) -> None:
        singles.append(cid)

    async def run() -> None:
        async with serving(make_app(service, announce_many=announce_many)) as client:
            await post(client, service, wallet, body)
            await asyncio.sleep(0.05)
        async with serving(make_app(service, announce=announce)) as client:
            await post(client, service, wallet, body)
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert batches == [[a[0], b[0]]]
    assert singles == [a[0], b[0]]
