"""The command line end to end: a devnet of node processes, put, get, faults, repair.

Everything runs as a user would run it: ``medmesh`` subprocesses against nodes started by
``medmesh devnet up`` on 127.0.0.1, all under one ``--home``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medmesh.devnet import Devnet
from medmesh.identity import Wallet, save_wallet
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.cid import Cid
from tests.harness import random_bytes

PASS = "correct horse battery staple"


def medmesh(
    home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDMESH_PASSPHRASE": PASS, "MEDMESH_HOME": str(home), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "medmesh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"medmesh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    # a wallet with a light scrypt so that each command unlocks it quickly
    save_wallet(Wallet.create(), home / "wallet.json", PASS, scrypt_n=2**10)
    try:
        medmesh(home, "devnet", "up", "--nodes", "5", "--base-port", "0")
        yield home
    finally:
        Devnet(home / "devnet").down()


def test_devnet_status_lists_nodes(home: Path) -> None:
    doc = json.loads(medmesh(home, "devnet", "status", "--json").stdout)
    nodes = doc["nodes"]
    assert len(nodes) == 5
    for node in nodes:
        assert node["running"] and node["pid"] > 0
        assert node["url"].startswith("http://127.0.0.1:")
        assert Path(node["data"]).is_dir()
        assert (Path(node["data"]) / "node.url").read_text().strip() == node["url"]


def test_put_get_round_trip_with_faults(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "scan.bin"
    src.write_bytes(random_bytes(5 * 1024 * 1024 + 17, seed=11))
    put = json.loads(medmesh(home, "put", str(src), "--json").stdout)
    cid = put["cid"]
    assert cid.startswith("bafy") and put["size"] == src.stat().st_size

    out = tmp_path / "out.bin"
    medmesh(home, "get", cid, "-o", str(out))
    assert out.read_bytes() == src.read_bytes()

    verify = json.loads(medmesh(home, "storage", "verify", cid, "--json").stdout)
    assert verify["ok"] and verify["checked"] == verify["passed"] > 0

    # lose n - k = 2 nodes: still readable
    net = Devnet(home / "devnet")
    net.stop_node(0)
    net.stop_node(1)
    out2 = tmp_path / "out2.bin"
    medmesh(home, "get", cid, "-o", str(out2))
    assert out2.read_bytes() == src.read_bytes()

    # a third: a clear error naming the stripes, and no output file
    net.stop_node(2)
    out3 = tmp_path / "out3.bin"
    failed = medmesh(home, "get", cid, "-o", str(out3), check=False)
    assert failed.returncode == 1
    assert "stripes" in failed.stderr and "fewer than 3" in failed.stderr
    assert not out3.exists() and not (tmp_path / "out3.bin.part").exists()

    # back up, then the network heals
    medmesh(home, "devnet", "up", "--nodes", "5", "--base-port", "0")
    medmesh(home, "get", cid, "-o", str(out3))
    assert out3.read_bytes() == src.read_bytes()


def test_repair_after_losing_a_node(home: Path, tmp_path: Path) -> None:
    medmesh(home, "devnet", "up", "--nodes", "7", "--base-port", "0")
    src = tmp_path / "doc.bin"
    src.write_bytes(random_bytes(3 * 1024 * 1024, seed=12))
    cid = json.loads(medmesh(home, "put", str(src), "--json").stdout)["cid"]
    net = Devnet(home / "devnet")
    net.stop_node(3)
    net.stop_node(4)
    report = json.loads(medmesh(home, "storage", "repair", cid, "--json").stdout)
    assert report["damaged"] > 0 and report["recreated"] > 0 and not report["unrecoverable"]
    net.stop_node(5)
    net.stop_node(6)
    out = tmp_path / "out.bin"
    medmesh(home, "get", cid, "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    medmesh(home, "devnet", "up", "--nodes", "7", "--base-port", "0")


def test_holders_found_through_the_dht(home: Path) -> None:
    """A client that knows one node finds the others through the DHT's provider records."""
    net = Devnet(home / "devnet")
    urls = [s.url for s in net.status() if s.running]
    src = home / "dht.bin"
    src.write_bytes(random_bytes(2 * 1024 * 1024, seed=13))
    cid = Cid.parse(json.loads(medmesh(home, "put", str(src), "--json").stdout)["cid"])

    async def holders(known: list[str]) -> set[str]:
        store = NetworkStore(known)
        try:
            loc = await store.locate(cid)
            return {loc.nodes[n].url for ids in loc.holders.values() for n in ids}
        finally:
            await store.close()

    # a node that holds shares (under load the uploader may have passed over any given one)
    known = sorted(asyncio.run(holders(urls)))[0]
    found = asyncio.run(holders([known]))  # a client that knows that single node
    assert len(found) >= 5 and {known} < found


def test_storage_cid_matches_ipfs_vectors(tmp_path: Path) -> None:
    # hello_world from the reference vectors (tests/data/ipfs-unixfs-vectors.json)
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello world\n")
    home = tmp_path / "h"
    out = medmesh(home, "storage", "cid", str(f)).stdout.strip()
    assert out == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    v0 = medmesh(home, "storage", "cid", "--cid-version", "0", str(f)).stdout.strip()
    assert v0 == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def test_help_everywhere(tmp_path: Path) -> None:
    for args in (
        ["--help"],
        ["put", "--help"],
        ["get", "--help"],
        ["storage", "--help"],
        ["storage", "cid", "--help"],
        ["devnet", "up", "--help"],
        ["node", "run", "--help"],
        ["wallet", "new", "--help"],
    ):
        proc = medmesh(tmp_path, *args)
        assert "Usage" in proc.stdout


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "empty"
    proc = medmesh(home, "get", "not-a-cid", "-o", str(tmp_path / "x"), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
