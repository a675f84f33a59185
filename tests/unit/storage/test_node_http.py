"""The storage node over real HTTP on 127.0.0.1: trustless gateway reads, signed writes,
objects, storage challenges, rate limiting and restarts.

Every test serves a real :class:`NodeService` with ``make_app`` on a loopback socket
(aiohttp's ``TestServer``) and talks to it with a real HTTP client; requests that an HTTP
client would normalise (``..`` segments) are written by hand on a raw socket.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from medmesh.errors import ConfigError
from medmesh.identity import Wallet
from medmesh.storage.auth import body_digest, sign_request
from medmesh.storage.block import Block
from medmesh.storage.car import car_bytes, read_car
from medmesh.storage.cid import Cid
from medmesh.storage.erasure import ErasureParams
from medmesh.storage.exporter import walk_dfs
from medmesh.storage.importer import KUBO_V0, ImportParams, import_bytes
from medmesh.storage.manifest import Manifest, encode_manifest
from medmesh.storage.merkle import MerkleProof, merkle_root, verify_proof
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import NodeService
from medmesh.storage.stripes import EncodedStripe, encode_stripe_group

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
SECRET = b"PATIENT-SECRET-7f3a9c"  # must never come back in an error body

Response = tuple[int, CIMultiDict[str], bytes]


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture(scope="module")
def stranger() -> Wallet:
    return Wallet.create()


def _config(tmp_path: Path, wallet: Wallet, **kw: Any) -> NodeConfig:
    return NodeConfig(data=str(tmp_path / "node"), trusted=(wallet.address,), fsync=True, **kw)


@pytest.fixture
def service(tmp_path: Path, wallet: Wallet) -> Iterator[NodeService]:
    svc = NodeService(_config(tmp_path, wallet))
    try:
        yield svc
    finally:
        svc.close()


@asynccontextmanager
async def serving(service: NodeService) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(service), host="127.0.0.1", port=0)) as client:
        yield client


async def call(
    client: TestClient[Any, Any],
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Response:
    async with client.request(method, target, data=body or None, headers=headers) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def signed(
    signer: Wallet, service: NodeService, method: str, target: str, body: bytes = b""
) -> dict[str, str]:
    return sign_request(signer, service.node_id, method, target, body_digest(body))


async def put(
    client: TestClient[Any, Any], service: NodeService, signer: Wallet, cid: Cid, data: bytes
) -> Response:
    target = f"/ipfs/{cid}"
    return await call(
        client, "PUT", target, body=data, headers=signed(signer, service, "PUT", target, data)
    )


async def post_car(
    client: TestClient[Any, Any], service: NodeService, signer: Wallet, car: bytes
) -> Response:
    hdrs = {"Content-Type": CAR_TYPE, **signed(signer, service, "POST", "/blocks", car)}
    return await call(client, "POST", "/blocks", body=car, headers=hdrs)


async def raw_http(
    client: TestClient[Any, Any], request_line: str, extra: str = "", body: bytes = b""
) -> Response:
    """Send a hand-written request (no client-side path normalisation); read to EOF."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    request = f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}"
    request += f"Content-Length: {len(body)}\r\n\r\n" if body else "\r\n"
    writer.write(request.encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.add(name, value)
    return int(lines[0].split(" ")[1]), headers, payload


def error_of(status_headers_body: Response) -> str:
    """The ``error`` code of a JSON error answer (and check its shape)."""
    _, headers, body = status_headers_body
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"error", "message"}
    assert SECRET not in body
    return str(doc["error"])


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def block_files(service: NodeService) -> set[str]:
    """What the node's disk holds of blocks: files by name, packed blocks by CID, and every
    pack file with a byte in it (a refused write must not append any)."""
    store = service.store
    files = {p.name for p in store.blocks_dir.rglob("*") if p.is_file()}
    held = list(store.keys())
    packed = {str(c) for c in held if store.path_of(c) is None}
    packs = {p.name for p in store.packs_dir.glob("*.pack") if p.stat().st_size}
    return files | packed | packs


def small_dag(seed: int = 0) -> tuple[Cid, dict[Cid, bytes]]:
    """A 3-level UnixFS DAG (7 leaves of 256 bytes, 2 links per node)."""
    data = random.Random(100 + seed).randbytes(7 * 256)
    return import_bytes(data, ImportParams(chunk_size=256, max_links=2))


# -- trustless gateway: raw blocks -------------------------------------------------------


@pytest.mark.parametrize(
    "query,headers",
    [("?format=raw", {}), ("", {"Accept": RAW_TYPE}), ("", {"Accept": f"text/html, {RAW_TYPE}"})],
)
def test_get_raw_block(
    service: NodeService, query: str, headers: dict[str, str], wallet: Wallet
) -> None:
    cid = Cid.of(b"raw block bytes")
    service.put_block(cid, b"raw block bytes")

    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "GET", f"/ipfs/{cid}{query}", headers=headers)

    status, hdrs, body = asyncio.run(run())
    assert status == 200
    assert body == b"raw block bytes"
    assert hdrs["Content-Type"] == RAW_TYPE
    assert hdrs["X-Content-Type-Options"] == "nosniff"
    assert hdrs["ETag"] == f'"{cid}.raw"'
    assert "immutable" in hdrs["Cache-Control"]
    assert hdrs["X-Ipfs-Roots"] == str(cid)
    assert hdrs["Content-Length"] == str(len(b"raw block bytes"))


def test_head_raw_block_has_length_and_no_body(service: NodeService) -> None:
    data = b"h" * 1234
    cid = Cid.of(data)
    service.put_block(cid, data)

    async def run() -> tuple[Response, Response]:
        async with serving(service) as client:
            via_client = await call(client, "HEAD", f"/ipfs/{cid}?format=raw")
            on_the_wire = await raw_http(
                client, f"HEAD /ipfs/{cid} HTTP/1.1", f"Accept: {RAW_TYPE}\r\n"
            )
            return via_client, on_the_wire

    (status, hdrs, body), (wire_status, wire_hdrs, wire_body) = asyncio.run(run())
    assert (status, wire_status) == (200, 200)
    assert hdrs["Content-Length"] == wire_hdrs["Content-Length"] == "1234"
    assert hdrs["Content-Type"] == wire_hdrs["Content-Type"] == RAW_TYPE
    assert wire_hdrs["ETag"] == f'"{cid}.raw"'
    assert wire_hdrs["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in wire_hdrs["Cache-Control"]
    assert body == wire_body == b""


def test_probe_cid_answers_with_an_empty_block(service: NodeService) -> None:
    async def run() -> list[Response]:
        async with serving(service) as client:
            return [
                await call(client, "GET", "/ipfs/bafkqaaa", headers={"Accept": RAW_TYPE}),
                await call(client, "GET", "/ipfs/bafkqaaa?format=raw"),
                await call(client, "HEAD", "/ipfs/bafkqaaa?format=raw"),
            ]

    answers = asyncio.run(run())
    for status, hdrs, body in answers:
        assert status == 200
        assert body == b""
        assert hdrs["Content-Type"] == RAW_TYPE
    assert answers[0][1]["Content-Length"] == answers[1][1]["Content-Length"] == "0"
    assert answers[2][1].get("Content-Length", "0") == "0"  # aiohttp omits a 0 on HEAD
    assert block_files(service) == set()


def test_without_a_format_the_gateway_answers_406(service: NodeService) -> None:
    cid = Cid.of(b"x")
    service.put_block(cid, b"x")

    async def run() -> list[Response]:
        async with serving(service) as client:
            return [
                await call(client, "GET", f"/ipfs/{cid}"),
                await call(client, "GET", f"/ipfs/{cid}?format=html"),
                await call(client, "GET", f"/ipfs/{cid}", headers={"Accept": "text/html"}),
            ]

    for answer in asyncio.run(run()):
        assert answer[0] == 406
        assert error_of(answer) == "not_acceptable"
        assert answer[2] != b"x"


def test_unknown_block_is_404(service: NodeService) -> None:
    cid = Cid.of(b"never stored")

    async def run() -> list[Response]:
        async with serving(service) as client:
            return [
                await call(client, "GET", f"/ipfs/{cid}?format=raw"),
                await call(client, "GET", f"/ipfs/{cid}?format=car"),
                await call(client, "GET", f"/ipfs/{cid}?format=car&dag-scope=block"),
            ]

    for answer in asyncio.run(run()):
        assert answer[0] == 404
        assert error_of(answer) == "not_found"


def test_cidv0_block_is_served(service: NodeService, wallet: Wallet) -> None:
    # Prepare: a legacy (CIDv0, dag-pb) single-block file, uploaded by its Qm... name
    root, blocks = import_bytes(b"hello world\n", KUBO_V0)
    assert str(root) == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"

    async def run() -> list[Response]:
        async with serving(service) as client:
            stored = await put(client, service, wallet, root, blocks[root])
            return [
                stored,
                await call(client, "GET", f"/ipfs/{root}?format=raw"),
                await call(client, "GET", f"/ipfs/{root.to_v1()}?format=raw"),
                await call(client, "GET", f"/ipfs/{root}?format=car"),
            ]

    stored, v0, v1, car = asyncio.run(run())
    assert stored[0] == 201
    assert v0[0] == v1[0] == car[0] == 200
    assert v0[2] == v1[2] == blocks[root]
    assert v0[1]["X-Ipfs-Path"] == f"/ipfs/{root}"
    roots, car_blocks = read_car(io.BytesIO(car[2]))
    assert roots == [root]
    assert [(b.cid, b.data) for b in car_blocks] == [(root, blocks[root])]


# -- trustless gateway: CAR ------------------------------------------------------------------


def test_car_of_a_dag_in_dfs_order(service: NodeService, wallet: Wallet) -> None:
    # Prepare: upload every block of a small DAG with signed PUTs
    root, blocks = small_dag()
    assert len(blocks) > 8

    async def run() -> tuple[list[int], Response, Response, Response]:
        async with serving(service) as client:
            puts = [(await put(client, service, wallet, c, d))[0] for c, d in blocks.items()]
            by_query = await call(client, "GET", f"/ipfs/{root}?format=car")
            by_accept = await call(client, "GET", f"/ipfs/{root}", headers={"Accept": CAR_TYPE})
            one = await call(client, "GET", f"/ipfs/{root}?format=car&dag-scope=block")
            return puts, by_query, by_accept, one

    puts, by_query, by_accept, one = asyncio.run(run())
    # Assert: the whole DAG, each block once, root first, in DFS pre-order
    assert puts == [201] * len(blocks)
    assert by_query[0] == by_accept[0] == 200
    assert by_query[2] == by_accept[2]
    assert by_query[1]["Content-Type"].startswith(CAR_TYPE)
    assert "version=1" in by_query[1]["Content-Type"]
    assert by_query[1]["ETag"] == f'"{root}.car.all"'
    assert by_query[1]["X-Content-Type-Options"] == "nosniff"
    roots, car_blocks = read_car(io.BytesIO(by_query[2]))
    got = [(b.cid, b.data) for b in car_blocks]
    assert roots == [root]
    assert got[0][0] == root
    assert dict(got) == blocks
    assert len(got) == len(blocks)
    assert [c for c, _ in got] == [b.cid for b in walk_dfs(root, blocks.__getitem__)]
    # dag-scope=block: the root block only
    assert one[0] == 200
    assert one[1]["ETag"] == f'"{root}.car.block"'
    roots1, only = read_car(io.BytesIO(one[2]))
    assert roots1 == [root]
    assert [(b.cid, b.data) for b in only] == [(root, blocks[root])]


def test_car_of_an_incomplete_dag_is_404_and_bad_scope_is_400(
    service: NodeService, wallet: Wallet
) -> None:
    root, blocks = small_dag(seed=1)
    missing = next(c for c in blocks if c != root and len(blocks[c]) == 256)
    for cid, data in blocks.items():
        if cid != missing:
            service.put_block(cid, data)

    async def run() -> tuple[Response, Response]:
        async with serving(service) as client:
            return (
                await call(client, "GET", f"/ipfs/{root}?format=car"),
                await call(client, "GET", f"/ipfs/{root}?format=car&dag-scope=everything"),
            )

    incomplete, bad_scope = asyncio.run(run())
    assert incomplete[0] == 404
    assert error_of(incomplete) == "not_found"
    assert bad_scope[0] == 400
    assert error_of(bad_scope) == "invalid_input"


# -- signed writes ---------------------------------------------------------------------------


def test_signed_put_stores_then_reports_already_held(service: NodeService, wallet: Wallet) -> None:
    data = b"a signed block"
    cid = Cid.of(data)

    async def run() -> tuple[Response, Response, Response]:
        async with serving(service) as client:
            first = await put(client, service, wallet, cid, data)
            again = await put(client, service, wallet, cid, data)
            back = await call(client, "GET", f"/ipfs/{cid}?format=raw")
            return first, again, back

    first, again, back = asyncio.run(run())
    assert first[0] == 201
    assert json.loads(first[2]) == {"cid": str(cid), "new": True}
    assert again[0] == 200
    assert json.loads(again[2]) == {"cid": str(cid), "new": False}
    assert back[2] == data
    assert service.store.get(cid) == data
    assert service.store.stats().blocks == 1


def test_unsigned_put_is_401_and_stores_nothing(service: NodeService) -> None:
    data = b"unsigned"
    cid = Cid.of(data)

    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "PUT", f"/ipfs/{cid}", body=data)

    answer = asyncio.run(run())
    assert answer[0] == 401
    assert error_of(answer) == "bad_signature"
    assert not service.store.has(cid)
    assert block_files(service) == set()


def test_put_by_an_untrusted_key_is_403(service: NodeService, stranger: Wallet) -> None:
    data = b"from a stranger"
    cid = Cid.of(data)

    async def run() -> Response:
        async with serving(service) as client:
            return await put(client, service, stranger, cid, data)

    answer = asyncio.run(run())
    assert answer[0] == 403
    assert error_of(answer) == "untrusted_signer"
    assert not service.store.has(cid)


def test_put_signed_for_another_node_is_401(service: NodeService, wallet: Wallet) -> None:
    data = b"for node B"
    cid = Cid.of(data)
    target = f"/ipfs/{cid}"
    headers = sign_request(wallet, "0x" + "11" * 20, "PUT", target, body_digest(data))

    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "PUT", target, body=data, headers=headers)

    answer = asyncio.run(run())
    assert answer[0] == 401
    assert error_of(answer) == "bad_signature"
    assert not service.store.has(cid)


def test_replay_after_a_node_restart_is_refused(
    tmp_path: Path, service: NodeService, wallet: Wallet
) -> None:
    # Prepare: a signed PUT accepted by the node, which then restarts (a fresh app and service
    # on the same data folder); the block is dropped so that an accepted replay would show
    data = b"replay me after a restart"
    cid = Cid.of(data)
    target = f"/ipfs/{cid}"
    headers = signed(wallet, service, "PUT", target, data)

    async def first_life() -> Response:
        async with serving(service) as client:
            return await call(client, "PUT", target, body=data, headers=headers)

    assert asyncio.run(first_life())[0] == 201
    service.delete_block(cid)
    service.close()
    reborn = NodeService(_config(tmp_path, wallet))
    try:

        async def second_life() -> Response:
            async with serving(reborn) as client:
                return await call(client, "PUT", target, body=data, headers=headers)

        replay = asyncio.run(second_life())
        assert replay[0] == 401 and error_of(replay) == "replay"
        assert not reborn.store.has(cid)
    finally:
        reborn.close()


def test_replayed_put_is_401(service: NodeService, wallet: Wallet) -> None:
    # Prepare: one signed request, sent twice; the block is dropped in between so that an
    # accepted replay would be visible as a stored block
    data = b"replay me"
    cid = Cid.of(data)
    target = f"/ipfs/{cid}"
    headers = signed(wallet, service, "PUT", target, data)

    async def run() -> tuple[Response, Response]:
        async with serving(service) as client:
            first = await call(client, "PUT", target, body=data, headers=headers)
            service.delete_block(cid)
            replay = await call(client, "PUT", target, body=data, headers=headers)
            return first, replay

    first, replay = asyncio.run(run())
    assert first[0] == 201
    assert replay[0] == 401
    assert error_of(replay) == "replay"
    assert not service.store.has(cid)


def test_signature_covers_the_body(service: NodeService, wallet: Wallet) -> None:
    data = b"original"
    cid = Cid.of(b"swapped")
    target = f"/ipfs/{cid}"
    headers = signed(wallet, service, "PUT", target, data)

    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "PUT", target, body=b"swapped", headers=headers)

    answer = asyncio.run(run())
    assert answer[0] == 401
    assert not service.store.has(cid)


def test_mismatching_body_is_400_and_stores_nothing(
    tmp_path: Path, service: NodeService, wallet: Wallet
) -> None:
    cid = Cid.of(b"the real block")
    before = files_under(tmp_path)

    async def run() -> Response:
        async with serving(service) as client:
            return await put(client, service, wallet, cid, SECRET + b" not the block")

    answer = asyncio.run(run())
    assert answer[0] == 400
    assert error_of(answer) == "block_mismatch"
    assert not service.store.has(cid)
    assert block_files(service) == set()
    assert {k: v for k, v in files_under(tmp_path).items() if "blocks" in k or "packs" in k} == {
        k: v for k, v in before.items() if "blocks" in k or "packs" in k
    }


def test_body_over_the_block_limit_is_413_and_stores_nothing(
    tmp_path: Path, wallet: Wallet
) -> None:
    svc = NodeService(_config(tmp_path, wallet, max_block_size=1024))
    fits, big = b"f" * 1024, b"b" * 4096

    async def run() -> tuple[Response, Response]:
        async with serving(svc) as client:
            return (
                await put(client, svc, wallet, Cid.of(big), big),
                await put(client, svc, wallet, Cid.of(fits), fits),
            )

    try:
        too_big, ok = asyncio.run(run())
        assert too_big[0] == 413
        assert error_of(too_big) == "too_large"
        assert not svc.store.has(Cid.of(big))
        assert ok[0] == 201
        assert block_files(svc) == {str(Cid.of(fits)), "00000001.pack"}  # packed: 1 KiB
    finally:
        svc.close()


def test_put_beyond_the_quota_is_507(tmp_path: Path, wallet: Wallet) -> None:
    svc = NodeService(_config(tmp_path, wallet, quota=1000))
    first, second = b"1" * 600, b"2" * 600

    async def run() -> tuple[Response, Response]:
        async with serving(svc) as client:
            return (
                await put(client, svc, wallet, Cid.of(first), first),
                await put(client, svc, wallet, Cid.of(second), second),
            )

    try:
        ok, full = asyncio.run(run())
        assert ok[0] == 201
        assert full[0] == 507
        assert error_of(full) == "storage_full"
        assert not svc.store.has(Cid.of(second))
        assert svc.store.stats().bytes_used == 600
    finally:
        svc.close()


def test_car_batch_is_stored(service: NodeService, wallet: Wallet) -> None:
    root, blocks = small_dag(seed=2)
    car = car_bytes([root], [Block(c, d) for c, d in blocks.items()])

    async def run() -> tuple[Response, Response, Response]:
        async with serving(service) as client:
            first = await post_car(client, service, wallet, car)
            again = await post_car(client, service, wallet, car)
            back = await call(client, "GET", f"/ipfs/{root}?format=car")
            return first, again, back

    first, again, back = asyncio.run(run())
    assert first[0] == 201
    assert json.loads(first[2]) == {"new": len(blocks), "blocks": len(blocks)}
    assert json.loads(again[2]) == {"new": 0, "blocks": len(blocks)}
    for cid, data in blocks.items():
        assert service.store.get(cid) == data
    _, served = read_car(io.BytesIO(back[2]))
    assert {b.cid: b.data for b in served} == blocks


def test_car_with_one_tampered_block_stores_none_of_it(
    service: NodeService, wallet: Wallet
) -> None:
    # Prepare: a valid CAR whose last block is altered after encoding
    root, blocks = small_dag(seed=3)
    items = list(blocks.items())
    last_cid, last_data = items[-1]
    tampered = [Block(c, d) for c, d in items[:-1]] + [
        Block(last_cid, SECRET + last_data[len(SECRET) :])
    ]
    car = car_bytes([root], tampered)

    async def run() -> Response:
        async with serving(service) as client:
            return await post_car(client, service, wallet, car)

    answer = asyncio.run(run())
    assert answer[0] == 400
    assert error_of(answer) == "block_mismatch"
    assert not any(service.store.has(c) for c in blocks)
    assert block_files(service) == set()


@pytest.mark.parametrize(
    "body",
    [b"", SECRET, b"\x0a" + SECRET, car_bytes([], [])[:-1]],
    ids=["empty", "garbage", "bad-header", "truncated"],
)
def test_malformed_car_is_400(service: NodeService, wallet: Wallet, body: bytes) -> None:
    async def run() -> Response:
        async with serving(service) as client:
            return await post_car(client, service, wallet, body)

    answer = asyncio.run(run())
    assert answer[0] == 400
    assert error_of(answer) == "invalid_input"
    assert block_files(service) == set()


def test_unsigned_car_batch_is_401(service: NodeService) -> None:
    root, blocks = small_dag(seed=4)
    car = car_bytes([root], [Block(c, d) for c, d in blocks.items()])

    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "POST", "/blocks", body=car)

    assert asyncio.run(run())[0] == 401
    assert block_files(service) == set()


def test_signed_delete(service: NodeService, wallet: Wallet, stranger: Wallet) -> None:
    data = b"to be deleted"
    cid = Cid.of(data)
    service.put_block(cid, data)
    target = f"/ipfs/{cid}"

    async def run() -> list[Response]:
        async with serving(service) as client:
            unsigned = await call(client, "DELETE", target)
            untrusted = await call(
                client, "DELETE", target, headers=signed(stranger, service, "DELETE", target)
            )
            held_after_refusals = service.store.has(cid)
            deleted = await call(
                client, "DELETE", target, headers=signed(wallet, service, "DELETE", target)
            )
            again = await call(
                client, "DELETE", target, headers=signed(wallet, service, "DELETE", target)
            )
            read = await call(client, "GET", f"{target}?format=raw")
            assert held_after_refusals
            return [unsigned, untrusted, deleted, again, read]

    unsigned, untrusted, deleted, again, read = asyncio.run(run())
    assert unsigned[0] == 401
    assert untrusted[0] == 403
    assert deleted[0] == 200
    assert json.loads(deleted[2]) == {"cid": str(cid), "deleted": True}
    assert again[0] == 404
    assert read[0] == 404
    assert not service.store.has(cid)
    assert service.store.stats().blocks == 0


# -- bad input -----------------------------------------------------------------------------

BAD_PATHS = [
    "/ipfs/garbage",
    "/ipfs/%20",
    "/ipfs/%00",
    "/ipfs/b" + "a" * 600,
    "/ipfs/Qm" + "1" * 44,
    "/ipfs/..%2F..%2Fetc%2Fpasswd",
    "/ipfs/../../etc/passwd",
    "/ipfs/bafkreib2xmnmqa2k6cuizqcniat2zdnz5bvetgkx4ydsyoxorc7eewz5ja/etc/passwd",
    "/ipfs/bafkreib2xmnmqa2k6cuizqcniat2zdnz5bvetgkx4ydsyoxorc7eewz5ja/../../x",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_malformed_cid_paths_are_refused_and_write_nothing(
    tmp_path: Path, service: NodeService, wallet: Wallet, path: str
) -> None:
    # Prepare: a snapshot of everything under the test folder (the node's data is inside)
    before = files_under(tmp_path)
    body = SECRET

    async def run() -> list[Response]:
        async with serving(service) as client:
            out = [await raw_http(client, f"GET {path}?format=raw HTTP/1.1")]
            for method in ("PUT", "DELETE"):
                payload = body if method == "PUT" else b""
                hdrs = signed(wallet, service, method, path, payload)
                extra = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
                out.append(await raw_http(client, f"{method} {path} HTTP/1.1", extra, payload))
            return out

    answers = asyncio.run(run())
    # Assert: a 4xx JSON error for every method, and not one file added or changed
    for answer in answers:
        assert 400 <= answer[0] < 500
        assert error_of(answer) in {"invalid_cid", "invalid_input", "not_found"}
    assert answers[0][0] == 400
    assert files_under(tmp_path) == before
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "node" / "etc").exists()


def test_unknown_routes_and_methods_get_json_errors(service: NodeService) -> None:
    async def run() -> list[Response]:
        async with serving(service) as client:
            return [
                await call(client, "GET", "/ipfs/"),
                await call(client, "GET", "/nothing/here"),
                await call(client, "POST", f"/ipfs/{Cid.of(b'x')}", body=SECRET),
            ]

    empty, unknown, method = asyncio.run(run())
    assert (empty[0], unknown[0], method[0]) == (404, 404, 405)
    assert error_of(empty) == error_of(unknown) == "not_found"
    assert error_of(method) == "method_not_allowed"
    assert "PUT" in method[1]["Allow"]


def test_error_bodies_never_echo_the_request(service: NodeService, wallet: Wallet) -> None:
    bad_json = b'{"object": "' + SECRET + b'", "manifest": "' + SECRET + b'"}'
    challenge = b'{"cid": "' + SECRET + b'", "index": 0}'

    async def run() -> list[Response]:
        async with serving(service) as client:
            objects = await call(
                client,
                "POST",
                "/objects",
                body=bad_json,
                headers=signed(wallet, service, "POST", "/objects", bad_json),
            )
            not_json = await call(
                client,
                "POST",
                "/objects",
                body=SECRET,
                headers=signed(wallet, service, "POST", "/objects", SECRET),
            )
            chal = await call(client, "POST", "/challenge", body=challenge)
            unsigned = await call(client, "PUT", f"/ipfs/{Cid.of(SECRET)}", body=SECRET)
            return [objects, not_json, chal, unsigned]

    answers = asyncio.run(run())
    assert [a[0] for a in answers] == [400, 400, 400, 401]
    for answer in answers:
        error_of(answer)  # checks that SECRET is not in the body


# -- objects and storage challenges ------------------------------------------------------

SEGMENT = 256


def _object(seed: int = 0) -> tuple[Cid, dict[Cid, bytes], list[EncodedStripe], Cid, list[Block]]:
    """A 5-leaf object, its stripes (3-of-5) and its manifest blocks."""
    data = random.Random(seed).randbytes(5 * 1024)
    root, dag = import_bytes(data, ImportParams(chunk_size=1024))
    leaves = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    stripes = encode_stripe_group(0, leaves, ErasureParams(3, 5), SEGMENT)
    manifest = Manifest(
        object=root,
        size=len(data),
        chunk_size=1024,
        max_links=174,
        k=3,
        n=5,
        proof_segment=SEGMENT,
        dag=(root,),
        stripes=tuple(s.row() for s in stripes),
    )
    mcid, mblocks = encode_manifest(manifest)
    return root, dag, stripes, mcid, mblocks


def _register_body(obj: Cid, manifest: Cid) -> bytes:
    return json.dumps({"object": str(obj), "manifest": str(manifest)}).encode()


def test_register_object_and_list_held_shares(service: NodeService, wallet: Wallet) -> None:
    # Prepare: store the manifest, the DAG root and some shares (all of stripe 0, one
    # parity share of stripe 1)
    root, dag, stripes, mcid, mblocks = _object()
    s0 = [sh for sh in stripes[0].shares if sh is not None]
    s1_parity = stripes[1].shares[4]
    assert stripes[1].shares[2] is None and s1_parity is not None  # virtual data share
    upload = [*mblocks, Block(root, dag[root]), *(Block(c, d) for c, d in s0)]
    upload.append(Block(*s1_parity))
    car = car_bytes([mcid], upload)
    body = _register_body(root, mcid)

    async def run() -> tuple[Response, Response, Response, Response]:
        async with serving(service) as client:
            stored = await post_car(client, service, wallet, car)
            unsigned = await call(client, "POST", "/objects", body=body)
            registered = await call(
                client,
                "POST",
                "/objects",
                body=body,
                headers=signed(wallet, service, "POST", "/objects", body),
            )
            info = await call(client, "GET", f"/objects/{root}")
            return stored, unsigned, registered, info

    stored, unsigned, registered, info = asyncio.run(run())
    # Assert
    assert stored[0] == 201
    assert unsigned[0] == 401
    assert registered[0] == 201
    assert json.loads(registered[2]) == {"object": str(root), "manifest": str(mcid)}
    assert info[0] == 200
    assert json.loads(info[2]) == {
        "object": str(root),
        "manifests": [
            {
                "manifest": str(mcid),
                "shares": [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 4]],
                "dag": True,
            }
        ],
    }
    assert service.manifests(root) == [mcid]


def test_register_refuses_a_manifest_of_another_object(
    service: NodeService, wallet: Wallet
) -> None:
    root, dag, _, mcid, mblocks = _object(seed=1)
    other_root, _, _, _, _ = _object(seed=2)
    for b in mblocks:
        service.put_block(b.cid, b.data)
    wrong = _register_body(other_root, mcid)
    missing = _register_body(root, Cid.of(b"no such manifest"))
    not_a_manifest = _register_body(root, root)
    service.put_block(root, dag[root])

    async def run() -> list[Response]:
        async with serving(service) as client:
            out = []
            for body in (wrong, missing, not_a_manifest):
                hdrs = signed(wallet, service, "POST", "/objects", body)
                out.append(await call(client, "POST", "/objects", body=body, headers=hdrs))
            out.append(await call(client, "GET", f"/objects/{other_root}"))
            out.append(await call(client, "GET", f"/objects/{root}"))
            return out

    wrong_obj, no_manifest, bad_manifest, lookup_other, lookup_root = asyncio.run(run())
    assert wrong_obj[0] == 400
    assert "does not describe this object" in json.loads(wrong_obj[2])["message"]
    assert no_manifest[0] == 404
    assert bad_manifest[0] == 400
    assert lookup_other[0] == lookup_root[0] == 404
    assert service.manifests(other_root) == []


def test_register_needs_the_stripe_tables(service: NodeService, wallet: Wallet) -> None:
    root, _, _, mcid, mblocks = _object(seed=3)
    head = mblocks[-1]
    assert head.cid == mcid
    service.put_block(head.cid, head.data)  # the root block only, no tables
    body = _register_body(root, mcid)

    async def run() -> Response:
        async with serving(service) as client:
            hdrs = signed(wallet, service, "POST", "/objects", body)
            return await call(client, "POST", "/objects", body=body, headers=hdrs)

    answer = asyncio.run(run())
    assert answer[0] == 400
    assert "tables" in json.loads(answer[2])["message"]
    assert service.manifests(root) == []


def test_challenge_returns_a_valid_storage_proof(service: NodeService) -> None:
    # Prepare: store every real share of stripe 1 (two leaves and two parity shares)
    _, _, stripes, _, _ = _object(seed=4)
    stripe = stripes[1]
    shares = [(i, sh) for i, sh in enumerate(stripe.shares) if sh is not None]
    for _, (cid, data) in shares:
        service.put_block(cid, data)

    async def ask(client: TestClient[Any, Any], cid: Cid, index: int) -> Response:
        body = json.dumps({"cid": str(cid), "index": index, "segment_size": SEGMENT}).encode()
        return await call(client, "POST", "/challenge", body=body)

    async def run() -> list[tuple[int, Cid, bytes, int, Response]]:
        async with serving(service) as client:
            out = []
            for i, (cid, data) in shares:
                for index in range(len(data) // SEGMENT):
                    out.append((i, cid, data, index, await ask(client, cid, index)))
            return out

    answers = asyncio.run(run())
    # Assert: every proof checks against the share's Merkle root (also the manifest's)
    assert len(answers) == 4 * 4
    for i, cid, data, index, (status, _, body) in answers:
        assert status == 200
        doc = json.loads(body)
        assert (doc["cid"], doc["length"], doc["segment_size"]) == (str(cid), len(data), SEGMENT)
        proof = MerkleProof.from_json(doc["proof"])
        assert proof.index == index
        assert proof.segment == data[index * SEGMENT : (index + 1) * SEGMENT]
        root = merkle_root(data, SEGMENT)
        assert root == stripe.roots[i]
        assert verify_proof(root, proof, len(data), SEGMENT)
        assert not verify_proof(merkle_root(data[::-1], SEGMENT), proof, len(data), SEGMENT)


@pytest.mark.parametrize(
    "doc,status",
    [
        ({"index": 4, "segment_size": SEGMENT}, 400),  # 1024 bytes = segments 0..3
        ({"index": -1, "segment_size": SEGMENT}, 400),
        ({"index": 0, "segment_size": 32}, 400),
        ({"index": 0, "segment_size": (1 << 20) + 1}, 400),
        ({"index": "zero", "segment_size": SEGMENT}, 400),
        ({"segment_size": SEGMENT}, 400),
    ],
)
def test_challenge_out_of_range_is_400(
    service: NodeService, doc: dict[str, Any], status: int
) -> None:
    data = bytes(range(256)) * 4
    cid = Cid.of(data)
    service.put_block(cid, data)
    body = json.dumps({"cid": str(cid), **doc}).encode()

    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "POST", "/challenge", body=body)

    answer = asyncio.run(run())
    assert answer[0] == status
    assert error_of(answer) == "invalid_input"


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'{"cid": 5, "index": 0}', b'{"cid": "x", "index": Infinity}']
)
def test_malformed_challenge_is_400(service: NodeService, body: bytes) -> None:
    async def run() -> Response:
        async with serving(service) as client:
            return await call(client, "POST", "/challenge", body=body)

    answer = asyncio.run(run())
    assert answer[0] == 400
    assert error_of(answer) in {"invalid_input", "invalid_cid"}


def test_challenge_for_an_unknown_share_is_404(service: NodeService) -> None:
    body = json.dumps({"cid": str(Cid.of(b"absent")), "index": 0, "segment_size": 64}).encode()
    inf_index = json.dumps({"cid": str(Cid.of(b"x")), "index": float("inf")}).encode()

    async def run() -> tuple[Response, Response]:
        async with serving(service) as client:
            return (
                await call(client, "POST", "/challenge", body=body),
                await call(client, "POST", "/challenge", body=inf_index),
            )

    unknown, infinite = asyncio.run(run())
    assert unknown[0] == 404
    assert error_of(unknown) == "not_found"
    assert infinite[0] == 400


# -- node info and routing ---------------------------------------------------------------


def test_node_info_reports_identity_and_usage(service: NodeService, wallet: Wallet) -> None:
    async def run() -> tuple[Response, Response, Response]:
        async with serving(service) as client:
            await put(client, service, wallet, Cid.of(b"a" * 10), b"a" * 10)
            await put(client, service, wallet, Cid.of(b"b" * 20), b"b" * 20)
            info = await call(client, "GET", "/node/info")
            providers = await call(client, "GET", f"/routing/v1/providers/{Cid.of(b'a' * 10)}")
            bad = await call(client, "GET", "/routing/v1/providers/garbage")
            return info, providers, bad

    info, providers, bad = asyncio.run(run())
    doc = json.loads(info[2])
    assert doc["id"] == service.node_id
    assert (doc["blocks"], doc["bytes_used"], doc["quota"]) == (2, 30, None)
    assert doc["disk_free"] > 0
    assert providers[0] == 404  # no DHT behind this app
    assert bad[0] == 400


# -- rate limit ------------------------------------------------------------------------------


def _timed_fetch(service: NodeService, cid: Cid) -> tuple[float, bytes]:
    async def run() -> tuple[float, bytes]:
        async with serving(service) as client:
            await call(client, "GET", "/ipfs/bafkqaaa?format=raw")  # connect first
            start = time.perf_counter()
            _, _, body = await call(client, "GET", f"/ipfs/{cid}?format=raw")
            return time.perf_counter() - start, body

    return asyncio.run(run())


def test_rate_limit_slows_block_transfers(tmp_path: Path, wallet: Wallet) -> None:
    # Prepare: the same 1 MiB block on a node capped at 2 MB/s and on an uncapped one
    data = os.urandom(1 << 20)
    cid = Cid.of(data)
    slow = NodeService(_config(tmp_path / "slow", wallet, rate_limit=2_000_000))
    fast = NodeService(_config(tmp_path / "fast", wallet))
    try:
        slow.put_block(cid, data)
        fast.put_block(cid, data)
        # Execute
        slow_time, slow_body = _timed_fetch(slow, cid)
        fast_time, fast_body = _timed_fetch(fast, cid)
    finally:
        slow.close()
        fast.close()
    # Assert: 1 MiB minus the initial burst at 2 MB/s is ~0.42 s
    assert slow_body == fast_body == data
    assert slow_time >= 0.35
    assert fast_time < 0.2
    assert fast_time < slow_time / 2


# -- restarts --------------------------------------------------------------------------------


def test_acknowledged_blocks_survive_a_restart(tmp_path: Path, wallet: Wallet) -> None:
    # Prepare: a node that acknowledged single blocks and a CAR batch, then stops
    cfg = _config(tmp_path, wallet)
    singles = {Cid.of(bytes([i]) * (100 + i)): bytes([i]) * (100 + i) for i in range(10)}
    root, dag = small_dag(seed=5)
    car = car_bytes([root], [Block(c, d) for c, d in dag.items()])
    first = NodeService(cfg)

    async def write() -> list[int]:
        async with serving(first) as client:
            codes = [(await put(client, first, wallet, c, d))[0] for c, d in singles.items()]
            codes.append((await post_car(client, first, wallet, car))[0])
            return codes

    try:
        codes = asyncio.run(write())
        node_id = first.node_id
    finally:
        first.close()
    expected = {**singles, **dag}

    # Execute: a new service on the same data folder, behind a new server
    second = NodeService(cfg)

    async def read() -> tuple[dict[Cid, bytes], dict[str, Any]]:
        async with serving(second) as client:
            got = {}
            for cid in expected:
                status, _, body = await call(client, "GET", f"/ipfs/{cid}?format=raw")
                assert status == 200
                got[cid] = body
            info = json.loads((await call(client, "GET", "/node/info"))[2])
            return got, info

    try:
        got, info = asyncio.run(read())
        # Assert
        assert codes == [201] * 11
        assert got == expected
        assert second.node_id == node_id == info["id"]
        assert info["blocks"] == len(expected)
        assert info["bytes_used"] == sum(len(d) for d in expected.values())
    finally:
        second.close()


def test_node_identity_key_persists(tmp_path: Path, wallet: Wallet) -> None:
    cfg = _config(tmp_path, wallet)
    first = NodeService(cfg)
    first.close()
    key = tmp_path / "node" / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    second = NodeService(cfg)
    second.close()
    other = NodeService(_config(tmp_path / "other", wallet))
    other.close()
    assert first.node_id == second.node_id
    assert first.node_id != other.node_id
    assert first.node_id.startswith("0x") and len(first.node_id) == 42


def test_trusted_addresses_are_matched_whatever_their_case(tmp_path: Path, wallet: Wallet) -> None:
    # node.json is edited by hand: an address may be lower-case
    cfg = NodeConfig(data=str(tmp_path / "node"), trusted=(wallet.address.lower(),))
    svc = NodeService(cfg)
    data = b"written by a lower-case trusted key"

    async def run() -> Response:
        async with serving(svc) as client:
            return await put(client, svc, wallet, Cid.of(data), data)

    try:
        answer = asyncio.run(run())
    finally:
        svc.close()
    assert answer[0] == 201
    assert cfg.trusted == (wallet.address,)


def test_config_refuses_a_trusted_entry_that_is_not_an_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Ethereum addresses"):
        NodeConfig(data=str(tmp_path), trusted=("alice",))
