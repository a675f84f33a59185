"""Pick an object store from a URL.

- ``medmesh:`` (or a list of ``http://`` node URLs) -> :class:`NetworkStore`
- ``kubo+http://host:5001``                        -> :class:`KuboStore` (kubo RPC)
- ``memory:``                                      -> :class:`MemoryStore` (tests)
"""

from __future__ import annotations

from collections.abc import Sequence

from medmesh.errors import ConfigError
from medmesh.storage.auth import RequestSigner
from medmesh.storage.backends.base import ObjectStore
from medmesh.storage.uploader import StoreParams

__all__ = ["open_store"]


def open_store(
    url: str,
    *,
    nodes: Sequence[str] = (),
    signer: RequestSigner | None = None,
    params: StoreParams | None = None,
) -> ObjectStore:
    """The store named by ``url``; ``nodes`` are the storage node URLs for ``medmesh:``."""
    if url in ("medmesh", "medmesh:", "medmesh://"):
        from medmesh.storage.backends.network import NetworkStore

        if not nodes:
            raise ConfigError("no storage nodes configured: run `medmesh devnet up` or add nodes")
        return NetworkStore(nodes, signer=signer, params=params)
    if url.startswith(("kubo+http://", "kubo+https://")):
        from medmesh.storage.backends.kubo import KuboStore

        return KuboStore(url.removeprefix("kubo+"))
    if url in ("memory", "memory:"):
        from medmesh.storage.backends.memory import MemoryStore

        return MemoryStore()
    raise ConfigError(
        f"unknown storage backend {url!r}: use medmesh:, kubo+http://HOST:PORT or memory:"
    )
