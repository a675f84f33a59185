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
import sys
from typing import TYPE_CHECKING, Any

import py_ecc as _py_ecc  # noqa: F401 - imported first on purpose, see below

from medmesh.errors import MedmeshError as MedmeshError

# py_ecc (pulled in by eth-account and web3) raises Python's recursion limit to 100,000 when it
# is imported. At that limit a deeply nested JSON body ("[[[[…", ~100 KB) overflows the C stack
# in json.loads and kills the process (SIGSEGV) instead of raising RecursionError: any server
# parsing JSON from the network would be one request away from a crash. medmesh never uses
# py_ecc's pairing code (which is what needs the depth), so it imports py_ecc here, once, and
# puts a safe limit back.
_SAFE_RECURSION_LIMIT = 20_000
sys.setrecursionlimit(_SAFE_RECURSION_LIMIT)

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
