"""Connecting a home folder to its ledger: which RPC URL, which address book, which index.

``rpc_url`` empty in ``config.json`` means the embedded local chain of ``<home>/chain``; its
writes also wait until their block is on disk. :func:`bootstrap_local` is what ``medmesh
chain up`` (and ``make up``) does on the embedded chain: start Anvil, fund the home wallet,
deploy once, register the wallet's encryption key and give it the gateway and provider roles
so that a single-machine network is usable at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medmesh.config import Home
from medmesh.errors import ConfigError, RpcUnavailableError
from medmesh.identity.wallet import Wallet
from medmesh.ledger.chains import DEFAULT_PORT, LocalChain
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Role
from medmesh.ledger.deploy import AddressBook, ensure_deployed
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import TxSender

__all__ = ["bootstrap_local", "open_indexer", "open_ledger", "rpc_url_of"]

LOCAL_FUNDS = 10_000 * 10**18


def rpc_url_of(home: Home) -> tuple[str, Callable[[int], None] | None]:
    """(RPC URL, durability hook) of the home's chain."""
    cfg = home.load_config()
    if cfg.rpc_url:
        return cfg.rpc_url, None
    chain = LocalChain(home.chain_dir)
    info = chain.running_info()
    if not info:
        raise RpcUnavailableError(
            "the local chain is not running: start it with `medmesh chain up` (or `make up`)"
        )
    return str(info["rpc_url"]), chain.wait_durable


def open_ledger(home: Home, wallet: Wallet | None = None) -> Ledger:
    url, durable = rpc_url_of(home)
    book = AddressBook.load(home.address_book)
    cfg = home.load_config()
    if book.chain_id != cfg.chain_id and cfg.rpc_url:
        raise ConfigError(
            f"the address book is for chain {book.chain_id}, config says {cfg.chain_id}"
        )
    return Ledger(url, book, signer=wallet, durable=durable)


def open_indexer(home: Home, ledger: Ledger) -> Indexer:
    cfg = home.load_config()
    url = cfg.indexer_url or f"sqlite:///{home.index_db}"
    return Indexer(ledger, url, confirmations=cfg.confirmations)


def bootstrap_local(home: Home, wallet: Wallet, *, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """Start the embedded chain, fund, deploy (once), register and admit the home wallet."""
    chain = LocalChain(home.chain_dir)
    status = chain.up(port=port)
    assert status.rpc_url is not None
    with Rpc(status.rpc_url) as rpc:
        balance = int(rpc.call("eth_getBalance", wallet.address, "latest"), 16)
        if balance < LOCAL_FUNDS // 2:
            rpc.call("anvil_setBalance", wallet.address, hex(LOCAL_FUNDS))
        book, deployed = ensure_deployed(TxSender(rpc, wallet), home.address_book)
    ledger = Ledger(status.rpc_url, book, signer=wallet, durable=chain.wait_durable)
    try:
        key = wallet.encryption_public_key
        if (
            key.suite == "x25519"
            and ledger.registry.encryption_key(wallet.address) != key.to_bytes()
        ):
            ledger.registry.register(key.to_bytes(), "")
        wanted = Role.GATEWAY | Role.PROVIDER
        if ledger.registry.roles(wallet.address) & wanted != wanted:
            ledger.registry.admit(wallet.address, wanted)
    finally:
        ledger.close()
    return {
        "rpc_url": status.rpc_url,
        "chain_id": book.chain_id,
        "deployed_now": deployed,
        "contracts": book.contracts,
        "pid": status.pid,
        "data": status.data,
    }
