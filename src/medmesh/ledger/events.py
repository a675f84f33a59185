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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import InsufficientDataBytes, NonEmptyPaddingBytes
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
            elif abi_type in _WORDS and len(topic) == 32:
                args[name] = _WORDS[abi_type](topic)
            else:
                (args[name],) = abi_decode([abi_type], topic)
                args[name] = _convert(abi_type, args[name])
        if self.data:
            types = [t for _, t in self.data]
            if all(t in _WORDS or t in ("bytes", "string") for t in types):
                values = _decode_simple(types, data)
            else:
                values = [
                    _convert(t, v) for t, v in zip(types, abi_decode(types, data), strict=True)
                ]
            for (name, _), value in zip(self.data, values, strict=True):
                args[name] = value
        return args


# One 32-byte word of a static type, decoded as eth_abi does (strict: padding must be zero)
# and converted as _convert does. Events are decoded by the thousand when an import is
# indexed; eth_abi's generic decoders took 7 % of a FHIR gateway's CPU for it.
def _padding(word: bytes, start: int, end: int) -> None:
    if any(word[start:end]):
        raise NonEmptyPaddingBytes(f"Padding bytes were not empty: {word[start:end]!r}")


def _address(word: bytes) -> str:
    _padding(word, 0, 12)
    return checksum("0x" + word[12:].hex())


def _uint(bits: int) -> Callable[[bytes], int]:
    def decode(word: bytes) -> int:
        if bits < 256:
            _padding(word, 0, 32 - bits // 8)
        return int.from_bytes(word, "big")

    return decode


def _fixed_bytes(size: int) -> Callable[[bytes], bytes]:
    def decode(word: bytes) -> bytes:
        _padding(word, size, 32)
        return word[:size]

    return decode


def _bool(word: bytes) -> bool:
    _padding(word, 0, 31)
    if word[31] > 1:
        raise NonEmptyPaddingBytes(f"Padding bytes were not empty: {word[31:]!r}")
    return bool(word[31])


_WORDS: Final[dict[str, Callable[[bytes], Any]]] = {
    "address": _address,
    "bool": _bool,
    **{f"uint{n}": _uint(n) for n in range(8, 257, 8)},
    **{f"bytes{n}": _fixed_bytes(n) for n in range(1, 33)},
}


def _decode_simple(types: list[str], data: bytes) -> list[Any]:
    """``abi_decode(types, data)`` converted, for static words and ``bytes`` / ``string``."""
    if len(data) < 32 * len(types):
        raise InsufficientDataBytes(
            f"Tried to read {32 * len(types)} bytes, only got {len(data)} bytes."
        )
    out: list[Any] = []
    for i, abi_type in enumerate(types):
        word = data[32 * i : 32 * i + 32]
        if abi_type in _WORDS:
            out.append(_WORDS[abi_type](word))
            continue
        at = int.from_bytes(word, "big")  # bytes or string: the offset of length, then data
        if at + 32 > len(data):
            raise InsufficientDataBytes(f"an offset ({at}) points past the data ({len(data)})")
        size = int.from_bytes(data[at : at + 32], "big")
        end = at + 32 + size
        padded = end + (-size % 32)
        if padded > len(data):
            raise InsufficientDataBytes(f"a length ({size}) runs past the data ({len(data)})")
        _padding(data, end, padded)
        raw = data[at + 32 : end]
        out.append(raw.decode("utf-8") if abi_type == "string" else raw)
    return out


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
