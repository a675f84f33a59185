"""medmesh: an open, patient-controlled network for medical data.

Records are sealed on the client, content-addressed with IPFS-compatible CIDs, erasure-coded
and spread over a network of storage nodes. The names below are the public Python API; they
are loaded on first use, so ``import medmesh`` stays cheap for the CLI and the node daemon.

>>> import medmesh
>>> wallet = medmesh.Wallet.create()                                     # doctest: +SKIP
>>> store = medmesh.open_store("medmesh:", nodes=urls, signer=wallet)   # doctest: +SKIP
>>> cid = medmesh.Client(store, wallet).put("scan.dcm").cid             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medmesh.errors import MedmeshError as MedmeshError

if TYPE_CHECKING:
    from medmesh.identity.keystore import load_wallet as load_wallet
    from medmesh.identity.keystore import save_wallet as save_wallet
    from medmesh.identity.wallet import Wallet as Wallet
    from medmesh.storage.backends.factory import open_store as open_store
    from medmesh.storage.cid import Cid as Cid
    from medmesh.storage.client import Client as Client

__version__ = "0.1.0"

_LAZY = {
    "Cid": "medmesh.storage.cid",
    "Client": "medmesh.storage.client",
    "Wallet": "medmesh.identity.wallet",
    "load_wallet": "medmesh.identity.keystore",
    "open_store": "medmesh.storage.backends.factory",
    "save_wallet": "medmesh.identity.keystore",
}

__all__ = [
    "Cid",
    "Client",
    "MedmeshError",
    "Wallet",
    "__version__",
    "load_wallet",
    "open_store",
    "save_wallet",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medmesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
