"""Provider records in a Kademlia DHT (the ``kademlia`` package, UDP on 127.0.0.1).

A node announces "I hold shares of object X" by storing, under the key
``/providers/<multihash hex>``, a JSON map ``{node_id: {"url": ..., "expires": ...}}`` at the
DHT nodes closest to that key. The stock ``kademlia`` storage keeps one value per key (last
write wins), which would let each provider erase the others; :class:`ProviderStorage`
*merges* maps instead, keeping each provider's newest entry and dropping expired ones.
Records expire after ``ttl`` seconds and are republished every ``ttl / 2``.

A node that erases an object *withdraws* its record: it publishes a tombstone, an entry
``{"url": ..., "expires": ..., "withdrawn": true}`` newer than its last announcement.
Entries are never deleted remotely (a DHT node cannot tell who asked), but the newest
entry of a provider wins the merge, so the tombstone replaces the record wherever it
lands, and lookups skip withdrawn providers. DHT nodes the tombstone does not reach keep
the old record until it expires (``ttl``). A later announcement is newer again and wins.

Lookups merge what this node stores with what the network returns, and answer in the
shape of the IPFS Delegated Routing API (``/routing/v1/providers/{cid}``).

Announcing many objects at once (a batch upload registers a thousand) would cost one
crawl and about ``2 × peers`` RPCs per object with kademlia's ``set``. While this node's
routing table is *complete* (no k-bucket is full, so kademlia has kept every peer it has
heard of), the ``k`` peers closest to a key are known without a crawl, as in IPFS's
"accelerated DHT client": :meth:`ProviderDht.provide_many` then groups the keys by the
peers that should hold them and sends each peer one ``store_many`` RPC per
:data:`STORE_MANY_KEYS` keys (one record, many keys). A peer that does not answer it
(gone, or an older node without the RPC) gets its keys the classic way. When a bucket is
full the table may miss closer peers, so every key takes kademlia's crawl as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import IStorage
from kademlia.utils import digest as kademlia_digest

from medmesh.storage.cid import Cid

__all__ = ["DEFAULT_TTL", "ProviderDht", "ProviderStorage", "merge_records"]

log = logging.getLogger(__name__)

DEFAULT_TTL: Final = 24 * 3600
#: Seconds to wait for one DHT RPC; a dead peer costs at most this much per lookup step.
DEFAULT_RPC_TIMEOUT: Final = 2.0
MAX_PROVIDERS: Final = 40  # keeps a record inside one UDP datagram (rpcudp caps at 8 KiB)
#: Keys per ``store_many`` RPC: 200 × 22 bytes (msgpack of a 20-byte digest) plus one
#: provider record stays well inside rpcudp's 8 KiB datagram.
STORE_MANY_KEYS: Final = 200
_MAX_RECORD_BYTES: Final = 2048  # a single provider's record (url and expiry) is far smaller


def provider_key(cid: Cid) -> str:
    """DHT key of the provider record of ``cid`` (codec-independent, like IPFS)."""
    return "/providers/" + cid.multihash.hex()


def merge_records(*values: Any, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Merge provider maps (JSON text or dicts), newest entry per provider, unexpired only."""
    now = time.time() if now is None else now
    merged: dict[str, dict[str, Any]] = {}
    for value in values:
        if value is None:
            continue
        try:
            entries = json.loads(value) if isinstance(value, str | bytes) else value
        except ValueError:
            continue
        if not isinstance(entries, dict):
            continue
        for node_id, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                continue
            expires = entry.get("expires")
            if isinstance(expires, bool) or not isinstance(expires, int | float) or expires < now:
                continue
            withdrawn = entry.get("withdrawn") is True
            old = merged.get(node_id)
            # the newest entry wins; on a tie a withdrawal wins (erasure is the safe side)
            if (
                old is None
                or old["expires"] < expires
                or (old["expires"] == expires and withdrawn and not old.get("withdrawn"))
            ):
                new: dict[str, Any] = {"url": entry["url"], "expires": expires}
                if withdrawn:
                    new["withdrawn"] = True
                merged[str(node_id)] = new
    if len(merged) > MAX_PROVIDERS:
        newest = sorted(merged.items(), key=lambda kv: kv[1]["expires"], reverse=True)
        merged = dict(newest[:MAX_PROVIDERS])
    return merged


class ProviderStorage(IStorage):  # type: ignore[misc]
    """Kademlia storage whose values are provider maps merged on every write."""

    def __init__(self, ttl: int = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self.data: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    def __setitem__(self, key: bytes, value: Any) -> None:
        old = self.data.pop(key, (0.0, None))[1]
        merged = merge_records(old, value)
        if merged:
            self.data[key] = (time.monotonic(), json.dumps(merged, sort_keys=True))

    def __getitem__(self, key: bytes) -> str:
        return self.data[key][1]

    def get(self, key: bytes, default: Any = None) -> Any:
        entry = self.data.get(key)
        if entry is None:
            return default
        merged = merge_records(entry[1])
        if not merged:
            del self.data[key]
            return default
        return json.dumps(merged, sort_keys=True)

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, str]]:
        horizon = time.monotonic() - seconds_old
        return [(k, v) for k, (t, v) in self.data.items() if t <= horizon]

    def __iter__(self) -> Iterator[tuple[bytes, str]]:
        return iter([(k, v) for k, (_, v) in self.data.items()])

    def put_many(self, keys: Iterable[bytes], value: Any) -> None:
        """``self[key] = value`` for every key, parsing ``value`` once."""
        new = merge_records(value)
        if not new:
            return
        now = time.monotonic()
        text = json.dumps(new, sort_keys=True)
        for key in keys:
            old = self.data.pop(key, None)
            if old is None:
                self.data[key] = (now, text)
            else:
                merged = merge_records(old[1], new)
                if merged:
                    self.data[key] = (now, json.dumps(merged, sort_keys=True))


class _Protocol(KademliaProtocol):  # type: ignore[misc]
    """kademlia's protocol plus ``store_many``: one provider record under many keys."""

    def rpc_store_many(self, sender: tuple[str, int], nodeid: bytes, keys: Any, value: Any) -> bool:
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        if (
            not isinstance(keys, list)
            or len(keys) > STORE_MANY_KEYS
            or not isinstance(value, str)
            or len(value) > _MAX_RECORD_BYTES
        ):
            return False
        self.storage.put_many((k for k in keys if isinstance(k, bytes) and len(k) == 20), value)
        return True

    async def call_store_many(self, node: Node, keys: list[bytes], value: str) -> Any:
        result = await self.store_many((node.ip, node.port), self.source_node.id, keys, value)
        return self.handle_call_response(result, node)


class _Server(Server):  # type: ignore[misc]
    """kademlia's server with a configurable RPC timeout (its default is 5 s per call)."""

    protocol_class = _Protocol

    def __init__(self, *, rpc_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rpc_timeout = rpc_timeout

    def _create_protocol(self) -> Any:
        protocol = super()._create_protocol()
        protocol._wait_timeout = self.rpc_timeout
        return protocol


class ProviderDht:
    """This node's membership in the DHT: announce and look up providers."""

    def __init__(
        self,
        node_id: str,
        url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bootstrap: Iterable[tuple[str, int]] = (),
        ttl: int = DEFAULT_TTL,
        held: Callable[[], Iterable[Cid]] | None = None,
        rejoin_interval: float = 2.0,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.url = url
        self.host = host
        self.port = port
        self.bootstrap_addrs = list(bootstrap)
        self.ttl = ttl
        self.held = held
        self.rejoin_interval = rejoin_interval
        self.lookup_timeout = 2 * rpc_timeout
        self.server = _Server(storage=ProviderStorage(ttl), rpc_timeout=rpc_timeout)
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, join: bool = True) -> int:
        """Listen on UDP and join the network; returns the bound port.

        With ``join`` the first bootstrap happens before returning (up to kademlia's 5 s
        timeout when no peer answers). Either way the node keeps bootstrapping in the
        background (every ``rejoin_interval`` s) while its routing table is empty, since
        peers may start after it. The daemon passes ``join=False`` so that its HTTP side
        is up at once.
        """
        await self.server.listen(self.port, interface=self.host)
        self.port = int(self.server.transport.get_extra_info("sockname")[1])
        if join and self.bootstrap_addrs:
            await self.server.bootstrap(self.bootstrap_addrs)
        self._task = asyncio.create_task(self._maintain())
        return self.port

    def neighbours(self) -> int:
        """How many peers the routing table knows."""
        return len(self.server.bootstrappable_neighbors())

    async def _crawl(self, key: str) -> str | None:
        """Ask the network even when we hold a record ourselves (``Server.get`` would not)."""
        node = Node(kademlia_digest(key))
        nearest = self.server.protocol.router.find_neighbors(node)
        if not nearest:
            return None
        spider = ValueSpiderCrawl(
            self.server.protocol, node, nearest, self.server.ksize, self.server.alpha
        )
        found: str | None = await spider.find()
        return found

    async def _maintain(self) -> None:
        last_republish = time.monotonic()
        while True:
            if self.bootstrap_addrs and not self.neighbours():
                try:
                    await self.server.bootstrap(self.bootstrap_addrs)
                except Exception:
                    log.debug("DHT bootstrap failed; will retry", exc_info=True)
                if self.neighbours() and self.held is not None:
                    await self.provide_many(list(self.held()))  # announce what we hold
            if time.monotonic() - last_republish > self.ttl / 2 and self.held is not None:
                last_republish = time.monotonic()
                await self.provide_many(list(self.held()))
            await asyncio.sleep(self.rejoin_interval if not self.neighbours() else 30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.server.stop()

    async def rejoin(self) -> None:
        """Bootstrap again now (peers started after us, or came back)."""
        if self.bootstrap_addrs:
            await self.server.bootstrap(self.bootstrap_addrs)

    def _record(self, *, withdrawn: bool = False) -> str:
        # sub-second expiry times order an announcement and a withdrawal in one second
        entry: dict[str, Any] = {"url": self.url, "expires": time.time() + self.ttl}
        if withdrawn:
            entry["withdrawn"] = True
        return json.dumps({self.node_id: entry})

    async def provide(self, cid: Cid) -> bool:
        """Announce that this node provides ``cid``. True if any DHT node stored it."""
        key = provider_key(cid)
        record = self._record()
        # always keep our own record locally, even when alone in the network
        self.server.storage[_digest(key)] = record
        try:
            return bool(await self.server.set(key, record))
        except Exception:  # network trouble must not fail the write that triggered it
            log.warning("could not publish a provider record", exc_info=True)
            return False

    async def provide_many(self, cids: Iterable[Cid], *, concurrency: int = 8) -> int:
        """Announce many objects; returns how many reached another DHT node.

        Our own records are all kept at once (lookups through this node find them at
        once). The network hears of them in ``store_many`` batches while the routing table
        is complete, else ``concurrency`` crawls at a time, so a batch of a thousand
        objects does not open a thousand crawls together (see the module docstring).
        """
        record = self._record()
        keys = [_digest(provider_key(cid)) for cid in cids]
        self.server.storage.put_many(keys, record)
        peers = self._complete_table()
        if peers is not None:
            return await self._store_direct(keys, record, peers, concurrency)
        return len(await self._crawled(keys, record, concurrency))

    def _complete_table(self) -> list[Node] | None:
        """Every peer the routing table holds, or None if a full bucket may hide some."""
        buckets = self.server.protocol.router.buckets
        if any(len(b.nodes) >= b.ksize or b.replacement_nodes for b in buckets):
            return None
        return [node for b in buckets for node in b.get_nodes()]

    async def _store_direct(
        self, keys: list[bytes], record: str, peers: list[Node], concurrency: int
    ) -> int:
        """Send each key to its ``ksize`` closest peers, grouped into ``store_many`` RPCs."""
        ksize = self.server.ksize
        wanted: dict[bytes, list[bytes]] = {}  # peer id -> keys it should hold
        by_id = {p.id: p for p in peers}
        for key in keys:
            target = Node(key)
            closest = peers if len(peers) <= ksize else sorted(peers, key=target.distance_to)
            for peer in closest[:ksize]:
                wanted.setdefault(peer.id, []).append(key)
        reached: set[bytes] = set()
        gate = asyncio.Semaphore(concurrency)

        async def send(peer: Node, part: list[bytes]) -> None:
            async with gate:
                try:
                    ok, answer = await self.server.protocol.call_store_many(peer, part, record)
                except Exception:  # network trouble must not fail the write
                    log.warning("could not publish provider records", exc_info=True)
                    ok = answer = False
            if ok and answer is True:
                reached.update(part)
                return
            # no answer (gone, or a node without store_many): the classic way for these
            reached.update(await self._crawled(part, record, concurrency))

        await asyncio.gather(
            *(
                send(by_id[pid], part[i : i + STORE_MANY_KEYS])
                for pid, part in wanted.items()
                for i in range(0, len(part), STORE_MANY_KEYS)
            )
        )
        return len(reached)

    async def _crawled(self, keys: list[bytes], record: str, concurrency: int) -> set[bytes]:
        """kademlia's ``set`` for each key (a crawl, then a store at the closest found)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(key: bytes) -> bool:
            async with gate:
                try:
                    return bool(await self.server.set_digest(key, record))
                except Exception:  # network trouble must not fail the write
                    log.warning("could not publish a provider record", exc_info=True)
                    return False

        done = await asyncio.gather(*(one(k) for k in keys))
        return {k for k, ok in zip(keys, done, strict=True) if ok}

    async def withdraw(self, cid: Cid) -> bool:
        """Retract this node's provider record of ``cid`` (see the module docstring).

        Our own copy is replaced at once; True if any other DHT node stored the tombstone.
        """
        key = provider_key(cid)
        record = self._record(withdrawn=True)
        self.server.storage[_digest(key)] = record
        try:
            return bool(await self.server.set(key, record))
        except Exception:  # network trouble must not fail the erasure that triggered it
            log.warning("could not publish a provider withdrawal", exc_info=True)
            return False

    async def find_providers(self, cid: Cid) -> list[dict[str, Any]]:
        """Providers of ``cid`` as Delegated Routing API records."""
        key = provider_key(cid)
        local = self.server.storage.get(_digest(key))
        try:
            remote = await asyncio.wait_for(self._crawl(key), self.lookup_timeout)
        except Exception:
            log.warning("DHT lookup failed", exc_info=True)
            remote = None
        merged = merge_records(local, remote)
        return [
            {
                "Schema": "peer",
                "ID": node_id,
                "Addrs": [entry["url"]],
                "Protocols": ["transport-ipfs-gateway-http"],
            }
            for node_id, entry in sorted(merged.items())
            if not entry.get("withdrawn")
        ]


def _digest(key: str) -> bytes:
    result: bytes = kademlia_digest(key)
    return result
