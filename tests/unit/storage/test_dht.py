"""Tests for medmesh.storage.node.dht: merged provider records, and a real UDP network."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from medmesh.storage.cid import DAG_PB, Cid
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.dht import (
    MAX_PROVIDERS,
    STORE_MANY_KEYS,
    ProviderDht,
    ProviderStorage,
    merge_records,
    provider_key,
)
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import NodeService

KEY = b"k" * 20


def _rec(node: str, url: str, expires: float) -> str:
    return json.dumps({node: {"url": url, "expires": expires}})


def _stored(storage: ProviderStorage, key: bytes = KEY) -> dict[str, Any] | None:
    value = storage.get(key)
    return None if value is None else dict(json.loads(value))


# -- merge semantics ---------------------------------------------------------------------


def test_two_providers_records_merge() -> None:
    later = time.time() + 3600
    storage = ProviderStorage()
    storage[KEY] = _rec("0xA", "http://a", later)
    storage[KEY] = _rec("0xB", "http://b", later)
    assert _stored(storage) == {
        "0xA": {"url": "http://a", "expires": later},
        "0xB": {"url": "http://b", "expires": later},
    }


@pytest.mark.parametrize("newest_first", [True, False])
def test_newest_record_of_a_provider_wins(newest_first: bool) -> None:
    now = time.time()
    old, new = _rec("0xA", "http://old", now + 100), _rec("0xA", "http://new", now + 200)
    storage = ProviderStorage()
    for value in (new, old) if newest_first else (old, new):
        storage[KEY] = value
    assert _stored(storage) == {"0xA": {"url": "http://new", "expires": now + 200}}


def test_expired_records_are_dropped() -> None:
    now = time.time()
    storage = ProviderStorage()
    storage[KEY] = _rec("0xA", "http://a", now - 1)
    assert _stored(storage) is None
    assert KEY not in storage.data
    storage[KEY] = json.dumps(
        {
            "0xA": {"url": "http://a", "expires": now - 1},
            "0xB": {"url": "http://b", "expires": now + 60},
        }
    )
    assert set(_stored(storage) or {}) == {"0xB"}


def test_records_that_expire_while_stored_vanish_on_read() -> None:
    storage = ProviderStorage()
    # as if stored a while ago: the record expired since
    storage.data[KEY] = (time.monotonic(), _rec("0xA", "http://a", time.time() - 5))
    assert storage.get(KEY, "absent") == "absent"
    assert KEY not in storage.data


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        b"\xff\xfe",
        "[1, 2, 3]",
        '"a string"',
        "42",
        '{"0xC": "http://c"}',
        '{"0xC": {"url": 5, "expires": 9999999999}}',
        '{"0xC": {"url": "http://c", "expires": "tomorrow"}}',
        '{"0xC": {"url": "http://c"}}',
        '{"0xC": {"url": "http://c", "expires": true}}',
        12345,
        None,
    ],
)
def test_garbage_is_ignored_and_keeps_what_was_stored(garbage: Any) -> None:
    later = time.time() + 3600
    empty = ProviderStorage()
    empty[KEY] = garbage
    assert _stored(empty) is None
    storage = ProviderStorage()
    storage[KEY] = _rec("0xA", "http://a", later)
    storage[KEY] = garbage
    assert _stored(storage) == {"0xA": {"url": "http://a", "expires": later}}


def test_provider_list_is_capped_keeping_the_newest() -> None:
    base = time.time() + 1000
    many = {f"0x{i:02d}": {"url": f"http://n{i}", "expires": base + i} for i in range(60)}
    merged = merge_records(json.dumps(many))
    assert len(merged) == MAX_PROVIDERS
    assert set(merged) == {f"0x{i:02d}" for i in range(60 - MAX_PROVIDERS, 60)}
    # and the stored record still fits in one UDP datagram of rpcudp (8 KiB)
    storage = ProviderStorage()
    storage[KEY] = json.dumps(many)
    assert len(storage[KEY].encode()) < 8192


def test_merge_records_accepts_dicts_text_and_bytes() -> None:
    now = 1_000.0
    a = {"0xA": {"url": "http://a", "expires": 2_000}}
    b = _rec("0xB", "http://b", 3_000).encode()
    assert merge_records(a, b, None, now=now) == {
        "0xA": {"url": "http://a", "expires": 2_000},
        "0xB": {"url": "http://b", "expires": 3_000},
    }
    assert merge_records(a, now=2_001) == {}


def test_storage_iteration_and_age() -> None:
    storage = ProviderStorage()
    storage[KEY] = _rec("0xA", "http://a", time.time() + 60)
    assert [k for k, _ in storage] == [KEY]
    assert storage.iter_older_than(3600) == []
    assert [k for k, _ in storage.iter_older_than(0)] == [KEY]


def test_provider_key_ignores_codec_and_version() -> None:
    v1 = Cid.of(b"\x0a\x00", DAG_PB)
    v0 = Cid(0, DAG_PB, v1.hash_code, v1.digest)
    raw = Cid.of(b"\x0a\x00")
    assert provider_key(v0) == provider_key(v1) == provider_key(raw)
    assert provider_key(raw) != provider_key(Cid.of(b"other"))


# -- a real network on 127.0.0.1 --------------------------------------------------------


@asynccontextmanager
async def network(count: int, rpc_timeout: float = 2.0) -> AsyncIterator[list[ProviderDht]]:
    """``count`` DHT nodes on UDP port 0; all but the first join through the first."""
    nodes: list[ProviderDht] = []
    try:
        first = ProviderDht("0xA0", "http://127.0.0.1:1", rpc_timeout=rpc_timeout)
        nodes.append(first)
        port = await first.start()
        for i in range(1, count):
            node = ProviderDht(
                f"0xA{i}",
                f"http://127.0.0.1:{i + 1}",
                bootstrap=[("127.0.0.1", port)],
                rpc_timeout=rpc_timeout,
            )
            nodes.append(node)
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def test_dht_nodes_listen_on_loopback_ports() -> None:
    async def run() -> list[tuple[str, int]]:
        async with network(3) as nodes:
            return [n.server.transport.get_extra_info("sockname")[:2] for n in nodes]

    addrs = asyncio.run(run())
    assert all(host == "127.0.0.1" and port > 0 for host, port in addrs)
    assert len({port for _, port in addrs}) == 3


def test_a_provider_is_found_from_another_node() -> None:
    cid = Cid.of(b"object held by A")

    async def run() -> tuple[bool, list[dict[str, Any]], list[dict[str, Any]]]:
        async with network(3) as (a, _b, c):
            stored = await a.provide(cid)
            c.server.storage.data.clear()  # make C ask the network, not its own copy
            found = await c.find_providers(cid)
            nothing = await c.find_providers(Cid.of(b"nobody has this"))
            return stored, found, nothing

    stored, found, nothing = asyncio.run(run())
    assert stored is True
    assert found == [
        {
            "Schema": "peer",
            "ID": "0xA0",
            "Addrs": ["http://127.0.0.1:1"],
            "Protocols": ["transport-ipfs-gateway-http"],
        }
    ]
    assert nothing == []


def test_two_providers_are_both_found() -> None:
    cid = Cid.of(b"object held by A and B")

    async def run() -> tuple[list[str], list[str]]:
        async with network(3) as (a, b, c):
            await a.provide(cid)
            await b.provide(cid)
            with_local = [p["ID"] for p in await c.find_providers(cid)]
            c.server.storage.data.clear()
            remote = [p["ID"] for p in await c.find_providers(cid)]
            return with_local, remote

    with_local, remote = asyncio.run(run())
    assert with_local == remote == ["0xA0", "0xA1"]


def test_a_lone_node_finds_its_own_record() -> None:
    cid = Cid.of(b"alone")

    async def run() -> tuple[bool, list[str]]:
        async with network(1) as (a,):
            stored = await a.provide(cid)
            return stored, [p["Addrs"][0] for p in await a.find_providers(cid)]

    stored, urls = asyncio.run(run())
    assert stored is False  # no other DHT node took it...
    assert urls == ["http://127.0.0.1:1"]  # ...but the node still answers for itself


def test_routing_endpoint_answers_from_the_dht(tmp_path: Path) -> None:
    cid = Cid.of(b"routed")
    service = NodeService(NodeConfig(data=str(tmp_path / "node")))

    async def run() -> tuple[int, Any, int]:
        async with network(3) as (a, _b, c):
            await a.provide(cid)
            app = make_app(service, providers=c.find_providers, announce=c.provide)
            async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
                async with client.get(f"/routing/v1/providers/{cid}") as resp:
                    found = (resp.status, await resp.json())
                async with client.get(f"/routing/v1/providers/{Cid.of(b'x')}") as resp:
                    missing = resp.status
            return found[0], found[1], missing

    try:
        status, doc, missing = asyncio.run(run())
    finally:
        service.close()
    assert status == 200
    assert [p["ID"] for p in doc["Providers"]] == ["0xA0"]
    assert doc["Providers"][0]["Addrs"] == ["http://127.0.0.1:1"]
    assert missing == 404


# -- announcing many objects at once ------------------------------------------------


def _count_calls(dht: ProviderDht, rpc: str) -> list[int]:
    """Count the ``rpc_<rpc>`` requests ``dht`` serves (wraps the bound method)."""
    protocol = dht.server.protocol
    inner = getattr(protocol, f"rpc_{rpc}")
    calls = [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return inner(*args)

    setattr(protocol, f"rpc_{rpc}", counted)
    return calls


def _ids_everywhere(found: list[list[dict[str, Any]]]) -> set[tuple[str, ...]]:
    return {tuple(p["ID"] for p in providers) for providers in found}


def test_provide_many_sends_batches_while_the_routing_table_is_complete() -> None:
    cids = [Cid.of(b"batch object %d" % i) for i in range(STORE_MANY_KEYS + 50)]

    async def run() -> tuple[int, list[int], list[int], set[tuple[str, ...]]]:
        async with network(3) as (a, b, c):
            many, single = _count_calls(b, "store_many"), _count_calls(b, "store")
            reached = await a.provide_many(cids)
            c.server.storage.data.clear()  # make C ask the network
            found = [await c.find_providers(cid) for cid in cids[:: STORE_MANY_KEYS // 4]]
            return reached, many, single, _ids_everywhere(found)

    reached, many, single, found = asyncio.run(run())
    assert reached == len(cids)
    assert many == [2]  # 250 keys to B: two RPCs of at most 200 keys, no per-key store
    assert single == [0]
    assert found == {("0xA0",)}


def test_provide_many_falls_back_to_crawls_for_a_peer_without_store_many() -> None:
    cids = [Cid.of(b"old peer %d" % i) for i in range(5)]

    async def run() -> tuple[int, list[int], set[tuple[str, ...]]]:
        async with network(3, rpc_timeout=0.3) as (a, b, _c):
            b.server.protocol.rpc_store_many = None  # an older node: it ignores the RPC
            single = _count_calls(b, "store")
            reached = await a.provide_many(cids)
            found = []
            for cid in cids:
                local = b.server.storage.get(_digest_of(cid))
                found.append([{"ID": k} for k in json.loads(local)] if local else [])
            return reached, single, _ids_everywhere(found)

    reached, single, found = asyncio.run(run())
    assert reached == len(cids)
    # each key reached B the classic way (kademlia also re-sends stored keys to a peer it
    # welcomes back into its table, so some may arrive twice)
    assert single[0] >= len(cids)
    assert found == {("0xA0",)}


def test_provide_many_crawls_when_a_bucket_is_full() -> None:
    cids = [Cid.of(b"big network %d" % i) for i in range(4)]

    async def run() -> tuple[int, list[int], list[int], set[tuple[str, ...]]]:
        async with network(4) as (a, b, c, _d):
            for bucket in a.server.protocol.router.buckets:
                bucket.ksize = 2  # as if the network were bigger than the table holds
            many, single = _count_calls(b, "store_many"), _count_calls(b, "store")
            reached = await a.provide_many(cids)
            c.server.storage.data.clear()
            found = [await c.find_providers(cid) for cid in cids]
            return reached, many, single, _ids_everywhere(found)

    reached, many, single, found = asyncio.run(run())
    assert reached == len(cids)
    assert many == [0]
    assert single[0] >= 1  # B is among the closest of some keys, reached by crawl and store
    assert found == {("0xA0",)}


@pytest.mark.parametrize(
    ("keys", "value"),
    [
        ("not a list", "{}"),
        ([b"k" * 20] * (STORE_MANY_KEYS + 1), "{}"),
        ([b"k" * 20], 42),
        ([b"k" * 20], "x" * 5000),
    ],
)
def test_store_many_refuses_malformed_requests(keys: Any, value: Any) -> None:
    async def run() -> tuple[bool, int]:
        async with network(1) as (a,):
            ok = a.server.protocol.rpc_store_many(("127.0.0.1", 9), b"n" * 20, keys, value)
            return ok, len(a.server.storage.data)

    assert asyncio.run(run()) == (False, 0)


def test_store_many_skips_bad_keys_and_merges_with_what_is_stored() -> None:
    later = time.time() + 3600

    async def run() -> tuple[bool, ProviderStorage]:
        async with network(1) as (a,):
            storage = a.server.storage
            storage[KEY] = _rec("0xB", "http://b", later)
            keys = [KEY, b"short", "j" * 20, b"j" * 20]
            ok = a.server.protocol.rpc_store_many(
                ("127.0.0.1", 9), b"n" * 20, keys, _rec("0xA", "http://a", later)
            )
            return ok, storage

    ok, storage = asyncio.run(run())
    assert ok is True
    assert set(_stored(storage) or {}) == {"0xA", "0xB"}
    assert set(_stored(storage, b"j" * 20) or {}) == {"0xA"}
    assert len(storage.data) == 2


def _digest_of(cid: Cid) -> bytes:
    from kademlia.utils import digest

    return bytes(digest(provider_key(cid)))


# -- withdrawing a record (after an erasure) ------------------------------------------


def _tombstone(node: str, url: str, expires: float) -> str:
    return json.dumps({node: {"url": url, "expires": expires, "withdrawn": True}})


@pytest.mark.parametrize("tombstone_first", [True, False])
def test_a_newer_withdrawal_replaces_the_record_whatever_the_order(tombstone_first: bool) -> None:
    now = time.time()
    live, gone = _rec("0xA", "http://a", now + 100), _tombstone("0xA", "http://a", now + 200)
    storage = ProviderStorage()
    storage[KEY] = _rec("0xB", "http://b", now + 50)
    for value in (gone, live) if tombstone_first else (live, gone):
        storage[KEY] = value
    assert _stored(storage) == {
        "0xA": {"url": "http://a", "expires": now + 200, "withdrawn": True},
        "0xB": {"url": "http://b", "expires": now + 50},
    }


def test_a_newer_announcement_replaces_a_withdrawal() -> None:
    now = time.time()
    storage = ProviderStorage()
    storage[KEY] = _tombstone("0xA", "http://a", now + 100)
    storage[KEY] = _rec("0xA", "http://a", now + 101)
    assert _stored(storage) == {"0xA": {"url": "http://a", "expires": now + 101}}


def test_on_a_tie_the_withdrawal_wins() -> None:
    at = time.time() + 100
    live, gone = _rec("0xA", "u", at), _tombstone("0xA", "u", at)
    expected = {"0xA": {"url": "u", "expires": at, "withdrawn": True}}
    assert merge_records(live, gone) == merge_records(gone, live) == expected


def test_withdrawn_only_with_a_literal_true() -> None:
    later = time.time() + 100
    value = json.dumps({"0xA": {"url": "u", "expires": later, "withdrawn": "yes"}})
    assert merge_records(value) == {"0xA": {"url": "u", "expires": later}}


def test_a_withdrawn_provider_is_no_longer_found_anywhere() -> None:
    cid = Cid.of(b"object erased at A")

    async def run() -> tuple[list[str], list[str], list[str], bool, list[str]]:
        async with network(3) as (a, b, c):
            await a.provide(cid)
            await b.provide(cid)
            before = [p["ID"] for p in await c.find_providers(cid)]
            stored = await a.withdraw(cid)
            at_a = [p["ID"] for p in await a.find_providers(cid)]  # its own copy, at once
            c.server.storage.data.clear()  # ask the network
            remote = [p["ID"] for p in await c.find_providers(cid)]
            await a.provide(cid)  # the object is stored at A again later
            back = [p["ID"] for p in await c.find_providers(cid)]
            return before, at_a, remote, stored, back

    before, at_a, remote, stored, back = asyncio.run(run())
    assert before == ["0xA0", "0xA1"]
    assert stored is True
    assert at_a == remote == ["0xA1"]
    assert back == ["0xA0", "0xA1"]
