"""A storage network in one process, for tests: real nodes, real HTTP on 127.0.0.1.

Each node is a :class:`NodeService` behind the real aiohttp app, served from one background
event loop, so synchronous code under test (``Client.put`` runs its own loop) talks to
them over loopback like it would to separate processes. Faults are injected at the HTTP
layer: a node can be stopped, made to drop connections after a number of requests, or
have blocks on its disk corrupted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from medmesh.storage.cid import Cid
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import NodeService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """Drop connections of matching requests after ``after`` of them were served."""

    method: str | None = None
    path_prefix: str = "/"
    after: int = 0
    seen: int = 0
    tripped: bool = False


@dataclass
class TestNode:
    index: int
    data: Path
    service: NodeService
    runner: web.AppRunner | None = None
    url: str = ""
    port: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: int = 0

    __test__ = False


class LocalCluster:
    """``count`` storage nodes trusting ``trusted`` writers."""

    def __init__(self, root: Path, count: int, trusted: list[str], **config: Any) -> None:
        self.root = root
        self.trusted = trusted
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nodes: list[TestNode] = []
        for _ in range(count):
            self.add_node()

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def add_node(self) -> TestNode:
        i = len(self.nodes)
        data = self.root / f"node-{i}"
        node = TestNode(i, data, self._service(data))
        self.nodes.append(node)
        self._run(self._start(node))
        return node

    def _service(self, data: Path) -> NodeService:
        cfg = NodeConfig(data=str(data), trusted=tuple(self.trusted), **self.config)
        return NodeService(cfg)

    async def _start(self, node: TestNode) -> None:
        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            node.requests += 1
            for f in node.faults:
                if (f.method is None or f.method == request.method) and request.path.startswith(
                    f.path_prefix
                ):
                    f.seen += 1
                    if f.seen > f.after:
                        f.tripped = True
                        assert request.transport is not None
                        request.transport.abort()
                        raise ConnectionResetError("injected fault")
            return await handler(request)

        app = make_app(node.service)
        app.middlewares.insert(0, faults)
        node.runner = web.AppRunner(app, access_log=None)
        await node.runner.setup()
        site = web.TCPSite(node.runner, "127.0.0.1", node.port)
        await site.start()
        server = site._server
        assert server is not None
        node.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        node.url = f"http://127.0.0.1:{node.port}"

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self, i: int) -> None:
        """Take node ``i`` off the network (connections refused from now on)."""
        node = self.nodes[i]
        if node.runner is not None:
            self._run(node.runner.cleanup())
            node.runner = None

    def restart(self, i: int) -> None:
        """Start node ``i`` again on the same port and data folder (a fresh service)."""
        node = self.nodes[i]
        self.stop(i)
        node.service.close()
        node.service = self._service(node.data)
        self._run(self._start(node))

    def corrupt(self, i: int, *, keep: Callable[[Cid, bytes], bool] | None = None) -> int:
        """Flip a byte on disk in every block node ``i`` holds; returns how many.

        Blocks in pack files and in their own files alike (the store says where each one's
        bytes are). ``keep(cid, data)`` spares the blocks it is true for.
        """
        store = self.nodes[i].service.store
        count = 0
        for cid in list(store.keys()):
            data = store.get(cid)
            where = store.location(cid)
            if not data or where is None or (keep is not None and keep(cid, data)):
                continue
            path, offset, length = where
            with path.open("r+b") as fh:
                fh.seek(offset + length // 2)
                byte = fh.read(1)[0]
                fh.seek(offset + length // 2)
                fh.write(bytes([byte ^ 0x01]))
            count += 1
        return count

    def holds(self, i: int, cid: Cid) -> bool:
        return self.nodes[i].service.store.has(cid)

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.stop(i)
            self.nodes[i].service.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def random_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast)."""
    import random

    return random.Random(seed).randbytes(n) if n else b""


__all__ = ["Fault", "LocalCluster", "TestNode", "random_bytes"]
