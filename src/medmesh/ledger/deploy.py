"""Deploy the medmesh contracts once and remember where they are (the address book).

``addresses.json`` in the home folder::

    {"chain_id": 31337, "genesis": "0x…", "block": 12 (where deployment began), "deployer": "0x…",
     "fingerprint": "…", "contracts": {"Registry": "0x…", "Records": "0x…", …}}

:func:`ensure_deployed` reuses the book when it still describes the chain (same chain id,
code at every address) and deploys otherwise, so ``make up`` deploys on
the first start and reuses the contracts ever after. Changed contract sources (another
fingerprint) are deployed afresh: on the local chain that is what a developer wants; on a
shared chain, deployment is a governance decision and the book is distributed, not rebuilt. Deployment order: Registry, Records,
Consent (which needs both), then ``Records.set_consent``, then HealthToken.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from medmesh.errors import ConfigError, LedgerError
from medmesh.ledger import artifacts
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import Call, TxSender

__all__ = ["BREAK_GLASS_SECONDS", "AddressBook", "deploy", "ensure_deployed"]

BREAK_GLASS_SECONDS: Final = 4 * 3600
INITIAL_SUPPLY: Final = 100_000_000 * 10**18


@dataclass(frozen=True)
class AddressBook:
    """Where the contracts live on one chain."""

    chain_id: int
    genesis: str
    block: int
    deployer: str
    fingerprint: str
    contracts: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "genesis": self.genesis,
            "block": self.block,
            "deployer": self.deployer,
            "fingerprint": self.fingerprint,
            "contracts": dict(self.contracts),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AddressBook:
        try:
            return cls(
                chain_id=int(raw["chain_id"]),
                genesis=str(raw["genesis"]),
                block=int(raw["block"]),
                deployer=str(raw["deployer"]),
                fingerprint=str(raw.get("fingerprint", "")),
                contracts={str(k): str(v) for k, v in raw["contracts"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("malformed address book") from exc

    @classmethod
    def load(cls, path: Path) -> AddressBook:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no address book at {path}: deploy first (`medmesh chain up`)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the address book {path}") from exc
        return cls.from_json(raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    def describes(self, rpc: Rpc) -> bool:
        """True if this book matches the chain behind ``rpc`` (and its code is there).

        Not by the genesis hash: Anvil (1.7.1) makes a new genesis block (another timestamp)
        at every start from a saved state and keeps all of them in its dump, so block 0 of a
        chain restarted twice or more is one of those, at random; the chain id and the code at
        every address decide.
        """
        if int(rpc.call("eth_chainId"), 16) != self.chain_id:
            return False
        codes = rpc.batch([("eth_getCode", [a, "latest"]) for a in self.contracts.values()])
        return all(isinstance(c, str) and len(c) > 2 for c in codes)


def deploy(
    sender: TxSender,
    *,
    governance_key: bytes = b"\0" * 32,
    break_glass_seconds: int = BREAK_GLASS_SECONDS,
) -> AddressBook:
    """Deploy all medmesh contracts from ``sender`` (who becomes governance)."""
    built = artifacts.load_all()
    rpc = sender.rpc
    first_block = int(rpc.call("eth_blockNumber"), 16)  # events before this cannot be ours

    def _deploy(name: str, types: list[str], args: list[Any]) -> str:
        receipt = sender.deploy(built[name].bytecode, abi_encode(types, args))
        if receipt.status != 1 or not receipt.contract_address:
            raise LedgerError(f"deploying {name} failed in {receipt.tx_hash}")
        return receipt.contract_address

    registry = _deploy("Registry", ["bytes32", "string"], [governance_key, ""])
    records = _deploy("Records", ["address"], [registry])
    consent = _deploy(
        "Consent", ["address", "address", "uint256"], [registry, records, break_glass_seconds]
    )
    selector = keccak(text="set_consent(address)")[:4]
    sender.transact(
        Call(records, selector + abi_encode(["address"], [consent]), label="set_consent")
    )
    token = _deploy("HealthToken", ["uint256"], [INITIAL_SUPPLY])
    genesis = rpc.call("eth_getBlockByNumber", "0x0", False)
    return AddressBook(
        chain_id=sender.chain_id,
        genesis=genesis["hash"],
        block=first_block,
        deployer=sender.address,
        fingerprint=artifacts.fingerprint(),
        contracts={
            "Registry": registry,
            "Records": records,
            "Consent": consent,
            "HealthToken": token,
        },
    )


def ensure_deployed(sender: TxSender, path: Path, **kwargs: Any) -> tuple[AddressBook, bool]:
    """The address book at ``path`` if it still fits the chain, else a fresh deployment.

    Returns (book, deployed_now).
    """
    try:
        book = AddressBook.load(path)
    except ConfigError:
        book = None
    if (
        book is not None
        and book.fingerprint == artifacts.fingerprint()
        and book.describes(sender.rpc)
    ):
        return book, False
    book = deploy(sender, **kwargs)
    book.save(path)
    return book, True
