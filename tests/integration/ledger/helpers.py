"""Real local chains for the ledger integration tests: start, deploy, fund, stop by PID.

A :class:`Net` is one :class:`~medmesh.ledger.chains.LocalChain` (Anvil under its supervisor)
with the medmesh contracts deployed. Every JSON-RPC client a test opens through it is tracked
and closed when the net stops.

:func:`stop_chain` stops a chain by the PIDs in its ``chain.json`` (and any PID the test saw),
checking each one's command line first: nothing we did not start is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmesh.daemons import alive
from medmesh.identity import Wallet
from medmesh.ledger.chains import ChainStatus, LocalChain
from medmesh.ledger.client import Ledger
from medmesh.ledger.deploy import AddressBook, ensure_deployed
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import TxSender

# Interval mining (seconds). Faster than the 1 s default so the suite stays quick; durability
# does not depend on it (Anvil dumps its state every second whatever the block time).
BLOCK_TIME = 0.25
FUNDS = 10**21
HOUR = 3600


def fund(rpc: Rpc, *addresses: str) -> None:
    rpc.batch([("anvil_setBalance", [a, hex(FUNDS)]) for a in addresses])


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def exited(pid: int) -> bool:
    """True once ``pid`` has finished exiting (gone, or a zombie): its sockets are closed.

    ``daemons.alive`` turns False earlier, as soon as the dying process has no command line,
    which is before the kernel closes its files: a port can still be held for a moment then.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def connections(pid: int, port: int) -> int:
    """How many TCP sockets of ``pid`` are connected to ``port`` on this host (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local remote state ... uid timeout inode
        if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
            count += 1
    return count


def stop_chain(chain: LocalChain, seen_pids: set[int] | None = None) -> None:
    """``down()``, then SIGKILL whatever of this chain still runs (checked by command line)."""
    with contextlib.suppress(Exception):
        chain.down(timeout=10.0)
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(chain.info_file.read_text())
    supervisors = {int(info["pid"])} if info.get("pid") else set()
    anvils = {int(info["anvil_pid"])} if info.get("anvil_pid") else set()
    for pid in seen_pids or set():
        if alive(pid, str(chain.root)):
            supervisors.add(pid)
        elif alive(pid, str(chain.state_file)):
            anvils.add(pid)
    for pids, marker in ((supervisors, str(chain.root)), (anvils, str(chain.state_file))):
        for pid in pids:
            if alive(pid, marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_until(lambda p=pid: exited(p), 10.0, f"pid {pid} to exit")


@dataclass
class Net:
    """One running local chain with the medmesh contracts deployed."""

    chain: LocalChain
    status: ChainStatus
    book: AddressBook
    governance: Wallet
    admin: Rpc
    clients: list[Rpc | Ledger] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.status.rpc_url is not None
        return self.status.rpc_url

    @property
    def book_path(self) -> Path:
        return self.chain.root / "addresses.json"

    def remember_pids(self) -> None:
        st = self.chain.status()
        self.seen_pids.update(p for p in (st.pid, st.anvil_pid) if p)

    def rpc(self) -> Rpc:
        rpc = Rpc(self.url)
        self.clients.append(rpc)
        return rpc

    def ledger(self, signer: Wallet | None = None, *, durable: bool = False) -> Ledger:
        ledger = Ledger(
            self.url, self.book, signer=signer, durable=self.chain.wait_durable if durable else None
        )
        self.clients.append(ledger)
        return ledger

    def wallets(self, count: int) -> list[Wallet]:
        wallets = [Wallet.create() for _ in range(count)]
        fund(self.admin, *(w.address for w in wallets))
        return wallets

    def close_clients(self) -> None:
        """Close every client connection, as client processes would exit before a restart.

        Connections still open when Anvil is killed leave orphaned FIN-WAIT-1 sockets on its
        port until the clients close them; binding the port fails meanwhile (even with
        SO_REUSEADDR), so ``up()`` right after would refuse it.
        """
        for client in self.clients:
            client.close()
        self.admin.close()

    def stop(self) -> None:
        self.close_clients()
        stop_chain(self.chain, self.seen_pids)


def start_net(root: Path, *, block_time: float = BLOCK_TIME) -> Net:
    """Start a chain under ``root`` and deploy the contracts; the caller must :meth:`Net.stop`."""
    chain = LocalChain(root)
    seen: set[int] = set()
    try:
        status = chain.up(port=0, block_time=block_time)
        seen.update(p for p in (status.pid, status.anvil_pid) if p)
        assert status.rpc_url is not None
        admin = Rpc(status.rpc_url)
        governance = Wallet.create()
        fund(admin, governance.address)
        book, deployed_now = ensure_deployed(TxSender(admin, governance), root / "addresses.json")
        assert deployed_now is True
    except BaseException:
        stop_chain(chain, seen)
        raise
    return Net(chain, status, book, governance, admin, seen_pids=seen)


@contextlib.contextmanager
def running_net(root: Path, *, block_time: float = BLOCK_TIME) -> Iterator[Net]:
    net = start_net(root, block_time=block_time)
    try:
        yield net
    finally:
        net.stop()


@contextlib.contextmanager
def mining_paused(rpc: Rpc) -> Iterator[None]:
    """Stop interval mining (blocks only by ``evm_mine``); afterwards mine every second.

    Anvil's ``evm_setIntervalMining`` takes whole seconds, so the chain cannot go back to a
    sub-second block time: tests using this run last in their module.
    """
    rpc.call("evm_setIntervalMining", 0)
    try:
        yield
    finally:
        rpc.call("evm_setIntervalMining", 1)


def block_number(rpc: Rpc) -> int:
    return int(rpc.call("eth_blockNumber"), 16)


def nonce(rpc: Rpc, address: str, tag: str = "pending") -> int:
    return int(rpc.call("eth_getTransactionCount", address, tag), 16)
