"""The ledger client against a real Anvil: typed errors, and pipelined batches of transactions.

One chain is shared by the module; every test uses fresh wallets, so nonces start at 0.
The last test stops interval mining for a while (see ``helpers.mining_paused``).
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from medmesh.daemons import free_port
from medmesh.errors import OutOfGasError, RevertError, RpcUnavailableError, WrongChainError
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Scope
from medmesh.ledger.rpc import Rpc, RpcCallError
from medmesh.ledger.tx import TxSender
from tests.integration.ledger.helpers import (
    HOUR,
    Net,
    block_number,
    mining_paused,
    nonce,
    wait_until,
)

pytestmark = pytest.mark.slow


def _grant_of(rpc: Rpc, ledger: Ledger, patient: str, grantees: list[str], scope: Scope) -> list:
    """``Consent.grant_of`` for many grantees in one JSON-RPC batch: [(purposes, expiry)]."""
    consent = ledger.consent
    answers = rpc.batch(
        [
            (
                "eth_call",
                [
                    {
                        "to": consent.address,
                        "data": "0x" + consent.call_data("grant_of", patient, g, scope.word).hex(),
                    },
                    "latest",
                ],
            )
            for g in grantees
        ]
    )
    return [tuple(abi_decode(["uint256", "uint256"], bytes.fromhex(a[2:]))) for a in answers]


def test_revert_reason_reaches_the_caller_and_nothing_is_sent(net: Net) -> None:
    patient, doctor = net.wallets(2)
    ledger = net.ledger(patient)
    rpc = net.rpc()
    assert nonce(rpc, patient.address) == 0

    with pytest.raises(RevertError) as info:
        ledger.consent.revoke(doctor.address, Scope.all())
    assert info.value.reason == "consent: no such grant"
    assert str(info.value) == "revoke reverted: consent: no such grant"
    assert info.value.code == "reverted"

    # caught at estimation: no transaction left the client, even after blocks went by
    start = block_number(rpc)
    wait_until(lambda: block_number(rpc) >= start + 2, 10.0, "two more blocks")
    assert nonce(rpc, patient.address, "pending") == 0
    assert nonce(rpc, patient.address, "latest") == 0

    # and the client's nonce count did not move: the next transaction takes nonce 0
    expiry = int(time.time()) + HOUR
    receipt = ledger.consent.grant(doctor.address, Scope.all(), Purpose.TREATMENT, expiry)
    assert receipt.status == 1
    assert int(rpc.call("eth_getTransactionByHash", receipt.tx_hash)["nonce"], 16) == 0
    assert ledger.consent.grant_of(patient.address, doctor.address, Scope.all()) == (
        Purpose.TREATMENT,
        expiry,
    )


def test_wrong_chain_id(net: Net) -> None:
    (wallet,) = net.wallets(1)
    chain_id = net.book.chain_id
    assert chain_id == 31337
    other = dataclasses.replace(net.book, chain_id=chain_id + 1)
    with pytest.raises(WrongChainError) as info:
        Ledger(net.url, other, signer=wallet)
    assert str(info.value) == (
        f"{net.url} serves chain 31337, but the address book is for chain 31338"
    )
    assert info.value.code == "wrong_chain"

    rpc = net.rpc()
    with pytest.raises(WrongChainError) as info:
        TxSender(rpc, wallet, chain_id=1)
    assert str(info.value) == f"{net.url} serves chain 31337, but chain 1 is configured"
    assert TxSender(rpc, wallet, chain_id=31337).chain_id == 31337
    assert nonce(rpc, wallet.address) == 0  # nothing was sent


def test_unreachable_rpc_fails_fast_and_names_the_url(net: Net) -> None:
    port = free_port(socket.SOCK_STREAM)  # bound and released: nothing listens there
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(RpcUnavailableError) as info:
        Ledger(url, net.book)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert str(info.value) == (
        f"the chain at {url} does not answer (ConnectionError); "
        "is it running? (`medmesh chain status`)"
    )
    assert info.value.code == "rpc_unavailable"


def test_out_of_gas(net: Net) -> None:
    patient, doctor = net.wallets(2)
    ledger = net.ledger(patient)
    assert ledger.sender is not None
    rpc = net.rpc()
    expiry = int(time.time()) + HOUR
    call = ledger.consent.grant_call(doctor.address, Scope.all(), Purpose.TREATMENT, expiry)
    starved = dataclasses.replace(call, gas=25_000)

    with pytest.raises(OutOfGasError) as info:
        ledger.sender.transact(starved)
    match = re.fullmatch(r"grant ran out of gas \(25000 gas\) in (0x[0-9a-f]{64})", str(info.value))
    assert match is not None, str(info.value)
    receipt = rpc.call("eth_getTransactionReceipt", match[1])
    assert (receipt["status"], int(receipt["gasUsed"], 16)) == ("0x0", 25_000)
    assert receipt["logs"] == []
    # mined (the nonce is used), but nothing was granted
    assert nonce(rpc, patient.address, "latest") == 1
    assert ledger.consent.grant_of(patient.address, doctor.address, Scope.all()) == (
        Purpose(0),
        0,
    )


def test_send_many_pipelines_200_grants(net: Net) -> None:
    (patient,) = net.wallets(1)
    ledger = net.ledger(patient)
    assert ledger.sender is not None
    rpc = net.rpc()
    grantees = [to_checksum_address(keccak(b"grantee %d" % i)[:20]) for i in range(200)]
    expiry = int(time.time()) + HOUR
    calls = [
        ledger.consent.grant_call(g, Scope.all(), Purpose.TREATMENT, expiry + i)
        for i, g in enumerate(grantees)
    ]

    hashes = ledger.sender.send_many(calls)
    assert len(set(hashes)) == 200
    receipts = ledger.sender.wait(hashes, calls=calls)
    assert [r.status for r in receipts] == [1] * 200
    assert [r.tx_hash for r in receipts] == hashes
    txs = rpc.batch([("eth_getTransactionByHash", [h]) for h in hashes])
    assert [int(t["nonce"], 16) for t in txs] == list(range(200))
    assert nonce(rpc, patient.address, "latest") == 200
    # every grant is on the chain, each with its own expiry
    assert _grant_of(rpc, ledger, patient.address, grantees, Scope.all()) == [
        (int(Purpose.TREATMENT), expiry + i) for i in range(200)
    ]


def test_reverting_call_in_a_batch_sends_nothing(net: Net) -> None:
    patient, doctor = net.wallets(2)
    ledger = net.ledger(patient)
    rpc = net.rpc()
    expiry = int(time.time()) + HOUR
    first = ledger.consent.grant_call(doctor.address, Scope.all(), Purpose.TREATMENT, expiry)
    bad = ledger.consent.tx("revoke", doctor.address, Scope.kind("document").word)
    last = ledger.consent.grant_call(
        doctor.address, Scope.kind("dicom:study"), Purpose.RESEARCH, expiry
    )

    start = block_number(rpc)
    with pytest.raises(RevertError) as info:
        ledger.transact_many([first, bad, last])
    assert info.value.reason == "consent: no such grant"
    assert str(info.value) == "revoke reverted: consent: no such grant"

    wait_until(lambda: block_number(rpc) >= start + 2, 10.0, "two more blocks")
    assert nonce(rpc, patient.address, "pending") == 0
    p, d = patient.address, doctor.address
    assert ledger.consent.grant_of(p, d, Scope.all()) == (Purpose(0), 0)
    assert ledger.consent.grant_of(p, d, Scope.kind("dicom:study")) == (Purpose(0), 0)

    # without the bad call the same batch goes through, from nonce 0
    receipts = ledger.transact_many([first, last])
    assert [r.status for r in receipts] == [1, 1]
    txs = rpc.batch([("eth_getTransactionByHash", [r.tx_hash]) for r in receipts])
    assert [int(t["nonce"], 16) for t in txs] == [0, 1]
    assert ledger.consent.grant_of(p, d, Scope.all()) == (Purpose.TREATMENT, expiry)
    assert ledger.consent.grant_of(p, d, Scope.kind("dicom:study")) == (Purpose.RESEARCH, expiry)


class NoDebugRpc(Rpc):
    """An endpoint refusing ``debug_*``, as Besu and geth do unless the namespace is enabled."""

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        sent = [("eth_chainId", []) if m.startswith("debug_") else (m, p) for m, p in calls]
        answers = super().batch(sent)
        return [
            RpcCallError(-32601, f"the method {m} does not exist/is not available")
            if m.startswith("debug_")
            else answer
            for (m, _), answer in zip(calls, answers, strict=True)
        ]


@pytest.mark.parametrize("debug", [True, False], ids=["traced", "replayed"])
def test_revert_reason_of_a_mined_call(net: Net, debug: bool) -> None:
    patient, doctor = net.wallets(2)
    ledger = net.ledger(patient)
    rpc = NoDebugRpc(net.url) if not debug else net.rpc()
    net.clients.append(rpc)
    sender = TxSender(rpc, patient)
    # a gas limit skips estimation, which would catch the revert before sending
    revoke = dataclasses.replace(
        ledger.consent.tx("revoke", doctor.address, Scope.all().word), gas=200_000
    )

    with pytest.raises(RevertError) as info:
        sender.transact(revoke)
    match = re.fullmatch(
        r"revoke reverted in (0x[0-9a-f]{64}): consent: no such grant", str(info.value)
    )
    assert match is not None, str(info.value)
    assert info.value.reason == "consent: no such grant"
    assert rpc.call("eth_getTransactionReceipt", match[1])["status"] == "0x0"
    assert nonce(rpc, patient.address, "latest") == 1  # mined: the nonce is used


def test_revert_reason_of_a_call_failing_after_another_in_the_same_block(net: Net) -> None:
    patient, doctor = net.wallets(2)
    ledger = net.ledger(patient)
    assert ledger.sender is not None
    ledger.consent.grant(doctor.address, Scope.all(), Purpose.TREATMENT, int(time.time()) + HOUR)
    revoke = ledger.consent.tx("revoke", doctor.address, Scope.all().word)

    with mining_paused(net.admin):
        hashes = ledger.sender.send_many([revoke, revoke])  # both estimate fine: the grant exists
        net.admin.call("evm_mine")
        receipts = ledger.sender.wait(hashes, check=False)
    if [(r.status, r.block_number) for r in receipts] != [
        (1, receipts[0].block_number),
        (0, receipts[0].block_number),
    ]:
        pytest.fail(
            f"expected the first revoke to pass and the second to fail in one block: {receipts}"
        )

    with pytest.raises(RevertError) as info:
        ledger.sender.wait(hashes, calls=[revoke, revoke])
    assert info.value.reason == "consent: no such grant"  # traced: a replay would find none
    assert str(info.value) == f"revoke reverted in {hashes[1]}: consent: no such grant"


def test_two_senders_of_one_account_never_reuse_a_nonce(net: Net) -> None:
    """Two processes signing as one account (a gateway's access log and a command run with
    the same home) each count nonces locally; the shared account lock and the node's pending
    count keep them apart. Two senders in one process stand in for the two processes."""
    (patient,) = net.wallets(1)
    rpc = net.rpc()
    first, second = net.ledger(patient), net.ledger(patient)
    assert first.sender is not None and second.sender is not None
    assert first.sender is not second.sender
    expiry = int(time.time()) + HOUR
    hashes = []
    for i in range(6):  # interleaved: each sender's local count goes stale every time
        ledger = first if i % 2 == 0 else second
        grantee = to_checksum_address(keccak(b"interleaved %d" % i)[:20])
        call = ledger.consent.grant_call(grantee, Scope.all(), Purpose.TREATMENT, expiry)
        hashes.extend(ledger.sender.send_many([call, call]))
    receipts = first.sender.wait(hashes)
    assert [r.status for r in receipts] == [1] * 12
    txs = rpc.batch([("eth_getTransactionByHash", [h]) for h in hashes])
    assert sorted(int(t["nonce"], 16) for t in txs) == list(range(12))


def test_encryption_keys_of_many_accounts_in_one_batch(net: Net) -> None:
    from medmesh.consent.sharing import RecordKeeper
    from medmesh.errors import NotFoundError

    a, b, stranger = net.wallets(3)
    for w in (a, b):
        net.ledger(w).registry.register(w.encryption_public_key.to_bytes())
    reader = net.ledger()
    got = reader.registry.encryption_keys([a.address, stranger.address, b.address])
    assert got == [
        (a.encryption_public_key.to_bytes(), True),
        (bytes(32), False),
        (b.encryption_public_key.to_bytes(), True),
    ]
    assert reader.registry.encryption_keys([]) == []
    keeper = RecordKeeper(a, reader, None, None)  # type: ignore[arg-type]
    keys = keeper.encryption_keys_of([b.address, a.address, b.address])
    assert {k: v.to_bytes() for k, v in keys.items()} == {
        b.address: b.encryption_public_key.to_bytes(),
        a.address: a.encryption_public_key.to_bytes(),
    }
    with pytest.raises(NotFoundError, match=to_checksum_address(stranger.address)):
        keeper.encryption_keys_of([a.address, stranger.address])
