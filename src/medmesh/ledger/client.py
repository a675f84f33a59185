"""The ledger as one object: the four contracts on one chain, read and written by one wallet.

:class:`Ledger` binds an RPC endpoint, an address book and (optionally) a wallet's key. Writes
wait until mined; on the embedded local chain they also wait until the block is saved to disk
(``durable``), so whatever a command reports as done survives Anvil being killed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from medmesh.errors import InvalidInputError, WrongChainError
from medmesh.ledger import artifacts
from medmesh.ledger.contracts import (
    ConsentContract,
    RecordsContract,
    RegistryContract,
    TokenContract,
)
from medmesh.ledger.deploy import AddressBook
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import Call, Receipt, Signer, TxSender

__all__ = ["Ledger"]


class Ledger:
    """The medmesh contracts on one chain."""

    def __init__(
        self,
        rpc_url: str,
        book: AddressBook,
        *,
        signer: Signer | None = None,
        durable: Callable[[int], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.rpc = Rpc(rpc_url, timeout=timeout)
        self.book = book
        self._durable = durable
        chain_id = int(self.rpc.call("eth_chainId"), 16)
        if chain_id != book.chain_id:
            raise WrongChainError(
                f"{rpc_url} serves chain {chain_id}, but the address book is for chain {book.chain_id}"
            )
        self.chain_id = chain_id
        self.sender = TxSender(self.rpc, signer, chain_id=chain_id) if signer else None
        built = artifacts.load_all()
        hook = self._after_mined

        def _make(cls: type, name: str):  # type: ignore[no-untyped-def]
            return cls(built[name], book.contracts[name], self.rpc, self.sender, hook)

        self.registry: RegistryContract = _make(RegistryContract, "Registry")
        self.records: RecordsContract = _make(RecordsContract, "Records")
        self.consent: ConsentContract = _make(ConsentContract, "Consent")
        self.token: TokenContract = _make(TokenContract, "HealthToken")

    @property
    def address(self) -> str | None:
        return self.sender.address if self.sender else None

    def _after_mined(self, receipts: Sequence[Receipt]) -> None:
        if receipts:
            self.make_durable(max(r.block_number for r in receipts))

    def make_durable(self, block: int) -> None:
        """Return once ``block`` is durable: saved to disk on the local chain (nothing to
        wait for on a chain that persists each block itself)."""
        if self._durable:
            self._durable(block)

    def transact_many(self, calls: Sequence[Call], *, timeout: float = 60.0) -> list[Receipt]:
        """Send many calls in one pipelined batch and wait for all (and their durability)."""
        if self.sender is None:
            raise InvalidInputError("this ledger client has no wallet: it can only read")
        if not calls:
            return []
        receipts = self.sender.transact_many(calls, timeout=timeout)
        self._after_mined(receipts)
        return receipts

    def block_number(self) -> int:
        return int(self.rpc.call("eth_blockNumber"), 16)

    def close(self) -> None:
        self.rpc.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(
        cls,
        rpc_url: str,
        book_path: Path,
        *,
        signer: Signer | None = None,
        durable: Callable[[int], None] | None = None,
    ) -> Ledger:
        return cls(rpc_url, AddressBook.load(book_path), signer=signer, durable=durable)
