"""The gateway's consent decision: one eth_call at the latest block per request, never cached."""

from __future__ import annotations

import os
from typing import Any

import pytest
from eth_utils.address import to_checksum_address

from medmesh.consent.gateway import Gateway
from medmesh.errors import RevertError
from medmesh.ledger.contracts import Purpose
from medmesh.ledger.rpc import RpcCallError
from tests.unit.consent.fakes import FakeLedger, FakeRpc

REQUESTER = "0x1111111111111111111111111111111111111111"
TRUE = "0x" + "00" * 31 + "01"
FALSE = "0x" + "00" * 32


def gateway_over(answer: Any) -> tuple[Gateway, FakeRpc, FakeLedger]:
    rpc = FakeRpc(answer)
    ledger = FakeLedger(rpc)
    gateway = Gateway(
        ledger,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,
        None,  # type: ignore[arg-type]
        domain="127.0.0.1:1",
        uri="http://127.0.0.1:1",
    )
    return gateway, rpc, ledger


def test_each_decision_is_one_eth_call_at_the_latest_block() -> None:
    answers = iter([TRUE, FALSE])
    gateway, rpc, ledger = gateway_over(
        lambda method, params: "0x10" if method == "eth_blockNumber" else next(answers)
    )
    record = os.urandom(32)

    first = gateway._decide(REQUESTER, record, Purpose.TREATMENT)
    second = gateway._decide(REQUESTER, record, Purpose.TREATMENT)  # e.g. revoked since

    assert (first, second) == ((True, 16), (False, 16))
    assert len(rpc.batches) == 2  # nothing cached
    expected = ledger.consent.call_data(
        "has_access", to_checksum_address(REQUESTER), record, int(Purpose.TREATMENT)
    )
    for batch in rpc.batches:
        assert batch[0] == ("eth_blockNumber", [])
        method, (call, tag) = batch[1]
        assert (method, tag) == ("eth_call", "latest")
        assert call == {"to": ledger.consent.address, "data": "0x" + expected.hex()}


def test_a_refused_call_raises_the_typed_error() -> None:
    revert = "0x08c379a0" + (
        "20".rjust(64, "0") + "04".rjust(64, "0") + b"nope".hex().ljust(64, "0")
    )
    gateway, _, _ = gateway_over(
        lambda method, params: (
            "0x10" if method == "eth_blockNumber" else RpcCallError(3, "execution reverted", revert)
        )
    )

    with pytest.raises(RevertError) as caught:
        gateway._decide(REQUESTER, os.urandom(32), Purpose.TREATMENT)
    assert caught.value.reason == "nope"
