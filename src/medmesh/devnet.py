"""The local network: storage nodes as separate processes under one folder.

``Devnet(home/devnet)`` keeps ``devnet.json`` (each node's data folder and ports, so URLs
stay the same across restarts) and one ``node-<i>/`` folder per node; logs go to
``logs/node-<i>.log``. :meth:`Devnet.up` starts the nodes that are not running and returns
when every node answers the trustless-gateway probe; :meth:`Devnet.down` stops them by the
PIDs they recorded (and only processes whose command line names their own data folder).
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

from medmesh.daemons import HOST, alive, free_port, port_free, spawn_detached, stop
from medmesh.errors import ConfigError, NodeUnavailableError

__all__ = ["DEFAULT_BASE_PORT", "Devnet", "NodeStatus"]

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
    ) -> list[NodeStatus]:
        """Start nodes until ``count`` run; return when all answer (or raise)."""
        if count < 1:
            raise ConfigError("a devnet needs at least one node")
        nodes = self._allocate(self._load(), count, base_port)
        self._save(nodes)
        self.logs.mkdir(parents=True, exist_ok=True)
        current = {s.index: s for s in self.status()}
        dht_peers = [f"{HOST}:{n['dht_port']}" for n in nodes]
        started: list[int] = []
        for i, n in enumerate(nodes[:count]):
            if current.get(i) is not None and current[i].running:
                continue
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
