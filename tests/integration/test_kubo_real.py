"""KuboStore against a real kubo daemon: ``MEDMESH_KUBO_URL`` (default http://127.0.0.1:5001).

Skipped when no daemon answers ``POST /api/v0/version`` within a second. To run it::

    ipfs daemon --offline &          # any kubo 0.2x/0.3x; --offline keeps it off the network
    .venv/bin/pytest -m kubo tests/integration

The objects it stores are random test bytes; it unpins them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from medmesh.errors import NotFoundError
from medmesh.identity import Wallet
from medmesh.storage.backends.factory import open_store
from medmesh.storage.backends.kubo import KuboStore
from medmesh.storage.cid import Cid
from medmesh.storage.client import Client
from medmesh.storage.importer import import_bytes

pytestmark = pytest.mark.kubo

KUBO_URL = os.environ.get("MEDMESH_KUBO_URL", "http://127.0.0.1:5001").rstrip("/")
LEAF = 262144


def _rpc(command: str, timeout: float = 30.0) -> dict[str, object]:
    req = urllib.request.Request(f"{KUBO_URL}/api/v0/{command}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc = json.loads(resp.read())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def kubo_version() -> str:
    try:
        doc = _rpc("version", timeout=1.0)
    except (OSError, ValueError) as exc:
        pytest.skip(f"no kubo daemon answers at {KUBO_URL} ({type(exc).__name__}: {exc})")
    return str(doc.get("Version"))


@pytest.fixture
def pinned(kubo_version: str) -> Iterator[list[Cid]]:
    """CIDs a test pinned; unpinned afterwards."""
    cids: list[Cid] = []
    yield cids
    for cid in cids:
        with contextlib.suppress(urllib.error.HTTPError):  # already unpinned
            _rpc(f"pin/rm?arg={cid}")


def _is_pinned(cid: Cid) -> bool:
    try:
        doc = _rpc(f"pin/ls?arg={cid}&type=recursive")
    except urllib.error.HTTPError:
        return False
    keys = doc.get("Keys")
    return isinstance(keys, dict) and str(cid) in keys


async def _collect(pieces: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in pieces])


@pytest.mark.parametrize(
    "size", [0, 1, LEAF, LEAF + 1, 3_000_000], ids=["empty", "1B", "256KiB", "256KiB+1", "3MB"]
)
def test_round_trip(size: int, pinned: list[Cid]) -> None:
    data = random.Random(size).randbytes(size)
    expected, _ = import_bytes(data)
    store = KuboStore(KUBO_URL)

    async def scenario() -> bytes:
        obj = await store.put([data])
        pinned.append(obj.cid)
        assert obj.cid == expected  # kubo accepted our DAG and named it as we did
        assert obj.size == size
        return await _collect(store.get(obj.cid))

    assert asyncio.run(scenario()) == data
    assert _is_pinned(expected)


def test_unknown_cid_is_not_found(kubo_version: str) -> None:
    unknown = Cid.of(os.urandom(32))  # offline reads: kubo does not search the network for it
    with pytest.raises(NotFoundError):
        asyncio.run(_collect(KuboStore(KUBO_URL).get(unknown)))


def test_factory_and_version(kubo_version: str) -> None:
    store = open_store(f"kubo+{KUBO_URL}")
    assert isinstance(store, KuboStore)
    assert asyncio.run(store.version()) == kubo_version


def test_client_facade(tmp_path: Path, pinned: list[Cid]) -> None:
    plain = random.Random(7).randbytes(700 * 1024)
    src = tmp_path / "scan.dcm"
    src.write_bytes(plain)
    out = tmp_path / "copy.dcm"
    client = Client(KuboStore(KUBO_URL), Wallet.create())
    put = client.put(src)
    pinned.append(put.cid)
    assert _is_pinned(put.cid)
    got = client.get(put.cid, out)
    assert got.size == len(plain)
    assert out.read_bytes() == plain
    assert not out.with_name(out.name + ".part").exists()
