"""The local network: storage nodes as separate processes under one folder.

``Devnet(home/devnet)`` keeps ``devnet.json`` (each node's data folder and ports, so URLs
stay the same across restarts) and one ``node-<i>/`` folder per node; logs go to
``logs/node-<i>.log``. :meth:`Devnet.up` starts the nodes that are not running and returns
when every node answers the trustless-gateway probe; :meth:`Devnet.down` stops them by the
PIDs they recorded (and only processes whose command line names their own data folder).

Who may write: the ``trusted`` addresses (the home wallet) and, when the home has a ledger
(:func:`ledger_registry`: contracts deployed, ``addresses.json``), every participant its
Registry gives a writer role: the nodes are started with ``--registry-rpc``/``--registry``.
A running node whose saved registry setting differs from the wanted one (the chain was set up,
redeployed or removed since it started) is restarted by :meth:`Devnet.up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from medmesh.config import Home
from medmesh.daemons import HOST, alive, free_port, port_free, spawn_detached, stop
from medmesh.errors import ConfigError, NodeUnavailableError

__all__ = ["DEFAULT_BASE_PORT", "Devnet", "NodeStatus", "RegistryLink", "ledger_registry"]

DEFAULT_BASE_PORT: Final = 7601


@dataclass(frozen=True)
class NodeStatus:
    """One devnet node as seen from outside."""

    index: int
    data: str
    port: int
    dht_port: int
    url: str
    pid: int | None
    running: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "url": self.url,
            "pid": self.pid,
            "data": self.data,
            "port": self.port,
            "dht_port": self.dht_port,
            "running": self.running,
        }


@dataclass(frozen=True)
class RegistryLink:
    """Where nodes ask who may write: a chain's JSON-RPC URL and its Registry contract.

    ``running`` is False when the home's embedded chain is stopped: ``rpc_url`` is then the
    URL it had (and will have again: its port is kept), and until it is back the nodes refuse
    (503) writers that are not trusted.
    """

    rpc_url: str
    address: str
    running: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"rpc_url": self.rpc_url, "address": self.address, "running": self.running}


def ledger_registry(home: Home) -> RegistryLink | None:
    """The ledger's Registry for the nodes of ``home``; None if it has no ledger.

    A ledger is there when the contracts were deployed (``<home>/addresses.json``, written by
    ``medmesh chain up``) and the chain is known: ``rpc_url`` in ``config.json``, or the
    embedded chain of ``<home>/chain`` (running, or stopped with its URL on record).
    """
    if not home.address_book.is_file():
        return None
    from medmesh.ledger.chains import LocalChain
    from medmesh.ledger.deploy import AddressBook

    book = AddressBook.load(home.address_book)
    address = book.contracts.get("Registry")
    if not address:
        raise ConfigError(f"{home.address_book} names no Registry contract")
    cfg = home.load_config()
    if cfg.rpc_url:
        return RegistryLink(cfg.rpc_url, address)
    chain = LocalChain(home.chain_dir)
    info = chain.running_info()
    if info:
        return RegistryLink(str(info["rpc_url"]), address)
    try:  # stopped: the URL it had (a local chain keeps its port across restarts)
        last = json.loads(chain.info_file.read_text())
        return RegistryLink(str(last["rpc_url"]), address, running=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _registry_args(registry: RegistryLink | None) -> list[str]:
    if registry is None:
        return ["--no-registry"]
    return ["--registry-rpc", registry.rpc_url, "--registry", registry.address]


def _saved_registry(data: str) -> tuple[str, str] | None:
    """(registry_rpc, registry) in a node's node.json; None if it cannot be read."""
    from medmesh.storage.node.config import NodeConfig

    try:
        cfg = NodeConfig.load(data)
    except ConfigError:
        return None
    return cfg.registry_rpc, cfg.registry


def _wanted_registry(registry: RegistryLink | None) -> tuple[str, str]:
    from eth_utils.address import to_checksum_address

    if registry is None:
        return "", ""
    return registry.rpc_url, to_checksum_address(registry.address)


def _probe(url: str, timeout: float = 1.0) -> bool:
    req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        url + "/ipfs/bafkqaaa", headers={"Accept": "application/vnd.ipld.raw"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Devnet:
    """Start, stop and inspect the local storage nodes under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state_file = self.root / "devnet.json"
        self.logs = self.root / "logs"

    # -- state -------------------------------------------------------------------------
    def _load(self) -> list[dict[str, Any]]:
        if not self.state_file.is_file():
            return []
        try:
            doc = json.loads(self.state_file.read_text())
            nodes = doc["nodes"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read {self.state_file}") from exc
        return list(nodes)

    def _save(self, nodes: list[dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"nodes": nodes}, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _allocate(
        self, existing: list[dict[str, Any]], count: int, base_port: int
    ) -> list[dict[str, Any]]:
        used = {n["port"] for n in existing} | {n["dht_port"] for n in existing}
        nodes = list(existing)
        candidate = base_port
        while len(nodes) < count:
            i = len(nodes)
            if base_port == 0:
                port, dht = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
            else:
                while not (
                    candidate not in used
                    and candidate + 100 not in used
                    and port_free(candidate, socket.SOCK_STREAM)
                    and port_free(candidate + 100, socket.SOCK_DGRAM)
                ):
                    candidate += 1
                port, dht = candidate, candidate + 100
                candidate += 1
            used |= {port, dht}
            nodes.append({"data": str(self.root / f"node-{i}"), "port": port, "dht_port": dht})
        return nodes

    def status(self) -> list[NodeStatus]:
        out = []
        for i, n in enumerate(self._load()):
            data = n["data"]
            pid: int | None = None
            with contextlib.suppress(OSError, ValueError):
                pid = int((Path(data) / "node.pid").read_text().strip())
            running = pid is not None and alive(pid, data)
            url = f"http://{HOST}:{n['port']}"
            out.append(
                NodeStatus(
                    i, data, n["port"], n["dht_port"], url, pid if running else None, running
                )
            )
        return out

    # -- lifecycle ---------------------------------------------------------------------
    def up(
        self,
        count: int,
        *,
        trusted: Sequence[str] = (),
        base_port: int = DEFAULT_BASE_PORT,
        rate_limit: int = 0,
        quota: int | None = None,
        timeout: float = 60.0,
        registry: RegistryLink | None = None,
    ) -> list[NodeStatus]:
        """Start nodes until ``count`` run; return when all answer (or raise).

        ``trusted`` may write; with ``registry`` so may every participant that Registry gives
        a writer role. A running node with another registry setting is restarted.
        """
        if count < 1:
            raise ConfigError("a devnet needs at least one node")
        nodes = self._allocate(self._load(), count, base_port)
        self._save(nodes)
        self.logs.mkdir(parents=True, exist_ok=True)
        current = {s.index: s for s in self.status()}
        dht_peers = [f"{HOST}:{n['dht_port']}" for n in nodes]
        wanted = _wanted_registry(registry)
        started: list[int] = []
        for i, n in enumerate(nodes[:count]):
            st = current.get(i)
            if st is not None and st.running:
                saved = _saved_registry(n["data"])
                if saved is None or saved == wanted or st.pid is None:
                    continue
                stop(st.pid, st.data)  # started with another registry setting: restart it
            cmd = [
                sys.executable,
                "-m",
                "medmesh",
                "node",
                "run",
                "--data",
                n["data"],
                "--port",
                str(n["port"]),
                "--dht-port",
                str(n["dht_port"]),
            ]
            for peer in dht_peers:
                if peer != f"{HOST}:{n['dht_port']}":
                    cmd += ["--bootstrap", peer]
            for addr in trusted:
                cmd += ["--trust", addr]
            cmd += _registry_args(registry)
            if rate_limit:
                cmd += ["--rate-limit", str(rate_limit)]
            if quota is not None:
                cmd += ["--quota", str(quota)]
            Path(n["data"]).mkdir(parents=True, exist_ok=True)
            spawn_detached(cmd, self.logs / f"node-{i}.log")
            started.append(i)
        deadline = time.monotonic() + timeout
        waiting = set(range(count))
        while waiting:
            for i in list(waiting):
                if _probe(f"http://{HOST}:{nodes[i]['port']}"):
                    waiting.discard(i)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise NodeUnavailableError(
                    f"devnet nodes {sorted(waiting)} did not answer within {timeout:.0f} s; "
                    f"see {self.logs}"
                )
            time.sleep(0.1)
        return self.status()[:count]

    def stop_node(self, index: int, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
        """Stop one node by its recorded PID; True if it was running."""
        for st in self.status():
            if st.index == index and st.running and st.pid is not None:
                return stop(st.pid, st.data, sig=sig, timeout=timeout)
        return False

    def down(self, timeout: float = 10.0) -> int:
        """Stop every running node; returns how many were stopped."""
        running = [s for s in self.status() if s.running and s.pid is not None]
        for st in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        for st in running:
            assert st.pid is not None
            while alive(st.pid, st.data) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(st.pid, st.data):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(st.pid, signal.SIGKILL)
        return len(running)
