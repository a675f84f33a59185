"""Run a storage node as a process: HTTP on 127.0.0.1 plus the DHT.

On start the node writes ``<data>/node.url`` (its base URL, also when port 0 picked a free
port) and ``<data>/node.pid``; both are removed on a clean stop (SIGTERM or SIGINT).
Blocks are durable before they are acknowledged, so a crash loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from medmesh.runtime import server_gc
from medmesh.storage.cid import Cid
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.dht import ProviderDht
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import NodeService

__all__ = ["serve"]

log = logging.getLogger(__name__)


def _parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _run(config: NodeConfig, ready: asyncio.Event | None = None) -> None:
    # Handle SIGTERM/SIGINT before announcing anything: a stop that arrives as soon as
    # node.url exists must still be a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = NodeService(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"

    def held() -> list[Cid]:
        return [obj for obj, _ in service.objects()]

    dht = ProviderDht(
        service.node_id,
        url,
        host=config.host,
        port=config.dht_port or 0,
        bootstrap=[_parse_addr(b) for b in config.bootstrap],
        held=held,
    )
    dht_port = await dht.start(join=False)  # join in the background: serve HTTP now
    app = make_app(
        service,
        providers=dht.find_providers,
        announce=dht.provide,
        withdraw=dht.withdraw,
        announce_many=dht.provide_many,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()

    data = config.data_path
    try:
        # node.url last: its presence (complete, written atomically) means the node is ready
        _write_atomic(data / "node.pid", f"{os.getpid()}\n")
        _write_atomic(data / "node.dht", f"{config.host}:{dht_port}\n")
        _write_atomic(data / "node.url", url + "\n")
        log.info("node %s listening on %s (dht udp %s)", service.node_id, url, dht_port)
        if config.registry:
            log.info(
                "writers: %d trusted address(es) and participants of the registry %s at %s",
                len(config.trusted),
                config.registry,
                config.registry_rpc,
            )
        else:
            log.info("writers: %d trusted address(es)", len(config.trusted))
        await dht.provide_many(held())  # re-announce what we hold after a restart
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for name in ("node.url", "node.pid", "node.dht"):
            with contextlib.suppress(FileNotFoundError):
                (data / name).unlink()
        await runner.cleanup()
        await dht.stop()
        service.close()


def serve(config: NodeConfig) -> None:
    """Run the node until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # kademlia and rpcudp narrate every RPC at INFO: a tenth of a busy node's CPU went to
    # formatting those lines. Their warnings (a peer not answering) still show.
    for chatty in ("kademlia", "rpcudp"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    config.data_path.mkdir(parents=True, exist_ok=True)
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):  # a pinned dependency; asyncio's loop works too
        import uvloop  # libuv's loop, as uvicorn runs the gateway: cheaper per request

        run = uvloop.run
    with server_gc():
        run(_run(config))
