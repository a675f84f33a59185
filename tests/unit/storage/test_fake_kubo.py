"""The fake kubo behaves like kubo's RPC API (see medmesh.testing.fake_kubo for the sources)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest

from medmesh.storage.block import Block
from medmesh.storage.car import car_bytes, read_car
from medmesh.storage.cid import DAG_PB, RAW, Cid
from medmesh.storage.exporter import walk_dfs
from medmesh.storage.importer import import_bytes
from medmesh.testing import FakeKubo
from medmesh.testing.fake_kubo import SOFT_BLOCK_LIMIT
from tests.unit.storage.test_importer import VECTORS, vector_dag

Reply = tuple[int, dict[str, str], bytes]
LEAF = 262144


def run(
    scenario: Callable[[FakeKubo, str], Awaitable[None]], kubo: FakeKubo | None = None
) -> FakeKubo:
    kubo = kubo or FakeKubo()

    async def main() -> None:
        async with kubo.serve() as url:
            await scenario(kubo, url)

    asyncio.run(main())
    return kubo


async def rpc(
    url: str,
    command: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    method: str = "POST",
    cars: Sequence[bytes] = (),
    headers: dict[str, str] | None = None,
) -> Reply:
    data: aiohttp.FormData | None = None
    if cars:
        data = aiohttp.FormData()
        for i, car in enumerate(cars):
            data.add_field(
                "file",
                io.BytesIO(car),
                filename=f"{i}.car",
                content_type="application/vnd.ipld.car",
            )
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{url}/api/v0/{command}", params=list(params), data=data, headers=headers
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def kubo_error(reply: Reply) -> str:
    """The message of kubo's JSON error reply (asserting its exact shape)."""
    status, headers, body = reply
    assert status == 500
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"Message", "Code", "Type"}
    assert doc["Code"] == 0
    assert doc["Type"] == "error"
    assert isinstance(doc["Message"], str)
    return doc["Message"]


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def dag(size: int, seed: int = 0) -> tuple[Cid, dict[Cid, bytes]]:
    data = hashlib.shake_256(f"{seed}:{size}".encode()).digest(size)
    return import_bytes(data)


def car_of(root: Cid, blocks: dict[Cid, bytes], roots: Sequence[Cid] | None = None) -> bytes:
    return car_bytes([root] if roots is None else roots, [Block(c, d) for c, d in blocks.items()])


async def raw_post(url: str, path: str) -> bytes:
    """A bare HTTP/1.1 POST, to see the chunked framing and trailers aiohttp's client hides."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


# -- HTTP conventions -------------------------------------------------------------------------


COMMANDS = [
    "version",
    "dag/import",
    "dag/export",
    "block/get",
    "block/stat",
    "pin/add",
    "pin/rm",
    "pin/ls",
]


def test_only_post_runs_commands() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        for command in COMMANDS:
            for method in ("GET", "PUT", "DELETE"):
                status, headers, body = await rpc(url, command, [("arg", "x")], method=method)
                assert status == 405
                assert body == b"405 - Method Not Allowed\n"
                assert headers["Allow"] == "OPTIONS, POST"
            status, headers, _ = await rpc(url, command, method="OPTIONS")
            assert (status, headers["Allow"]) == (204, "OPTIONS, POST")
        assert sum(kubo.calls.values()) == 0  # nothing ran
        status, _, body = await rpc(url, "no/such/command")
        assert (status, body) == (404, b"404 page not found\n")
        status, _, body = await rpc(url, "version", headers={"Origin": "https://evil.example"})
        assert (status, body) == (403, b"403 - Forbidden\n")

    run(scenario)


def test_version_and_request_errors() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        status, headers, body = await rpc(url, "version")
        assert status == 200
        doc = json.loads(body)
        assert set(doc) == {"Version", "Commit", "Repo", "System", "Golang"}
        assert doc["Version"] == kubo.version
        assert headers["Server"] == f"kubo/{kubo.version}/"
        for command, arg in [
            ("dag/export", "root"),
            ("block/get", "cid"),
            ("pin/add", "ipfs-path"),
        ]:
            status, headers, body = await rpc(url, command)
            assert status == 400
            assert headers["Content-Type"] == "text/plain; charset=utf-8"
            assert body == f'argument "{arg}" is required\n'.encode()
        status, _, body = await rpc(url, "dag/import")
        assert (status, body) == (400, b"file argument 'path' is required\n")
        status, _, body = await rpc(url, "pin/ls", [("stream", "maybe")])
        assert status == 400
        assert b'"maybe"' in body
        message = kubo_error(await rpc(url, "block/stat", [("arg", "not-a-cid")]))
        assert message.startswith('invalid path "not-a-cid"')
        assert kubo.calls["dag/export"] == 1
        assert [r.status for r in kubo.requests if r.command == "block/get"] == [400]

    run(scenario)


# -- dag/import -------------------------------------------------------------------------------


def test_import_pins_roots_and_reports_them() -> None:
    root, blocks = dag(3 * LEAF)
    other_root, other_blocks = dag(100, seed=1)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        status, headers, body = await rpc(
            url,
            "dag/import",
            [("stats", "true")],
            cars=[car_of(root, blocks), car_of(other_root, other_blocks)],
        )
        assert status == 200
        assert headers["X-Chunked-Output"] == "1"
        assert ndjson(body) == [
            {"Root": {"Cid": {"/": str(root)}, "PinErrorMsg": ""}},
            {"Root": {"Cid": {"/": str(other_root)}, "PinErrorMsg": ""}},
            {
                "Stats": {
                    "BlockCount": len(blocks) + len(other_blocks),
                    "BlockBytesCount": sum(map(len, blocks.values()))
                    + len(other_blocks[other_root]),
                }
            },
        ]
        assert kubo.recursive_pins == [root, other_root]
        assert kubo.pin_type(next(iter(blocks))) == "indirect"

    run(scenario)


def test_import_without_pinning_reports_nothing() -> None:
    root, blocks = dag(1000)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        status, _, body = await rpc(
            url, "dag/import", [("pin-roots", "false")], cars=[car_of(root, blocks)]
        )
        assert (status, body) == (200, b"")
        assert kubo.has_block(root)
        assert kubo.pin_type(root) is None

    run(scenario)


def test_import_refuses_a_tampered_block_and_stores_nothing() -> None:
    root, blocks = dag(2 * LEAF + 1)
    first, second = list(blocks)[:2]
    car = bytearray(car_of(root, blocks))
    start = car.index(blocks[second])
    car[start + 100] ^= 0x01
    got = hashlib.sha256(car[start : start + len(blocks[second])]).digest()

    async def scenario(kubo: FakeKubo, url: str) -> None:
        message = kubo_error(await rpc(url, "dag/import", cars=[bytes(car)]))
        assert message == (
            f'import failed after block "{first}": mismatch in content integrity, '
            f"expected: {second}, got: {Cid(1, RAW, 0x12, got)}"
        )
        assert kubo.block_count() == 0
        assert kubo.recursive_pins == []

    run(scenario)


def test_import_of_an_incomplete_dag_does_not_pin_it() -> None:
    root, blocks = dag(3 * LEAF)
    order = [b.cid for b in walk_dfs(root, blocks.__getitem__)]
    missing = order[2]
    partial = {c: d for c, d in blocks.items() if c != missing}

    async def scenario(kubo: FakeKubo, url: str) -> None:
        status, _, body = await rpc(url, "dag/import", cars=[car_of(root, partial)])
        assert status == 200
        assert ndjson(body) == [
            {
                "Root": {
                    "Cid": {"/": str(root)},
                    "PinErrorMsg": f"block was not found locally (offline): ipld: could not find {missing}",
                }
            }
        ]
        assert kubo.pin_type(root) is None
        assert kubo.has_block(root)
        # a CAR that names a root it does not carry
        absent = Cid.of(b"absent")
        _, _, body = await rpc(url, "dag/import", cars=[car_bytes([absent], [])])
        assert ndjson(body)[0]["Root"]["PinErrorMsg"] == f"ipld: could not find {absent}"
        # the missing block arrives: the same import now pins
        _, _, body = await rpc(
            url, "dag/import", cars=[car_of(missing, {missing: blocks[missing]}, [root])]
        )
        assert ndjson(body)[0]["Root"]["PinErrorMsg"] == ""
        assert kubo.pin_type(root) == "recursive"

    run(scenario)


def test_import_block_size_limit() -> None:
    big = bytes(SOFT_BLOCK_LIMIT + 1)
    cid = Cid.of(big)
    car = car_bytes([cid], [Block(cid, big)])

    async def scenario(kubo: FakeKubo, url: str) -> None:
        message = kubo_error(await rpc(url, "dag/import", cars=[car]))
        assert message.startswith(f'import failed at block "{cid}": produced block is over 1MiB')
        assert message.endswith("or pass --allow-big-block to override")
        status, _, _ = await rpc(url, "dag/import", [("allow-big-block", "true")], cars=[car])
        assert status == 200
        assert kubo.pin_type(cid) == "recursive"

    run(scenario)


def test_import_refuses_undecodable_dag_pb() -> None:
    junk = b"\xff\xff\xff"
    cid = Cid.of(junk, codec=DAG_PB)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        message = kubo_error(
            await rpc(url, "dag/import", cars=[car_bytes([cid], [Block(cid, junk)])])
        )
        assert message.startswith(f'import failed at block "{cid}": protobuf')
        assert kubo.block_count() == 0

    run(scenario)


# -- dag/export and blocks --------------------------------------------------------------------


EXPORT_VECTORS = [
    pytest.param(v, id=f"{v['file']}-{v['profile']}")
    for v in VECTORS
    if v["file"] in {"empty", "hello_world", "prng_256k_plus_1", "prng_1000000", "zeros_1m"}
]


@pytest.mark.parametrize("vector", EXPORT_VECTORS)
def test_export_is_the_reference_dfs_car(vector: dict[str, Any]) -> None:
    """Blocks imported in import order come back in DFS order, each once, byte-identical
    to the reference CAR (``@ipld/car``, the order ``ipfs dag export`` writes)."""
    root, blocks = vector_dag(vector["file"], vector["profile"])

    async def scenario(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", cars=[car_of(root, blocks)])
        status, headers, body = await rpc(url, "dag/export", [("arg", str(root))])
        assert status == 200
        assert headers["Content-Type"] == "application/vnd.ipld.car"
        assert headers["X-Stream-Output"] == "1"
        assert len(body) == vector["car_v1_dfs_size"]
        assert hashlib.sha256(body).hexdigest() == vector["car_v1_dfs_sha256"]
        roots, read = read_car(io.BytesIO(body))
        assert roots == [root]
        assert [b.cid for b in read] == [b.cid for b in walk_dfs(root, blocks.__getitem__)]

    run(scenario)


def test_export_of_a_missing_root_fails_before_streaming() -> None:
    unknown = Cid.of(b"unknown")

    async def scenario(kubo: FakeKubo, url: str) -> None:
        for arg in (str(unknown), f"/ipfs/{unknown}"):
            message = kubo_error(await rpc(url, "dag/export", [("arg", arg)]))
            assert (
                message == f"block was not found locally (offline): ipld: could not find {unknown}"
            )

    run(scenario)


def test_export_stops_at_a_missing_block_with_a_trailer() -> None:
    root, blocks = dag(3 * LEAF)
    order = [b.cid for b in walk_dfs(root, blocks.__getitem__)]

    async def scenario(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", cars=[car_of(root, blocks)])
        kubo.remove_block(order[2])
        raw = await raw_post(url, f"/api/v0/dag/export?arg={root}")
        head, _, chunked = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Trailer: X-Stream-Error" in head
        assert b"Transfer-Encoding: chunked" in head
        # de-chunk by hand: data chunks, then the last chunk and the trailer
        body = b""
        while True:
            size_line, _, chunked = chunked.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body, chunked = body + chunked[:size], chunked[size + 2 :]
        assert (
            chunked
            == (
                f'X-Stream-Error: walk failed: could not load link "{order[2]}": '
                f"block was not found locally (offline): ipld: could not find {order[2]}\r\n\r\n"
            ).encode()
        )
        roots, read = read_car(io.BytesIO(body))
        assert roots == [root]
        assert [b.cid for b in read] == order[:2]  # everything before the gap, nothing after
        # aiohttp's client sees a clean 200 with the partial CAR
        status, _, seen = await rpc(url, "dag/export", [("arg", str(root))])
        assert (status, seen) == (200, body)

    run(scenario)


def test_corrupted_blocks_are_served_as_stored() -> None:
    root, blocks = dag(2 * LEAF)
    leaf = [b.cid for b in walk_dfs(root, blocks.__getitem__)][1]

    async def scenario(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", cars=[car_of(root, blocks)])
        kubo.corrupt_block(leaf)
        bad = kubo.block(leaf)
        assert bad != blocks[leaf]
        status, headers, body = await rpc(url, "block/get", [("arg", str(leaf))])
        assert (status, body) == (200, bad)
        assert headers["X-Stream-Output"] == "1"
        _, _, body = await rpc(url, "dag/export", [("arg", str(root))])
        assert bad in body  # HashOnRead is off by default, as in kubo
        status, _, body = await rpc(url, "block/stat", [("arg", str(leaf))])
        assert json.loads(body) == {"Key": str(leaf), "Size": len(bad)}

    run(scenario)

    async def strict(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", cars=[car_of(root, blocks)])
        kubo.corrupt_block(leaf)
        message = kubo_error(await rpc(url, "block/get", [("arg", str(leaf))]))
        assert message == "block in storage has different hash than requested"

    run(strict, FakeKubo(hash_on_read=True))


@pytest.mark.parametrize("write_through", [True, False])
def test_reimport_rewrites_blocks_only_with_write_through(write_through: bool) -> None:
    root, blocks = dag(2 * LEAF)
    leaf = next(c for c in blocks if c != root)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", cars=[car_of(root, blocks)])
        kubo.corrupt_block(leaf)
        await rpc(url, "dag/import", cars=[car_of(root, blocks)])
        assert (kubo.block(leaf) == blocks[leaf]) is write_through

    run(scenario, FakeKubo(write_through=write_through))


def test_block_get_of_a_missing_block() -> None:
    unknown = Cid.of(b"unknown")

    async def scenario(kubo: FakeKubo, url: str) -> None:
        for command in ("block/get", "block/stat"):
            message = kubo_error(await rpc(url, command, [("arg", str(unknown))]))
            assert (
                message == f"block was not found locally (offline): ipld: could not find {unknown}"
            )

    run(scenario)


# -- pins -------------------------------------------------------------------------------------


def test_pin_add_ls_rm() -> None:
    root, blocks = dag(2 * LEAF + 3)
    leaf = next(c for c in blocks if c != root)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", [("pin-roots", "false")], cars=[car_of(root, blocks)])
        message = kubo_error(await rpc(url, "pin/ls", [("arg", str(root))]))
        assert message == f"path '/ipfs/{root}' is not pinned"
        status, _, body = await rpc(url, "pin/add", [("arg", str(root))])
        assert (status, json.loads(body)) == (200, {"Pins": [str(root)]})
        _, _, body = await rpc(url, "pin/ls", [("type", "recursive")])
        assert json.loads(body) == {"Keys": {str(root): {"Type": "recursive", "Name": ""}}}
        _, _, body = await rpc(url, "pin/ls", [("arg", str(leaf))])
        assert json.loads(body) == {
            "Keys": {str(leaf): {"Type": f"indirect through {root}", "Name": ""}}
        }
        _, _, body = await rpc(url, "pin/ls", [("stream", "true")])
        lines = ndjson(body)
        assert lines[0] == {"Cid": str(root), "Type": "recursive"}
        assert {line["Cid"] for line in lines[1:]} == {str(c) for c in blocks if c != root}
        message = kubo_error(
            await rpc(url, "pin/add", [("arg", str(root)), ("recursive", "false")])
        )
        assert message == f"pin: {root} already pinned recursively"
        message = kubo_error(await rpc(url, "pin/rm", [("arg", str(leaf))]))
        assert message == "not pinned or pinned indirectly"
        message = kubo_error(await rpc(url, "pin/rm", [("arg", str(root)), ("recursive", "false")]))
        assert message == f"{root} is pinned recursively"
        status, _, body = await rpc(url, "pin/rm", [("arg", f"/ipfs/{root}")])
        assert (status, json.loads(body)) == (200, {"Pins": [str(root)]})
        _, _, body = await rpc(url, "pin/ls")
        assert json.loads(body) == {"Keys": {}}
        assert kubo.gc() == len(blocks)
        assert kubo.block_count() == 0

    run(scenario)


def test_pin_add_needs_every_block() -> None:
    root, blocks = dag(2 * LEAF)
    leaf = [b.cid for b in walk_dfs(root, blocks.__getitem__)][-1]

    async def scenario(kubo: FakeKubo, url: str) -> None:
        await rpc(url, "dag/import", [("pin-roots", "false")], cars=[car_of(root, blocks)])
        kubo.remove_block(leaf)
        message = kubo_error(await rpc(url, "pin/add", [("arg", str(root))]))
        assert message == f"pin: block was not found locally (offline): ipld: could not find {leaf}"
        status, _, body = await rpc(url, "pin/add", [("arg", str(root)), ("recursive", "false")])
        assert (status, json.loads(body)) == (200, {"Pins": [str(root)]})
        assert kubo.pin_type(root) == "direct"

    run(scenario)


def test_faults_and_call_log() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        kubo.fail_next("version", "boom", times=2)
        assert kubo_error(await rpc(url, "version")) == "boom"
        assert kubo_error(await rpc(url, "version")) == "boom"
        status, _, _ = await rpc(url, "version")
        assert status == 200
        assert kubo.calls == {"version": 3}
        assert [(r.method, r.command, r.status) for r in kubo.requests] == [
            ("POST", "version", 500)
        ] * 2 + [("POST", "version", 200)]
        with pytest.raises(ValueError, match="unknown command"):
            kubo.fail_next("add", "x")

    run(scenario)


def test_serve_in_thread_binds_loopback() -> None:
    kubo = FakeKubo()
    with kubo.serve_in_thread() as url:
        assert url.startswith("http://127.0.0.1:")
        assert asyncio.run(rpc(url, "version"))[0] == 200
    assert kubo.url is None
