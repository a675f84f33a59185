"""The eth_abi event codec decodes every medmesh event exactly as web3.py does."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from medmesh.ledger.artifacts import load_all
from medmesh.ledger.events import EventCodec, checksum

ARTIFACTS = load_all()
EVENTS = [
    (name, entry)
    for name, artifact in sorted(ARTIFACTS.items())
    for entry in artifact.abi
    if entry.get("type") == "event"
]


def _values(abi_type: str) -> st.SearchStrategy[Any]:
    if abi_type == "address":
        return st.binary(min_size=20, max_size=20).map(lambda b: checksum("0x" + b.hex()))
    if abi_type == "bool":
        return st.booleans()
    if abi_type.startswith("uint"):
        return st.integers(0, 2 ** int(abi_type[4:] or 256) - 1)
    if abi_type.startswith("int"):
        bits = int(abi_type[3:] or 256)
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if abi_type.startswith("bytes") and abi_type != "bytes":
        size = int(abi_type[5:])
        return st.binary(min_size=size, max_size=size)
    if abi_type == "bytes":
        return st.binary(max_size=100)
    if abi_type == "string":
        return st.text(max_size=60)
    raise AssertionError(f"add a strategy for {abi_type}")


@st.composite
def _log(draw: st.DrawFn, entry: dict[str, Any]) -> dict[str, Any]:
    inputs = entry["inputs"]
    values = {i["name"]: draw(_values(i["type"])) for i in inputs}
    codec = EventCodec([entry])
    topics = [codec.topic(entry["name"])]
    for i in inputs:
        if i["indexed"]:
            topics.append("0x" + abi_encode([i["type"]], [values[i["name"]]]).hex())
    data = abi_encode(
        [i["type"] for i in inputs if not i["indexed"]],
        [values[i["name"]] for i in inputs if not i["indexed"]],
    )
    return {
        "address": "0x" + "11" * 20, "topics": topics, "data": "0x" + data.hex(),
        "blockNumber": "0x10", "logIndex": "0x0", "transactionIndex": "0x0",
        "transactionHash": "0x" + "22" * 32, "blockHash": "0x" + "33" * 32, "removed": False,
    }  # fmt: skip


def test_every_contract_has_events() -> None:
    assert {name for name, _ in EVENTS} >= {"Registry", "Records", "Consent", "HealthToken"}


@pytest.mark.parametrize(("contract", "entry"), EVENTS, ids=[f"{c}.{e['name']}" for c, e in EVENTS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_codec_matches_web3(contract: str, entry: dict[str, Any], data: st.DataObject) -> None:
    log = data.draw(_log(entry))
    codec = EventCodec(ARTIFACTS[contract].abi)
    reference = Web3().eth.contract(abi=ARTIFACTS[contract].abi)
    expected = dict(getattr(reference.events, entry["name"])().process_log(log)["args"])
    decoded = codec.decode(log)
    assert decoded is not None
    name, args = decoded
    assert name == entry["name"]
    assert args == {k: (bytes(v) if isinstance(v, bytes) else v) for k, v in expected.items()}


def test_unknown_and_mismatched_logs_are_not_decoded() -> None:
    codec = EventCodec(ARTIFACTS["Consent"].abi)
    assert codec.decode({"topics": [], "data": "0x"}) is None
    assert codec.decode({"topics": ["0x" + "ab" * 32], "data": "0x"}) is None
    # the right signature with the wrong number of indexed topics is another event
    assert codec.decode({"topics": [codec.topic("AccessLogged")], "data": "0x"}) is None


def test_truncated_data_is_an_error() -> None:
    codec = EventCodec(ARTIFACTS["Consent"].abi)
    spec = codec.by_name["AccessLogged"]
    topics = [codec.topic("AccessLogged")] + ["0x" + "00" * 32] * len(spec.indexed)
    with pytest.raises(DecodingError):
        codec.decode({"topics": topics, "data": "0x" + "00" * 7})


def _word(n: int) -> bytes:
    return n.to_bytes(32, "big")


_ANCHORED_DATA = [  # (bytes4 kind, address author, bytes cid): well formed, then broken
    ("kind padding", b"\x01\x02\x03\x04" + b"\x01" * 28 + _word(0) + _word(96) + _word(0)),
    ("address padding", b"\x01\x02\x03\x04" + bytes(28) + b"\xff" * 32 + _word(96) + _word(0)),
    ("offset past the end", b"\x01\x02\x03\x04" + bytes(28) + _word(0) + _word(4096) + _word(0)),
    ("length past the end", b"\x01\x02\x03\x04" + bytes(28) + _word(0) + _word(96) + _word(33)),
    (
        "bytes padding",
        b"\x01\x02\x03\x04" + bytes(28) + _word(0) + _word(96) + _word(1) + b"\x07" * 32,
    ),
    ("too short", b"\x01\x02\x03\x04" + bytes(28)),
]


@pytest.mark.parametrize(("case", "data"), _ANCHORED_DATA, ids=[c for c, _ in _ANCHORED_DATA])
def test_malformed_event_data_is_refused_as_eth_abi_refuses_it(case: str, data: bytes) -> None:
    """Static words and bytes are decoded without eth_abi; what it would refuse is refused."""
    codec = EventCodec(ARTIFACTS["Records"].abi)
    spec = codec.by_name["Anchored"]
    topics = [codec.topic("Anchored")] + ["0x" + "00" * 32] * len(spec.indexed)
    with pytest.raises(DecodingError):
        abi_decode([t for _, t in spec.data], data)
    with pytest.raises(DecodingError):
        codec.decode({"topics": topics, "data": "0x" + data.hex()})


def test_malformed_topics_are_refused() -> None:
    codec = EventCodec(ARTIFACTS["Records"].abi)
    good = codec.decode({
        "topics": [codec.topic("Erased"), "0x" + "00" * 12 + "ab" * 20, "0x" + "cd" * 32],
        "data": "0x",
    })  # fmt: skip
    assert good is not None and good[1]["patient"] == checksum("0x" + "ab" * 20)
    with pytest.raises(DecodingError):  # an address with its upper bytes set
        codec.decode(
            {"topics": [codec.topic("Erased"), "0x" + "ff" * 32, "0x" + "cd" * 32], "data": "0x"}
        )
