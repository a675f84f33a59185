"""Contract events decoded straight from their ABI, fast enough for the hot path.

web3.py's ``ContractEvent.process_log`` rebuilds its matching tables and checksums every
address on each call: about 0.33 ms per log. The consent gateway's index follower sees one
``AccessLogged`` per allowed request, so at a few hundred requests per second that decoding
alone stole whole milliseconds from the requests it served. :class:`EventCodec` builds its
tables once per contract (topic → event, indexed and data types) and decodes with
``eth_abi`` directly, with a small cache of checksummed addresses: the same logs decode in
a tenth of the time, to the same values (``bytes`` for fixed and dynamic bytes, ``int`` for
integers and flags, checksummed ``str`` for addresses).

Indexed dynamic values (``string``, ``bytes``, arrays) are stored on chain as their keccak
hash; they come back as that 32-byte hash, as web3 does. The medmesh contracts index only
static values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address

__all__ = ["EventCodec", "EventSpec", "checksum"]

_DYNAMIC = ("string", "bytes", "tuple")


@lru_cache(maxsize=65_536)
def checksum(address: str) -> str:
    """EIP-55 form of ``address`` (cached: the same few accounts recur in every block)."""
    return to_checksum_address(address)


def _is_dynamic(abi_type: str) -> bool:
    return abi_type in _DYNAMIC or abi_type.endswith("]") or abi_type.startswith("(")


def _convert(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return checksum(value)
    if abi_type.startswith("address["):
        return [checksum(v) for v in value]
    return value


@dataclass(frozen=True)
class EventSpec:
    """One event of one contract: its name, topic and the types of its arguments."""

    name: str
    topic: bytes
    indexed: tuple[tuple[str, str], ...]  # (name, type) in topic order
    data: tuple[tuple[str, str], ...]  # (name, type) in data order

    @classmethod
    def from_abi(cls, entry: Mapping[str, Any]) -> EventSpec:
        inputs = entry.get("inputs", [])
        return cls(
            name=str(entry["name"]),
            topic=bytes(event_abi_to_log_topic(cast(Any, dict(entry)))),
            indexed=tuple((i["name"], i["type"]) for i in inputs if i.get("indexed")),
            data=tuple((i["name"], i["type"]) for i in inputs if not i.get("indexed")),
        )

    def decode(self, topics: list[bytes], data: bytes) -> dict[str, Any]:
        """The arguments of one log of this event (eth_abi's DecodingError if malformed)."""
        args: dict[str, Any] = {}
        for (name, abi_type), topic in zip(self.indexed, topics, strict=True):
            if _is_dynamic(abi_type):
                args[name] = topic  # only the hash of an indexed dynamic value is on chain
            else:
                (args[name],) = abi_decode([abi_type], topic)
                args[name] = _convert(abi_type, args[name])
        if self.data:
            values = abi_decode([t for _, t in self.data], data)
            for (name, abi_type), value in zip(self.data, values, strict=True):
                args[name] = _convert(abi_type, value)
        return args


def _raw(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


class EventCodec:
    """The events of one contract ABI, matched by topic and decoded with ``eth_abi``."""

    def __init__(self, abi: Iterable[Mapping[str, Any]]) -> None:
        specs = [EventSpec.from_abi(e) for e in abi if e.get("type") == "event"]
        self.by_name = {s.name: s for s in specs}
        self.by_topic = {s.topic: s for s in specs if s.name}

    def topic(self, name: str) -> str:
        """The 0x-hex topic of event ``name``, for eth_getLogs filters."""
        return "0x" + self.by_name[name].topic.hex()

    def decode(self, log: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(event name, arguments) of a JSON-RPC log, or None if it is no event of this ABI
        (an anonymous event, or one inherited from a module this table does not know)."""
        topics = log.get("topics") or []
        if not topics:
            return None
        spec = self.by_topic.get(_raw(topics[0]))
        if spec is None or len(topics) - 1 != len(spec.indexed):
            return None  # same signature, other indexing (ERC-20 vs ERC-721 Transfer)
        return spec.name, spec.decode([_raw(t) for t in topics[1:]], _raw(log.get("data") or b""))
