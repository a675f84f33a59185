"""Erasure on a devnet of five real node processes (``medmesh node run``) with their DHT.

The erasing client knows only some of the nodes and reaches the others through the DHT's
provider records; the nodes then withdraw those records. Every node process a test starts
is stopped by its recorded PID in a ``finally``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medmesh.devnet import Devnet
from medmesh.errors import NotFoundError
from medmesh.identity import Wallet
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.blockstore import Blockstore
from medmesh.storage.cid import Cid
from medmesh.storage.client import Client
from medmesh.storage.transport import NodeClient, open_session
from medmesh.storage.uploader import StoreParams
from tests.integration.test_daemon import _kill_recorded

pytestmark = pytest.mark.slow

PARAMS = StoreParams(chunk_size=16384, max_links=8, batch_bytes=256 * 1024)
SIZE = 30 * 16384 + 77
DHT_WAIT = 30.0


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture
def devnet(tmp_path: Path, wallet: Wallet) -> Iterator[tuple[Devnet, list[str]]]:
    net = Devnet(tmp_path / "devnet")
    try:
        up = net.up(5, trusted=[wallet.address], base_port=0)
        yield net, [s.url for s in up]
    finally:
        _kill_recorded(net)


def client_for(urls: list[str], wallet: Wallet) -> Client:
    return Client(NetworkStore(urls, signer=wallet, params=PARAMS), wallet)


def block_files(net: Devnet) -> list[set[str]]:
    """The blocks each node's disk holds (packed or in their own files), as CIDs."""
    held = []
    for s in net.status():
        store = Blockstore(Path(s.data))  # beside the running node: the index is shared
        try:
            held.append(set(map(str, store.keys())))
        finally:
            store.close()
    return held


def providers(url: str, cid: Cid) -> set[str]:
    async def run() -> list[str]:
        async with open_session() as session:
            return await NodeClient(url, session).providers(cid)

    return set(asyncio.run(run()))


def wait_for_providers(url: str, cid: Cid, expected: set[str]) -> set[str]:
    """Poll the node's Delegated Routing endpoint until it names ``expected``."""
    deadline = time.monotonic() + DHT_WAIT
    found = providers(url, cid)
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.25)
        found = providers(url, cid)
    return found


def test_erase_reaches_dht_providers_and_withdraws_their_records(
    devnet: tuple[Devnet, list[str]], wallet: Wallet, tmp_path: Path
) -> None:
    net, urls = devnet
    # Prepare: two records on all five nodes, announced in the DHT
    a = client_for(urls, wallet).put(b"A" * 10 + bytes(SIZE))
    b_data = bytes(range(256)) * (SIZE // 256)
    b = client_for(urls, wallet).put(b_data)
    after_a_and_b = block_files(net)
    assert all(after_a_and_b)
    assert wait_for_providers(urls[4], a.cid, set(urls)) == set(urls)

    # Execute: a client that knows only the first two nodes
    report = client_for(urls[:2], wallet).erase(a.cid)

    # Assert: the other three were found through the DHT and erased too
    assert report.complete
    assert set(report.holders) == set(urls)
    assert all(n > 0 for n in report.holders.values())
    with pytest.raises(NotFoundError):
        client_for(urls, wallet).get(a.cid, tmp_path / "a")
    assert client_for(urls, wallet).get_bytes(b.cid) == b_data
    # what is left on each node is exactly B's part
    b_only = block_files(net)
    assert sum(len(f) for f in after_a_and_b) - sum(len(f) for f in b_only) == report.deleted
    # ... and the nodes withdrew their provider records of A (B's stay)
    for url in urls:
        assert wait_for_providers(url, a.cid, set()) == set(), url
    assert wait_for_providers(urls[0], b.cid, set(urls)) == set(urls)


def test_a_stopped_node_is_unreachable_then_erased_after_restart(
    devnet: tuple[Devnet, list[str]], wallet: Wallet
) -> None:
    net, urls = devnet
    obj = client_for(urls, wallet).put(bytes(SIZE) + b"record")
    assert net.stop_node(3) is True

    first = client_for(urls, wallet).erase(obj.cid)
    assert first.unreachable == [urls[3]]
    assert not first.complete
    assert set(first.holders) == set(urls) - {urls[3]}
    held = block_files(net)
    assert [bool(h) for h in held] == [False, False, False, True, False]

    net.up(5, trusted=[wallet.address], base_port=0)  # node 3 again, same ports and disk
    second = client_for(urls, wallet).erase(obj.cid)
    assert second.complete
    assert second.holders == {urls[3]: len(held[3])}
    assert block_files(net) == [set()] * 5
