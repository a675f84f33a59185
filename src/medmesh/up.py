"""``medmesh up``: the whole local network of a home folder, run in the foreground.

:class:`LocalNetwork` starts, in order, what is not running yet and reuses what is:

1. the embedded chain (:class:`~medmesh.ledger.chains.LocalChain` under its supervisor), with
   the contracts deployed once and the home wallet registered (:func:`bootstrap_local`);
2. the storage nodes (:class:`~medmesh.devnet.Devnet`), letting the Registry's writers in;
3. the consent gateway with the FHIR R4 API (:class:`~medmesh.consent.daemon.GatewayDaemon`,
   ``gateway run --fhir``);
4. on the first start only, a demo world (:func:`medmesh.synth.synthesize`): once it has
   completed, ``<home>/up/demo.json`` records it and later starts skip it.

Every component stays the background daemon it is with ``chain up``/``devnet up``/``gateway
up`` (same PID files, logs and ports), so ``medmesh chain status`` and the others see them.
What ``up`` itself started it stops when it ends (:meth:`LocalNetwork.stop_started`), by PID,
gateway first (it flushes pending access logs to the chain), then nodes, then the chain. What
was already running when it began it reuses and leaves running.

``<home>/up/``::

    up.lock     held (flock) while an ``up`` runs: a second one for the same home is refused
    up.json     the running ``up``: its PID and the PIDs of what it started; should ``up`` be
                killed (SIGKILL), the next ``up`` adopts those still running and stops them
                when it ends
    demo.json   the demo world's numbers, written once its seeding completed
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from medmesh.config import Home
from medmesh.consent.daemon import DEFAULT_GATEWAY_PORT, GatewayDaemon
from medmesh.daemons import alive, stop
from medmesh.devnet import DEFAULT_BASE_PORT, Devnet, NodeStatus, ledger_registry
from medmesh.errors import ConfigError
from medmesh.identity import Wallet
from medmesh.ledger.chains import DEFAULT_PORT, LocalChain

__all__ = [
    "DEMO_HOSPITALS",
    "DEMO_LABS",
    "DEMO_PATIENTS",
    "Component",
    "Demo",
    "LocalNetwork",
    "up_lock",
]

DEMO_PATIENTS: Final = 50
DEMO_HOSPITALS: Final = 3
DEMO_LABS: Final = 1


@dataclass(frozen=True)
class Component:
    """One running part of the network, as ``up`` shows and watches it."""

    name: str  # "chain", "node 0", "gateway"
    url: str
    pid: int | None
    marker: str  # what the process's command line names (see medmesh.daemons.alive)
    started: bool  # by this ``up`` (False: it was running already and is left running)
    log: str

    def running(self) -> bool:
        return self.pid is not None and alive(self.pid, self.marker)


@dataclass(frozen=True)
class Demo:
    """The demo world's numbers."""

    patients: int = DEMO_PATIENTS
    hospitals: int = DEMO_HOSPITALS
    labs: int = DEMO_LABS
    seed: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "patients": self.patients,
            "hospitals": self.hospitals,
            "labs": self.labs,
            "seed": self.seed,
        }


@contextlib.contextmanager
def up_lock(home: Home) -> Iterator[None]:
    """Hold ``<home>/up/up.lock`` for as long as this ``up`` runs; refuse a second one."""
    folder = home.ensure().path / "up"
    folder.mkdir(exist_ok=True)
    handle: IO[str] = open(folder / "up.lock", "a")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_json(folder / "up.json").get("pid", "?")
            raise ConfigError(
                f"`medmesh up` already runs for {home.path} (pid {owner}); stop it there with "
                "Ctrl-C, or use another --home"
            ) from None
        yield
    finally:
        handle.close()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def _pids_naming(marker: str) -> list[int]:
    """PIDs of the processes whose command line has ``marker`` as one of its arguments.

    Only for the moment between spawning a daemon and its writing its PID file (an ``up``
    interrupted then must still stop it): the marker is a path of this home.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name), marker):
            found.append(int(entry.name))
    return found


@dataclass
class _Before:
    """What ran before this ``up`` began (it is reused and left running)."""

    chain: int | None = None
    nodes: dict[str, int] = field(default_factory=dict)  # data folder -> pid
    gateway: int | None = None


class LocalNetwork:
    """Start what is missing of ``home``'s local network, watch it, stop what was started."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.chain = LocalChain(home.chain_dir)
        self.devnet = Devnet(home.devnet_dir)
        self.gateway = GatewayDaemon(home)
        self.folder = home.path / "up"
        self.state_file = self.folder / "up.json"
        self.demo_file = self.folder / "demo.json"
        self.before = _Before()
        self._gateway_spawned = False
        self._node_count = 0

    # -- what runs ------------------------------------------------------------------------

    def _chain_pid(self) -> int | None:
        info = self.chain.running_info()
        return int(info["pid"]) if info else None

    def _node_pids(self) -> dict[str, int]:
        return {s.data: s.pid for s in self.devnet.status() if s.running and s.pid is not None}

    def survey(self) -> None:
        """Note what runs now (call before starting anything, inside :func:`up_lock`).

        What a previous ``up`` started and left behind (it was killed) counts as started by
        this one, so it is stopped when this one ends.
        """
        self.before = _Before(self._chain_pid(), self._node_pids(), self.gateway.status().pid)
        previous = _read_json(self.state_file)
        if previous and previous.get("pid") != os.getpid():
            if previous.get("chain") == self.before.chain:
                self.before.chain = None
            orphans = set(previous.get("nodes", []))
            self.before.nodes = {d: p for d, p in self.before.nodes.items() if p not in orphans}
            if previous.get("gateway") == self.before.gateway:
                self.before.gateway = None
        self._record()

    def _record(self) -> None:
        """Write up.json: this process and the PIDs it started (for a later ``up`` to adopt)."""
        chain = self._chain_pid()
        gateway = self.gateway.status().pid
        doc = {
            "pid": os.getpid(),
            "chain": chain if chain is not None and chain != self.before.chain else None,
            "nodes": [p for d, p in self._node_pids().items() if self.before.nodes.get(d) != p],
            "gateway": gateway if gateway is not None and gateway != self.before.gateway else None,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_json(self.state_file, doc)

    # -- start ------------------------------------------------------------------------------

    def start_chain(self, wallet: Wallet, port: int = DEFAULT_PORT) -> dict[str, Any]:
        """Start (or reuse) the local chain; deploy the contracts if needed. Returns what
        :func:`medmesh.ledger.local.bootstrap_local` returns, plus ``reused``."""
        from medmesh.ledger.local import bootstrap_local

        if self.home.load_config().rpc_url:
            raise ConfigError(
                f"{self.home.config_file} sets rpc_url: `medmesh up` runs the embedded local "
                "chain; use another --home, or start the nodes and gateway on their own"
            )
        try:
            info = bootstrap_local(self.home, wallet, port=port)
        finally:
            self._record()
        return {**info, "reused": self.before.chain is not None}

    def start_nodes(
        self, count: int, trusted: str, base_port: int = DEFAULT_BASE_PORT
    ) -> list[NodeStatus]:
        """Start (or reuse) ``count`` storage nodes that let the Registry's writers in."""
        self._node_count = count
        try:
            return self.devnet.up(count, trusted=[trusted], base_port=base_port,
                                  registry=ledger_registry(self.home))  # fmt: skip
        finally:
            self._record()

    def start_gateway(self, passphrase: str, port: int = DEFAULT_GATEWAY_PORT) -> str:
        """Start the gateway with the FHIR API (or reuse the running one); its base URL."""
        self._gateway_spawned = self.gateway.status().pid is None
        try:
            st = self.gateway.up(port, passphrase=passphrase, fhir=True)
        finally:
            self._record()
        assert st.url is not None
        return st.url

    def serves_fhir(self, url: str) -> bool:
        """True if the gateway at ``url`` serves the FHIR API (one started without it does not)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{url}/fhir/metadata", timeout=5.0) as resp:  # noqa: S310 - our own http URL
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- the demo world -----------------------------------------------------------------------

    def demo_seeded(self) -> Demo | None:
        """The demo world's numbers if its seeding completed (by an earlier ``up``)."""
        doc = _read_json(self.demo_file)
        try:
            return Demo(int(doc["patients"]), int(doc["hospitals"]), int(doc["labs"]),
                        int(doc.get("seed", 0)))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None

    def demo_to_seed(self, wanted: Demo) -> Demo:
        """What to seed: ``wanted``, or the population a seeding left unfinished (interrupted,
        or begun by ``medmesh synth``), which is finished instead of refused."""
        saved = _read_json(self.home.path / "synth" / "population.json")
        people = saved.get("participants")
        if not isinstance(people, list):
            return wanted
        roles = [p.get("role") for p in people if isinstance(p, dict)]
        return Demo(roles.count("patient"), roles.count("hospital"), roles.count("lab"),
                    int(saved.get("seed", 0)))  # fmt: skip

    def seed_demo(
        self,
        governor: Wallet,
        demo: Demo,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Seed the demo world (resumable); record it as done. Returns the population summary."""
        from medmesh.synth import synthesize

        population = synthesize(self.home, governor, patients=demo.patients,
                                hospitals=demo.hospitals, labs=demo.labs, seed=demo.seed,
                                progress=progress)  # fmt: skip
        summary = population.to_json()
        _write_json(self.demo_file, {**demo.to_json(), "at": time.time(),
                                     "records": population.records,
                                     "failed": population.failed})  # fmt: skip
        return summary

    def demo_logins(self) -> list[dict[str, str]]:
        """The demo world's participants (name, role, address, home), no secrets."""
        saved = _read_json(self.home.path / "synth" / "population.json")
        people = saved.get("participants")
        if not isinstance(people, list):
            return []
        keys = ("name", "role", "address", "home")
        return [{k: str(p.get(k, "")) for k in keys} for p in people if isinstance(p, dict)]

    # -- watch and stop ------------------------------------------------------------------------

    def components(self) -> list[Component]:
        """Every running part, as it runs now (call after the start steps)."""
        parts: list[Component] = []
        info = self.chain.running_info() or {}
        if info:
            pid = int(info["pid"])
            parts.append(Component("chain", str(info["rpc_url"]), pid, str(self.chain.root),
                                   pid != self.before.chain,
                                   str(self.chain.root / "supervisor.log")))  # fmt: skip
        for s in self.devnet.status()[: self._node_count or None]:
            if s.running:
                parts.append(Component(f"node {s.index}", s.url, s.pid, s.data,
                                       self.before.nodes.get(s.data) != s.pid,
                                       str(self.devnet.logs / f"node-{s.index}.log")))  # fmt: skip
        gw = self.gateway.status()
        if gw.running and gw.url:
            parts.append(Component("gateway", gw.url, gw.pid, str(self.gateway.pid_file),
                                   gw.pid != self.before.gateway, gw.log))  # fmt: skip
        return parts

    def stop_started(self, say: Callable[[str], None] = lambda line: None) -> int:
        """Stop what this ``up`` started (gateway, nodes, chain), by PID; how many it stopped.

        Also what it spawned but had not heard back from yet (interrupted while waiting):
        found by the path of this home its command line names.
        """
        stopped = 0
        gateway = self.gateway.status().pid
        if gateway is None and self._gateway_spawned:
            pids = _pids_naming(str(self.gateway.pid_file))
            gateway = pids[0] if pids else None
        if gateway is not None and gateway != self.before.gateway:
            say(f"stopping the gateway (pid {gateway})")
            stopped += stop(gateway, str(self.gateway.pid_file), timeout=15.0)
        nodes = self._node_pids()
        for n in self.devnet.status():
            spawned = [] if n.data in nodes else _pids_naming(n.data)
            if spawned:
                nodes[n.data] = spawned[0]
        ours = {d: p for d, p in nodes.items() if self.before.nodes.get(d) != p}
        if ours:
            say(f"stopping {len(ours)} storage node(s) (pids {', '.join(map(str, ours.values()))})")
        for data, pid in ours.items():
            stopped += stop(pid, data, timeout=10.0)
        if self.before.chain is None:
            chain = self._chain_pid()
            if chain is not None:
                say(f"stopping the local chain (pid {chain}; its state is saved)")
            stopped += self.chain.down()
            for pid in _pids_naming(str(self.chain.root)):  # spawned, not yet on record
                stopped += stop(pid, str(self.chain.root), timeout=20.0)
        with contextlib.suppress(OSError):
            self.state_file.unlink()
        return stopped
