"""Contract.call_data encodes calls itself (a selector cache and eth_abi) rather than through
web3's per-call ABI lookup: for every function of every medmesh contract, and arguments drawn
by eth_abi's own strategies, it must give the same bytes as web3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi.exceptions import EncodingError
from eth_abi.tools import get_abi_strategy
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmesh.ledger import artifacts
from medmesh.ledger.contracts import Contract
from medmesh.ledger.rpc import Rpc

ARTIFACTS = artifacts.load_all()
FUNCTIONS = [
    (name, e)
    for name, art in sorted(ARTIFACTS.items())
    for e in art.abi
    if e.get("type") == "function"
]


@pytest.fixture(scope="module")
def contracts() -> Iterator[dict[str, Contract]]:
    rpc = Rpc("http://127.0.0.1:9")  # never called: encoding is offline
    yield {name: Contract(art, "0x" + "01" * 20, rpc) for name, art in ARTIFACTS.items()}
    rpc.close()


def _web3_ready(value: Any, type_: str) -> Any:
    """eth_abi's strategies draw lowercase addresses; web3 wants them checksummed."""
    if type_ == "address":
        return to_checksum_address(value)
    if type_.endswith("[]"):
        return [_web3_ready(v, type_[:-2]) for v in value]
    if type_.startswith("("):
        inner = _split(type_[1:-1])
        return tuple(_web3_ready(v, t) for v, t in zip(value, inner, strict=True))
    return value


def _split(types: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(types):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(types[start:i])
            start = i + 1
    return [*out, types[start:]] if types else out


@pytest.mark.parametrize(
    ("contract", "fn"), FUNCTIONS, ids=[f"{c}.{e['name']}" for c, e in FUNCTIONS]
)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_call_data_matches_web3(
    contracts: dict[str, Contract], contract: str, fn: dict[str, Any], data: st.DataObject
) -> None:
    types = [collapse_if_tuple(dict(i)) for i in fn["inputs"]]
    args = [_web3_ready(data.draw(get_abi_strategy(t)), t) for t in types]
    c = contracts[contract]
    expected = bytes.fromhex(c.web3.encode_abi(fn["name"], args=list(args))[2:])
    assert c.call_data(fn["name"], *args) == expected


def test_call_data_refuses_what_the_abi_refuses(contracts: dict[str, Contract]) -> None:
    registry = contracts["Registry"]
    with pytest.raises(EncodingError, match="cannot be encoded by AddressEncoder"):
        registry.call_data("is_registered", "not an address")
