"""Transactions signed locally, sent in pipelined batches, confirmed in batches.

A :class:`TxSender` counts one account's nonces locally, so hundreds of transactions can be in
flight from one client. Every batch is numbered and sent under a lock on the account that
all medmesh processes of this machine share (a gateway's access log and a command run with
the same home sign as one account), after reading the node's pending count: a sender never
reuses a nonce another process has just used. It signs with
``eth-account`` (fast with ``coincurve``), sends many raw transactions in one JSON-RPC batch and
polls their receipts in batches too. Compared with web3.py's ``transact()`` and receipt wait,
this removes about six requests per transaction, which is what lets one client confirm hundreds
of grants a second on a local chain.

Failures are typed and leave nothing half-done:

- a call that would revert is caught by gas estimation, before anything is sent
  (:class:`RevertError` with the contract's reason);
- a mined transaction that reverted raises :class:`RevertError` too, and one that used all its
  gas raises :class:`OutOfGasError`. The reason is recovered by tracing the transaction
  (``debug_traceTransaction``, which sees the state it ran on, earlier transactions of its
  block included), or, on nodes without ``debug_*``, by replaying it on the block before;
- a transaction not mined in time raises :class:`TransactionTimeoutError` (it may still be
  mined: the nonce stays used).
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from eth_account import Account
from eth_utils.address import to_checksum_address

from medmesh.errors import (
    LedgerError,
    OutOfGasError,
    RevertError,
    TransactionTimeoutError,
    WrongChainError,
)
from medmesh.ledger.rpc import Rpc, RpcCallError, decode_revert

__all__ = ["Call", "KeySigner", "Receipt", "Signer", "TxSender"]

GAS_MARGIN: Final = 1.25  # estimates can be low when state changes before mining
FEE_TTL: Final = 2.0  # seconds a fee quote is reused


class Signer(Protocol):
    """Whatever holds the key: a :class:`~medmesh.identity.Wallet`, or a :class:`KeySigner`."""

    @property
    def address(self) -> str: ...

    def sign_transaction(self, tx: dict[str, Any]) -> bytes: ...


class KeySigner:
    """A signer from a bare private key (deployment scripts, benchmarks, tests)."""

    def __init__(self, private_key: bytes) -> None:
        self._account = Account.from_key(private_key)

    @property
    def address(self) -> str:
        return str(self._account.address)

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        return bytes(self._account.sign_transaction(tx).raw_transaction)


@dataclass(frozen=True)
class Call:
    """A contract call to send as a transaction."""

    to: str | None  # None: create a contract from ``data``
    data: bytes
    gas: int | None = None  # None: estimate
    value: int = 0
    label: str = ""  # the function name, for error messages


@dataclass(frozen=True)
class Receipt:
    """A mined transaction."""

    tx_hash: str
    block_number: int
    gas_used: int
    status: int
    logs: list[dict[str, Any]] = field(repr=False)
    contract_address: str | None = None


def _parse_receipt(raw: dict[str, Any]) -> Receipt:
    return Receipt(
        tx_hash=raw["transactionHash"],
        block_number=int(raw["blockNumber"], 16),
        gas_used=int(raw["gasUsed"], 16),
        status=int(raw.get("status", "0x1"), 16),
        logs=raw.get("logs", []),
        contract_address=to_checksum_address(raw["contractAddress"])
        if raw.get("contractAddress")
        else None,
    )


class TxSender:
    """Sends transactions from one locally held key."""

    def __init__(self, rpc: Rpc, signer: Signer, *, chain_id: int | None = None) -> None:
        self.rpc = rpc
        self._signer = signer
        self.address: str = signer.address
        actual = int(rpc.call("eth_chainId"), 16)
        if chain_id is not None and actual != chain_id:
            raise WrongChainError(
                f"{rpc.url} serves chain {actual}, but chain {chain_id} is configured"
            )
        self.chain_id = actual
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._fees: tuple[float, dict[str, int]] | None = None

    # -- nonces and fees -------------------------------------------------------------------

    def _take_nonces(self, count: int) -> int:
        """The first of ``count`` nonces (call with the account lock held): past both what
        this sender has used and what the node has seen from anyone signing as the account."""
        pending = int(self.rpc.call("eth_getTransactionCount", self.address, "pending"), 16)
        with self._lock:
            first = pending if self._nonce is None else max(self._nonce, pending)
            self._nonce = first + count
            return first

    def resync(self) -> None:
        """Forget the local nonce (after a failed send) and read it again next time."""
        with self._lock:
            self._nonce = None

    def _fee_fields(self) -> dict[str, int]:
        now = time.monotonic()
        if self._fees and now - self._fees[0] < FEE_TTL:
            return self._fees[1]
        block, tip = self.rpc.batch(
            [("eth_getBlockByNumber", ["latest", False]), ("eth_maxPriorityFeePerGas", [])]
        )
        if isinstance(block, dict) and block.get("baseFeePerGas") is not None:
            base = int(block["baseFeePerGas"], 16)
            priority = int(tip, 16) if isinstance(tip, str) else 0
            fees = {"maxFeePerGas": 2 * base + priority, "maxPriorityFeePerGas": priority}
        else:  # a chain without EIP-1559 (e.g. a Besu network with free gas)
            fees = {"gasPrice": int(self.rpc.call("eth_gasPrice"), 16)}
        self._fees = (now, fees)
        return fees

    # -- sending -----------------------------------------------------------------------------

    def _fields(self, call: Call, *, json: bool = False) -> dict[str, Any]:
        """The call's transaction fields, for signing or (``json``) for eth_estimateGas."""
        fields: dict[str, Any] = {"data": call.data, "value": call.value}
        if json:
            fields = {
                "from": self.address,
                "data": "0x" + call.data.hex(),
                "value": hex(call.value),
            }
        if call.to is not None:
            fields["to"] = to_checksum_address(call.to)
        return fields

    def estimate(self, calls: Sequence[Call]) -> list[int]:
        """Gas limits for ``calls`` (estimated in one batch); raises the first revert."""
        todo = [i for i, c in enumerate(calls) if c.gas is None]
        answers = self.rpc.batch(
            [("eth_estimateGas", [self._fields(calls[i], json=True)]) for i in todo]
        )
        limits = [c.gas or 0 for c in calls]
        for i, answer in zip(todo, answers, strict=True):
            if isinstance(answer, RpcCallError):
                error = answer.to_exception()
                if isinstance(error, RevertError) and calls[i].label:
                    raise RevertError(error.reason, f"{calls[i].label} {error.message}") from answer
                raise error from answer
            limits[i] = int(int(answer, 16) * GAS_MARGIN) + 5_000
        return limits

    def send_many(self, calls: Sequence[Call]) -> list[str]:
        """Sign and send ``calls`` in order, in one batch; returns their transaction hashes.

        Every call is estimated first, so a call that would revert raises before any is sent.
        """
        if not calls:
            return []
        limits = self.estimate(calls)
        fees = self._fee_fields()
        with _account_lock(self.chain_id, self.address):
            first = self._take_nonces(len(calls))
            raws: list[str] = []
            for offset, (c, gas) in enumerate(zip(calls, limits, strict=True)):
                tx = {
                    **self._fields(c),
                    "chainId": self.chain_id,
                    "nonce": first + offset,
                    "gas": gas,
                    **fees,
                }
                raws.append("0x" + self._signer.sign_transaction(tx).hex())
            answers = self.rpc.batch([("eth_sendRawTransaction", [raw]) for raw in raws])
        hashes: list[str] = []
        for answer in answers:
            if isinstance(answer, RpcCallError):
                self.resync()  # later nonces are now gaps: recount from the node
                raise answer.to_exception() from answer
            hashes.append(str(answer))
        return hashes

    def send(self, call: Call) -> str:
        return self.send_many([call])[0]

    def deploy(
        self, bytecode: bytes, constructor_args: bytes = b"", gas: int | None = None
    ) -> Receipt:
        """Deploy a contract and wait for it."""
        return self.transact(Call(None, bytecode + constructor_args, gas=gas, label="deploy"))

    # -- confirming --------------------------------------------------------------------------

    def wait(
        self,
        tx_hashes: Sequence[str],
        *,
        timeout: float = 60.0,
        calls: Sequence[Call] | None = None,
        check: bool = True,
    ) -> list[Receipt]:
        """Receipts of ``tx_hashes`` once mined; with ``check``, a failed one raises."""
        pending = dict.fromkeys(tx_hashes)
        receipts: dict[str, Receipt] = {}
        deadline = time.monotonic() + timeout
        poll = 0.02
        while pending:
            answers = self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in pending])
            for h, answer in zip(list(pending), answers, strict=True):
                if isinstance(answer, dict):
                    receipts[h] = _parse_receipt(answer)
                    del pending[h]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TransactionTimeoutError(
                    f"{len(pending)} transaction(s) not mined after {timeout:.0f} s "
                    "(they may still be mined; their nonces are used)"
                )
            time.sleep(poll)
            poll = min(poll * 1.5, 0.25)
        ordered = [receipts[h] for h in tx_hashes]
        if check:
            for i, receipt in enumerate(ordered):
                if receipt.status != 1:
                    raise self._failure(receipt, calls[i] if calls else None)
        return ordered

    def transact(self, call: Call, *, timeout: float = 60.0) -> Receipt:
        """Send one call and wait for it to be mined."""
        (receipt,) = self.transact_many([call], timeout=timeout)
        return receipt

    def transact_many(self, calls: Sequence[Call], *, timeout: float = 60.0) -> list[Receipt]:
        """Send ``calls`` in one batch and wait for all of them."""
        return self.wait(self.send_many(calls), timeout=timeout, calls=calls)

    def _failure(self, receipt: Receipt, call: Call | None) -> LedgerError:
        label = f"{call.label} " if call and call.label else ""
        raw, trace = self.rpc.batch(
            [
                ("eth_getTransactionByHash", [receipt.tx_hash]),
                ("debug_traceTransaction", [receipt.tx_hash, {"tracer": "callTracer"}]),
            ]
        )
        if isinstance(raw, RpcCallError):
            raise raw.to_exception() from raw
        gas_limit = int(raw["gas"], 16) if raw else 0
        if gas_limit and receipt.gas_used >= gas_limit:
            return OutOfGasError(f"{label}ran out of gas ({gas_limit} gas) in {receipt.tx_hash}")
        if isinstance(trace, dict):
            reason = _traced_reason(trace)
        else:  # no debug_* on this node (Besu and geth may disable it): replay instead
            reason = self._replayed_reason(raw, receipt.block_number) if raw else None
        return RevertError(
            reason, f"{label}reverted in {receipt.tx_hash}" + (f": {reason}" if reason else "")
        )

    def _replayed_reason(self, raw: dict[str, Any], block_number: int) -> str | None:
        """The reason the transaction ``raw`` gives when called again on its block's parent.

        The parent's state is what the transaction ran on only if it came first in its block:
        one failing because of an earlier transaction of the same block replays fine here.
        """
        replay = {"from": raw["from"], "to": raw["to"], "data": raw["input"], "value": raw["value"]}
        answer = self.rpc.batch([("eth_call", [replay, hex(block_number - 1)])])[0]
        if isinstance(answer, RpcCallError):
            error = answer.to_exception()
            return error.reason if isinstance(error, RevertError) else None
        return None


def _traced_reason(trace: dict[str, Any]) -> str | None:
    """The revert reason in a ``callTracer`` trace of a failed transaction.

    The trace ran on the state the transaction really saw, earlier transactions of its block
    included. ``output`` holds the revert data (decoded like every other revert);
    ``revertReason`` is the node's own decoding of an ``Error(string)``, kept if ours has none.
    """
    output = trace.get("output")
    if isinstance(output, str) and output.startswith("0x"):
        try:
            reason = decode_revert(bytes.fromhex(output[2:]))
        except ValueError:  # not hex: fall through to the node's decoding
            reason = None
        if reason:
            return reason
    node_reason = trace.get("revertReason")
    return node_reason if isinstance(node_reason, str) and node_reason else None


@contextlib.contextmanager
def _account_lock(chain_id: int, address: str) -> Iterator[None]:
    """Exclusive use of ``address``'s nonces on ``chain_id`` among the processes (and
    threads) of this machine: an advisory ``flock`` on a file in the temporary folder."""
    folder = Path(tempfile.gettempdir()) / "medmesh-nonces"
    folder.mkdir(mode=0o700, exist_ok=True)
    with open(folder / f"{chain_id}-{address.lower()}.lock", "a+b") as fp:
        fcntl.flock(fp.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fp.fileno(), fcntl.LOCK_UN)
