"""The storage node as a real process (``python -m medmesh node run``) and the devnet.

Every process a test starts is stopped by its PID in a ``finally``, also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medmesh.devnet import Devnet
from medmesh.identity import Wallet
from medmesh.storage.block import Block
from medmesh.storage.blockstore import Blockstore
from medmesh.storage.cid import Cid
from medmesh.storage.transport import NodeClient, open_session

pytestmark = pytest.mark.slow

START_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MEDMESH_HOME": str(tmp_path / "home")}


class Daemon:
    """Starts ``medmesh node run`` processes; :meth:`cleanup` kills any still running."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, data: Path, trust: str) -> tuple[subprocess.Popen[bytes], str]:
        cmd = [sys.executable, "-m", "medmesh", "node", "run", "--data", str(data)]
        cmd += ["--port", "0", "--dht-port", "0", "--trust", trust]
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"node-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        self.procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        url_file = data / "node.url"
        while not url_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"node exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"node did not start within {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.05)
        return proc, url_file.read_text().strip()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def daemon(env: dict[str, str], tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(env, tmp_path / "logs")
    try:
        yield d
    finally:
        d.cleanup()


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


async def _store_and_read(url: str, wallet: Wallet, block: Block) -> tuple[bool, int, bytes, Any]:
    async with open_session() as session:
        client = NodeClient(url, session, signer=wallet)
        alive = await client.probe()
        new = await client.put_blocks([block])
        back = await client.get_block(block.cid)
        info = await client.info()
        return alive, new, back, info


async def _read(url: str, cid: Cid) -> tuple[bytes, Any]:
    async with open_session() as session:
        client = NodeClient(url, session)
        return await client.get_block(cid), await client.info()


def test_node_process_serves_stops_cleanly_and_keeps_blocks(
    tmp_path: Path, daemon: Daemon, wallet: Wallet
) -> None:
    # Prepare
    data = tmp_path / "node"
    payload = os.urandom(300_000)
    block = Block(Cid.of(payload), payload)

    # Execute: start, write a signed block, stop with SIGTERM
    proc, url = daemon.start(data, wallet.address)
    assert url.startswith("http://127.0.0.1:")
    assert int((data / "node.pid").read_text()) == proc.pid
    alive, new, back, info = asyncio.run(_store_and_read(url, wallet, block))
    code = stop(proc)

    # Assert: the write was acknowledged and the stop was clean
    assert alive is True
    assert new == 1
    assert back == payload
    assert info["blocks"] == 1 and info["bytes_used"] == len(payload)
    assert code == 0
    for name in ("node.url", "node.pid", "node.dht"):
        assert not (data / name).exists(), name

    # Execute: restart on the same folder
    proc2, url2 = daemon.start(data, wallet.address)
    try:
        again, info2 = asyncio.run(_read(url2, block.cid))
    finally:
        code2 = stop(proc2)

    # Assert: same identity, the block is still there
    assert again == payload
    assert info2["id"] == info["id"]
    assert info2["blocks"] == 1
    assert code2 == 0
    assert not (data / "node.url").exists()


def test_untrusted_writer_is_refused_by_the_process(
    tmp_path: Path, daemon: Daemon, wallet: Wallet
) -> None:
    proc, url = daemon.start(tmp_path / "node", wallet.address)
    stranger = Wallet.create()
    block = Block(Cid.of(b"not yours"), b"not yours")

    async def run() -> str:
        async with open_session() as session:
            client = NodeClient(url, session, signer=stranger)
            try:
                await client.put_blocks([block])
            except Exception as exc:  # AuthError expected; anything else fails below
                return type(exc).__name__
            return "accepted"

    try:
        outcome = asyncio.run(run())
    finally:
        assert stop(proc) == 0
    assert outcome == "AuthError"
    assert not any((tmp_path / "node" / "blocks").rglob("*.data"))
    assert not any(p.stat().st_size for p in (tmp_path / "node" / "packs").glob("*.pack"))
    store = Blockstore(tmp_path / "node")
    assert list(store.keys()) == []
    store.close()


# -- devnet --------------------------------------------------------------------------------


def _kill_recorded(net: Devnet) -> None:
    """Last resort after a failure: kill every node PID the devnet recorded."""
    net.down(timeout=5)
    for pidfile in net.root.glob("node-*/node.pid"):
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(pidfile.parent).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


# Devnet.up starts detached nodes and drops their Popen handles on purpose
def test_devnet_up_stop_node_and_down(tmp_path: Path, wallet: Wallet) -> None:
    net = Devnet(tmp_path / "devnet")
    try:
        # Execute
        up = net.up(3, trusted=[wallet.address], base_port=0)
        # Assert: three running nodes with their own data folder, port and process
        assert [s.index for s in up] == [0, 1, 2]
        for s in up:
            assert s.running and s.pid is not None
            assert s.url == f"http://127.0.0.1:{s.port}"
            assert Path(s.data) == tmp_path / "devnet" / f"node-{s.index}"
            assert (Path(s.data) / "node.url").read_text().strip() == s.url
            assert set(s.to_json()) >= {"url", "pid", "data", "running"}
        assert len({s.pid for s in up}) == len({s.port for s in up}) == 3
        ids = [asyncio.run(_read_info(s.url)) for s in up]
        assert len(set(ids)) == 3

        # Execute / Assert: stop one node
        assert net.stop_node(1) is True
        after = net.status()
        assert [s.running for s in after] == [True, False, True]
        assert after[1].pid is None
        assert not (Path(after[1].data) / "node.url").exists()
        assert net.stop_node(1) is False  # already down

        # Execute / Assert: down stops the rest
        assert net.down() == 2
        final = net.status()
        assert [s.running for s in final] == [False, False, False]
        for s in up:
            assert s.pid is not None
            assert not Path(f"/proc/{s.pid}").exists() or not _is_node(s.pid, s.data)
    finally:
        _kill_recorded(net)


def _is_node(pid: int, data: str) -> bool:
    try:
        return data.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


async def _read_info(url: str) -> str:
    async with open_session() as session:
        return str((await NodeClient(url, session).info())["id"])
