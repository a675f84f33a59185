"""An in-process fake of kubo's RPC API, faithful enough to test kubo clients against.

:class:`FakeKubo` serves ``/api/v0/...`` over real HTTP (aiohttp, bound to 127.0.0.1 on a
free port) and keeps blocks and pins in memory. It behaves like a kubo 0.3x daemon started
with ``--offline``: nothing is ever fetched from a network, so a missing block is an error at
once (a networked kubo would search the IPFS network instead, and hang until it gives up).

Endpoints (all ``POST``; arguments go in the query string as ``arg=...``)::

    /api/v0/version                    {"Version", "Commit", "Repo", "System", "Golang"}
    /api/v0/dag/import                 multipart/form-data, one or more CAR v1 files
        ?pin-roots=true (default) &stats=false &allow-big-block=false
        -> NDJSON {"Root":{"Cid":{"/":cid},"PinErrorMsg":""}} per header root (only when
           pinning), then {"Stats":{"BlockCount","BlockBytesCount"}} with stats=true
    /api/v0/dag/export?arg=<root>      CAR v1 stream, header roots [root], DFS pre-order,
                                       each block once
    /api/v0/block/get?arg=<cid>        the raw block
    /api/v0/block/stat?arg=<cid>       {"Key": cid, "Size": n}
    /api/v0/pin/add?arg=<cid>...       &recursive=true -> {"Pins": [cid, ...]}
    /api/v0/pin/rm?arg=<cid>...        &recursive=true -> {"Pins": [cid, ...]}
    /api/v0/pin/ls[?arg=<cid>...]      &type=all|recursive|direct|indirect &stream=false
                                       -> {"Keys": {cid: {"Type", "Name"}}} (or NDJSON
                                          {"Cid", "Type"} lines with stream=true)

What was matched, and where from
--------------------------------
The RPC reference generated from kubo (docs.ipfs.tech ``reference/kubo/rpc``, v0.26 to
v0.39) for argument names, defaults and response shapes; kubo's own sources
(``core/commands/dag/{import,export}.go``, ``core/commands/pin/pin.go``) and the
``go-ipfs-cmds`` HTTP handler for status codes and messages:

- Only ``POST`` runs a command. Any other method gets ``405`` with the body
  ``405 - Method Not Allowed`` and ``Allow: OPTIONS, POST``; ``OPTIONS`` gets ``204``.
  An unknown command is ``404 page not found``. A request carrying an ``Origin`` other than
  the API's own is ``403 - Forbidden`` (kubo's default CORS policy).
- Request errors found before the command runs (a missing argument, a bad boolean, no file
  in the body) are ``400`` with a plain-text message. Errors of the command itself are
  ``500`` with ``{"Message": ..., "Code": 0, "Type": "error"}``.
- Errors after a stream started keep the ``200`` and are sent in the HTTP trailer
  ``X-Stream-Error`` (declared by ``Trailer: X-Stream-Error``), as go-ipfs-cmds does. So a
  ``dag/export`` that meets a missing or undecodable block below the root ends early with a
  well-formed chunked body: clients must verify what they get.
- ``dag/import`` verifies every block against its CID as go-car does ("mismatch in content
  integrity, expected: ..., got: ...", wrapped as ``import failed at/after block ...``) and
  then stores nothing from that request; refuses blocks over the 1 MiB soft limit unless
  ``allow-big-block=true``; decodes raw, dag-pb and dag-cbor blocks (others are refused as
  kubo refuses codecs it has no decoder for). With ``pin-roots`` it pins each header root
  recursively only if the whole DAG under it is present; otherwise that root's
  ``PinErrorMsg`` says why (``ipld: could not find <cid>`` for a missing root, ``block was
  not found locally (offline): ipld: could not find <cid>`` for a missing child) and the
  request still succeeds, as in kubo 0.3x.
- ``dag/export`` checks that the root is present before streaming (else ``500`` ``block was
  not found locally (offline): ipld: could not find <cid>``), then walks the DAG like
  go-car's ``TraverseV1``: blocks are *not* re-hashed on the way out (kubo's default
  ``Datastore.HashOnRead=false``), a corrupted leaf is sent as stored, and a block that is
  missing or cannot be decoded stops the stream with the error in the trailer.
- Pins: ``pin/add`` fails with ``pin: block was not found locally (offline): ...`` when a
  block is missing; ``pin/rm`` of something not pinned is ``not pinned or pinned
  indirectly``; ``pin/ls`` of something not pinned is ``path '/ipfs/<cid>' is not pinned``;
  indirect pins show as ``indirect through <root>`` when asked about by CID.
- Blocks are keyed by multihash as in kubo's blockstore (a CIDv0 and a CIDv1 of the same
  bytes are the same block). Identity CIDs are always "present". Importing a block that is
  already stored rewrites it, as kubo's ``Datastore.WriteThrough=true`` (its default) does,
  so re-importing a good copy repairs a block a test corrupted; with ``write_through=False``
  the stored copy is kept (boxo's ``Has`` check before ``Put``).

Not modelled: paths below a CID, IPNS, CAR v2 input, other hash functions than sha2-256,
blake3 and identity, garbage collection on its own (see :meth:`FakeKubo.gc`), progress
output, the exact traversal path in walk errors.

These were checked against the documentation and sources named above, not against a running
kubo binary; ``tests/integration/test_kubo_real.py`` runs the same client round trips against
a real daemon when one is available.

For tests: :meth:`FakeKubo.corrupt_block`, :meth:`~FakeKubo.remove_block`,
:meth:`~FakeKubo.add_block`, :meth:`~FakeKubo.pin_type`, :meth:`~FakeKubo.fail_next`, and
:attr:`~FakeKubo.calls` (a :class:`collections.Counter` of commands run, e.g.
``calls["dag/import"]``) plus :attr:`~FakeKubo.requests` (every request, in order). Serve it
in the running event loop with ``async with kubo.serve() as url``, or from a background
thread (for synchronous code such as ``Client.put``) with ``with kubo.serve_in_thread() as
url``::

    kubo = FakeKubo()
    async with kubo.serve() as url:
        obj = await KuboStore(url).put([b"..."])
        assert kubo.pin_type(obj.cid) == "recursive"
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import dag_cbor
from aiohttp import BodyPartReader, web
from multiformats import CID as _MfCid

from medmesh.errors import InvalidCidError
from medmesh.storage.cid import DAG_CBOR, DAG_PB, IDENTITY, RAW, Cid, hash_digest

__all__ = ["KUBO_VERSION", "SOFT_BLOCK_LIMIT", "FakeKubo", "RecordedCall"]

#: The version the fake reports.
KUBO_VERSION: Final = "0.36.0"
#: Largest block ``dag/import`` accepts without ``allow-big-block`` (kubo's SoftBlockLimit).
SOFT_BLOCK_LIMIT: Final = 1 << 20
#: go-car's default limit on one CAR section.
MAX_SECTION_SIZE: Final = 8 << 20
_MAX_HEADER_SIZE: Final = 32 << 20

_API: Final = "/api/v0/"
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_PIN_TYPES: Final = ("all", "direct", "indirect", "recursive")
_HASH_ON_READ_MISMATCH: Final = "block in storage has different hash than requested"


# -- errors and responses --------------------------------------------------------------------


class _RpcError(Exception):
    """An error of the command itself: HTTP 500 with kubo's JSON error body."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _RequestError(Exception):
    """A malformed request, refused before the command runs: HTTP 400, plain text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _BlockError(Exception):
    """A block could not be read or decoded during a DAG walk."""

    def __init__(self, cid: Cid, message: str) -> None:
        super().__init__(message)
        self.cid = cid
        self.message = message


def _not_found(cid: Cid) -> str:
    return f"ipld: could not find {cid}"


def _offline_not_found(cid: Cid) -> str:
    return f"block was not found locally (offline): {_not_found(cid)}"


_JSON_HEADERS: Final = {"Trailer": "X-Stream-Error", "Vary": "Origin"}


def _json(obj: Any, status: int = 200) -> web.Response:
    body = json.dumps(obj, separators=(",", ":")) + "\n"
    return web.Response(
        status=status, text=body, content_type="application/json", headers=_JSON_HEADERS
    )


def _ndjson(lines: Iterable[Any]) -> web.Response:
    body = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
    return web.Response(
        text=body,
        content_type="application/json",
        headers={**_JSON_HEADERS, "X-Chunked-Output": "1"},
    )


def _rpc_error(message: str, status: int = 500) -> web.Response:
    return _json({"Message": message, "Code": 0, "Type": "error"}, status)


def _plain(message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """What Go's ``http.Error`` sends."""
    return web.Response(
        status=status,
        body=(message + "\n").encode(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        },
    )


class _TrailerResponse(web.StreamResponse):
    """A chunked response that can end with HTTP trailers, as Go's net/http sends them.

    aiohttp cannot send trailers, so the chunked framing is written here (like
    :class:`aiohttp.web.WebSocketResponse`, length handling is switched off).
    """

    _length_check = False

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(status=200, headers={**headers, "Transfer-Encoding": "chunked"})

    async def write_chunk(self, data: bytes) -> None:
        if data:
            await self.write(b"%x\r\n" % len(data) + data + b"\r\n")

    async def finish(self, trailers: dict[str, str]) -> None:
        tail = b"".join(
            f"{k}: {v.splitlines()[0] if v else ''}\r\n".encode() for k, v in trailers.items()
        )
        await self.write(b"0\r\n" + tail + b"\r\n")
        await self.write_eof()


# -- CAR v1 and codecs (independent of medmesh.storage.car on purpose) -----------------------


class _CarError(ValueError):
    """A malformed CAR or a block that does not match its CID."""


def _varint_at(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(len(buf), pos + 10)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise ValueError(f"{what}: truncated or oversized varint")


def _uvarint(stream: io.BytesIO) -> int | None:
    """A varint from the stream; None on a clean end of stream."""
    value = shift = 0
    for i in range(10):
        b = stream.read(1)
        if not b:
            if i == 0:
                return None
            raise _CarError("unexpected EOF")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
    raise _CarError("varint longer than 10 bytes")


def _read_exact(stream: io.BytesIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise _CarError("unexpected EOF")
    return data


def _read_header(stream: io.BytesIO) -> list[Cid]:
    n = _uvarint(stream)
    if n is None:
        raise _CarError("EOF")
    if n == 0 or n > _MAX_HEADER_SIZE:
        raise _CarError(f"invalid header length {n}")
    try:
        header = dag_cbor.decode(_read_exact(stream, n))
    except _CarError:
        raise
    except Exception as exc:  # dag_cbor raises its own error tree
        raise _CarError(f"invalid header: {exc}") from exc
    if not isinstance(header, dict):
        raise _CarError("invalid header: not a map")
    version = header.get("version")
    if version == 2:
        raise _CarError("the fake kubo reads CAR v1 only (this is CAR v2)")
    if version != 1:
        raise _CarError(f"invalid car version: {version!r}")
    roots = header.get("roots")
    if not isinstance(roots, list):
        raise _CarError("invalid header: roots is not a list")
    out: list[Cid] = []
    for r in roots:
        if not isinstance(r, _MfCid):
            raise _CarError("invalid header: root is not a CID")
        try:
            out.append(Cid.from_bytes(bytes(r)))
        except InvalidCidError as exc:
            raise _CarError(f"invalid header: unsupported root CID ({exc})") from exc
    return out


def _split_cid(section: bytes) -> tuple[Cid, bytes]:
    if len(section) >= 34 and section[0] == 0x12 and section[1] == 0x20:
        end = 34
    else:
        try:
            _, pos = _varint_at(section, 0, "cid")
            _, pos = _varint_at(section, pos, "cid")
            _, pos = _varint_at(section, pos, "cid")
            length, pos = _varint_at(section, pos, "cid")
        except ValueError as exc:
            raise _CarError(f"invalid cid: {exc}") from exc
        end = pos + length
    try:
        return Cid.from_bytes(section[:end]), section[end:]
    except InvalidCidError as exc:
        raise _CarError(f"invalid cid: {exc}") from exc


def _read_section(stream: io.BytesIO) -> tuple[Cid, bytes] | None:
    n = _uvarint(stream)
    if n is None:
        return None
    if n == 0:
        raise _CarError("zero-length section")
    if n > MAX_SECTION_SIZE:
        raise _CarError(f"malformed car; header is bigger than util.MaxAllowedSectionSize ({n})")
    cid, data = _split_cid(_read_exact(stream, n))
    try:
        got: Cid | str = Cid(
            cid.version, cid.codec, cid.hash_code, hash_digest(cid.hash_code, data)
        )
    except InvalidCidError:
        got = "<unhashable>"
    if got != cid:
        raise _CarError(f"mismatch in content integrity, expected: {cid}, got: {got}")
    return cid, data


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _car_header(roots: Iterable[Cid]) -> bytes:
    header = dag_cbor.encode({"roots": [_MfCid.decode(bytes(r)) for r in roots], "version": 1})
    return _encode_varint(len(header)) + header


def _car_section(cid: Cid, data: bytes) -> bytes:
    raw = bytes(cid)
    return _encode_varint(len(raw) + len(data)) + raw + data


def _pb_link(buf: bytes) -> Cid:
    """The Hash of one strictly encoded PBLink."""
    pos = last = 0
    link: Cid | None = None
    while pos < len(buf):
        key, pos = _varint_at(buf, pos, "protobuf: (PBLink)")
        num, wire = key >> 3, key & 7
        if num <= last:
            raise ValueError("protobuf: (PBLink) invalid order or duplicate field")
        last = num
        if num in (1, 2):
            if wire != 2:
                raise ValueError(f"protobuf: (PBLink) invalid wireType, expected 2, got {wire}")
            length, pos = _varint_at(buf, pos, "protobuf: (PBLink)")
            if pos + length > len(buf):
                raise ValueError("protobuf: (PBLink) unexpected EOF")
            if num == 1:
                try:
                    link = Cid.from_bytes(buf[pos : pos + length])
                except InvalidCidError as exc:
                    raise ValueError(f"protobuf: (PBLink) invalid Hash: {exc}") from exc
            pos += length
        elif num == 3:
            if wire != 0:
                raise ValueError(f"protobuf: (PBLink) invalid wireType, expected 0, got {wire}")
            _, pos = _varint_at(buf, pos, "protobuf: (PBLink)")
        else:
            raise ValueError(f"protobuf: (PBLink) invalid fieldNumber, got {num}")
    if link is None:
        raise ValueError("protobuf: (PBLink) missing required field: Hash")
    return link


def _pb_links(block: bytes) -> list[Cid]:
    """Links of a dag-pb node, decoded as strictly as go-codec-dagpb does."""
    links: list[Cid] = []
    pos = 0
    seen_data = False
    while pos < len(block):
        key, pos = _varint_at(block, pos, "protobuf: (PBNode)")
        num, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError(f"protobuf: (PBNode) invalid wireType, expected 2, got {wire}")
        length, pos = _varint_at(block, pos, "protobuf: (PBNode)")
        end = pos + length
        if end > len(block):
            raise ValueError("protobuf: (PBNode) unexpected EOF")
        if num == 1:
            if seen_data:
                raise ValueError("protobuf: (PBNode) duplicate Data section")
            seen_data = True
        elif num == 2:
            if seen_data:
                raise ValueError(
                    "protobuf: (PBNode) invalid order, found Data before Links content"
                )
            links.append(_pb_link(block[pos:end]))
        else:
            raise ValueError(f"protobuf: (PBNode) invalid fieldNumber, expected 1 or 2, got {num}")
        pos = end
    return links


def _cbor_links(block: bytes) -> list[Cid]:
    try:
        obj = dag_cbor.decode(block)
    except Exception as exc:  # dag_cbor raises its own error tree
        raise ValueError(f"dag-cbor: {exc}") from exc
    out: list[Cid] = []
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, _MfCid):
            try:
                out.append(Cid.from_bytes(bytes(item)))
            except InvalidCidError as exc:
                raise ValueError(f"dag-cbor: unsupported link ({exc})") from exc
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return out


def _links(cid: Cid, block: bytes) -> list[Cid]:
    """Decode ``block`` as its codec says; its links in order. ValueError if undecodable."""
    if cid.codec == RAW:
        return []
    if cid.codec == DAG_PB:
        return _pb_links(block)
    if cid.codec == DAG_CBOR:
        return _cbor_links(block)
    raise ValueError(f"no decoder registered for multicodec code {cid.codec} (0x{cid.codec:x})")


def _import_error(previous: Cid | None, current: Cid | None, message: str) -> str:
    if current is not None:
        return f'import failed at block "{current}": {message}'
    if previous is not None:
        return f'import failed after block "{previous}": {message}'
    return f"import failed: {message}"


# -- the fake --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedCall:
    """One request the fake received."""

    method: str
    command: str  # e.g. "dag/import"; the raw path for unknown endpoints
    query: tuple[tuple[str, str], ...]
    status: int

    def args(self) -> list[str]:
        return [v for k, v in self.query if k == "arg"]


@dataclass
class _Fault:
    message: str
    status: int
    times: int


@dataclass
class _ThreadState:
    url: str | None = None
    error: BaseException | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class _Options:
    """Query-string options, parsed as go-ipfs-cmds parses them."""

    def __init__(self, request: web.Request) -> None:
        self.query = request.query

    def _one(self, name: str) -> str | None:
        values = self.query.getall(name, [])
        if not values:
            return None
        if len(values) > 1:
            raise _RequestError(
                f"expected key {name} to have only a single value, received {values}"
            )
        return values[0]

    def flag(self, name: str, default: bool) -> bool:
        value = self._one(name)
        if value is None:
            return default
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise _RequestError(
            f'could not convert value "{value}" to type "bool" (for option "-{name}")'
        )

    def string(self, name: str, default: str) -> str:
        value = self._one(name)
        return default if value is None else value


_Handler = Callable[[web.Request, _Options, list[str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Spec:
    handler: _Handler
    arg: str | None = None  # name of the string argument, for error messages
    required: bool = False
    variadic: bool = False


class FakeKubo:
    """An in-memory kubo node behind its RPC API. See the module docstring.

    Parameters
    ----------
    version
        What ``/api/v0/version`` reports.
    max_block_size
        kubo's soft block limit for ``dag/import`` (1 MiB; newer kubo releases use 2 MiB).
    hash_on_read
        Re-hash blocks when reading them, like kubo's ``Datastore.HashOnRead`` (off by
        default, as in kubo): a corrupted block is then an error instead of being served.
    write_through
        Rewrite blocks that are already stored when they are imported again, like kubo's
        ``Datastore.WriteThrough`` (on by default, as in kubo).
    """

    def __init__(
        self,
        *,
        version: str = KUBO_VERSION,
        max_block_size: int = SOFT_BLOCK_LIMIT,
        hash_on_read: bool = False,
        write_through: bool = True,
    ) -> None:
        self.version = version
        self.max_block_size = max_block_size
        self.hash_on_read = hash_on_read
        self.write_through = write_through
        #: Commands run (POSTs to known endpoints), whatever their outcome.
        self.calls: Counter[str] = Counter()
        #: Every request received, in order.
        self.requests: list[RecordedCall] = []
        #: The base URL while serving (``http://127.0.0.1:<port>``), else None.
        self.url: str | None = None
        self._lock = threading.RLock()
        self._blocks: dict[bytes, bytes] = {}  # multihash -> bytes, as kubo's blockstore
        self._recursive: dict[Cid, None] = {}  # ordered sets
        self._direct: dict[Cid, None] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._commands: dict[str, _Spec] = {
            "version": _Spec(self._version),
            "dag/import": _Spec(self._dag_import),
            "dag/export": _Spec(self._dag_export, "root", required=True),
            "block/get": _Spec(self._block_get, "cid", required=True),
            "block/stat": _Spec(self._block_stat, "cid", required=True),
            "pin/add": _Spec(self._pin_add, "ipfs-path", required=True, variadic=True),
            "pin/rm": _Spec(self._pin_rm, "ipfs-path", required=True, variadic=True),
            "pin/ls": _Spec(self._pin_ls, "ipfs-path", variadic=True),
        }

    # -- state, for tests ----------------------------------------------------------------
    def add_block(self, cid: Cid, data: bytes) -> None:
        """Store a block directly (it must match its CID)."""
        cid.verify(data)
        with self._lock:
            self._blocks[cid.multihash] = bytes(data)

    def has_block(self, cid: Cid) -> bool:
        with self._lock:
            return cid.hash_code == IDENTITY or cid.multihash in self._blocks

    def block(self, cid: Cid) -> bytes:
        """The stored bytes of ``cid`` (as stored: not verified). KeyError if absent."""
        with self._lock:
            return self._blocks[cid.multihash]

    def block_count(self) -> int:
        with self._lock:
            return len(self._blocks)

    def corrupt_block(self, cid: Cid, data: bytes | None = None) -> None:
        """Replace the stored bytes of ``cid`` (by default: flip the bits of its first byte)."""
        with self._lock:
            old = self._blocks[cid.multihash]
            if data is None:
                data = bytes([old[0] ^ 0xFF]) + old[1:] if old else b"\x00"
            self._blocks[cid.multihash] = bytes(data)

    def remove_block(self, cid: Cid) -> None:
        """Drop a block (pins stay, as after a disk failure)."""
        with self._lock:
            del self._blocks[cid.multihash]

    @property
    def recursive_pins(self) -> list[Cid]:
        with self._lock:
            return list(self._recursive)

    @property
    def direct_pins(self) -> list[Cid]:
        with self._lock:
            return list(self._direct)

    def pin_type(self, cid: Cid) -> str | None:
        """``"recursive"``, ``"direct"``, ``"indirect"`` or None, as ``pin ls`` would say."""
        with self._lock:
            if cid in self._recursive:
                return "recursive"
            if cid in self._direct:
                return "direct"
            for root in self._recursive:
                if cid in self._reachable(root):
                    return "indirect"
        return None

    def gc(self) -> int:
        """Drop every block no pin keeps (``ipfs repo gc``); return how many were dropped."""
        with self._lock:
            keep: set[bytes] = {c.multihash for c in self._direct}
            for root in self._recursive:
                keep |= {c.multihash for c in self._reachable(root, include_root=True)}
            drop = [mh for mh in self._blocks if mh not in keep]
            for mh in drop:
                del self._blocks[mh]
            return len(drop)

    def fail_next(self, command: str, message: str, *, status: int = 500, times: int = 1) -> None:
        """Make the next ``times`` calls of ``command`` fail with ``message``."""
        if command not in self._commands:
            raise ValueError(f"unknown command {command!r}")
        with self._lock:
            self._faults.setdefault(command, []).append(_Fault(message, status, times))

    # -- serving -------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)  # kubo sets no limit on uploads
        app.on_response_prepare.append(self._server_header)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def _server_header(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = f"kubo/{self.version}/"

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on 127.0.0.1 (a free port) in the running loop; yields the base URL."""
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            site = web.SockSite(runner, sock)
            await site.start()
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            yield self.url
        finally:
            self.url = None
            await runner.cleanup()

    @contextlib.contextmanager
    def serve_in_thread(self) -> Iterator[str]:
        """Serve from a background thread (for synchronous code under test); yields the URL."""
        state = _ThreadState()

        async def main() -> None:
            state.loop = asyncio.get_running_loop()
            state.stop = asyncio.Event()
            async with self.serve() as url:
                state.url = url
                state.ready.set()
                await state.stop.wait()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported to the caller, not to threading's hook
                state.error = exc
            finally:
                state.ready.set()

        thread = threading.Thread(target=run, name="fake-kubo", daemon=True)
        thread.start()
        state.ready.wait(30)
        if state.url is None:
            thread.join(5)
            raise RuntimeError("the fake kubo did not start") from state.error
        try:
            yield state.url
        finally:
            if state.loop is not None and state.stop is not None:
                state.loop.call_soon_threadsafe(state.stop.set)
            thread.join(30)

    # -- dispatch ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        command = path[len(_API) :].strip("/") if path.startswith(_API) else path
        resp = await self._respond(request, command)
        with self._lock:
            self.requests.append(
                RecordedCall(request.method, command, tuple(request.query.items()), resp.status)
            )
        return resp

    async def _respond(self, request: web.Request, command: str) -> web.StreamResponse:
        if not request.path.startswith(_API):
            return _plain("404 page not found", 404)
        allow = {"Allow": "OPTIONS, POST"}
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=allow)
        if request.method != "POST":
            return _plain("405 - Method Not Allowed", 405, allow)
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._own_origins(request):
            return _plain("403 - Forbidden", 403)
        spec = self._commands.get(command)
        if spec is None:
            return _plain("404 page not found", 404)
        with self._lock:
            self.calls[command] += 1
        opts = _Options(request)
        try:
            args = list(request.query.getall("arg", []))
            if spec.arg is None and args:
                raise _RequestError(f"expected 0 argument(s), got {len(args)}")
            if spec.required and not args:
                raise _RequestError(f'argument "{spec.arg}" is required')
            if not spec.variadic and len(args) > 1:
                raise _RequestError(f"expected 1 argument(s), got {len(args)}")
            fault = self._take_fault(command)
            if fault is not None:
                raise _RpcError(fault.message, fault.status)
            return await spec.handler(request, opts, args)
        except _RequestError as exc:
            return _plain(exc.message, 400)
        except _RpcError as exc:
            return _rpc_error(exc.message, exc.status)

    def _own_origins(self, request: web.Request) -> set[str]:
        port = request.url.port
        return {f"http://127.0.0.1:{port}", f"http://localhost:{port}"}

    def _take_fault(self, command: str) -> _Fault | None:
        with self._lock:
            faults = self._faults.get(command)
            if not faults:
                return None
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return fault

    # -- blocks --------------------------------------------------------------------------
    def _read(self, cid: Cid) -> bytes:
        """A block as kubo's blockservice reads it offline. Raises _BlockError."""
        if cid.hash_code == IDENTITY:
            return cid.digest
        with self._lock:
            data = self._blocks.get(cid.multihash)
        if data is None:
            raise _BlockError(cid, _offline_not_found(cid))
        if self.hash_on_read and not cid.matches(data):
            raise _BlockError(cid, _HASH_ON_READ_MISMATCH)
        return data

    def _walk(self, root: Cid) -> Iterator[tuple[Cid, bytes]]:
        """Every distinct block under ``root`` in DFS pre-order (each decoded before it is
        yielded). Raises _BlockError for a block that is missing or cannot be decoded."""
        seen: set[Cid] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            data = self._read(cid)
            try:
                links = _links(cid, data)
            except ValueError as exc:
                raise _BlockError(cid, str(exc)) from exc
            yield cid, data
            stack.extend(reversed(links))

    def _reachable(self, root: Cid, *, include_root: bool = False) -> set[Cid]:
        """CIDs under ``root``; blocks that cannot be read end that branch."""
        out: set[Cid] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in out:
                continue
            out.add(cid)
            try:
                stack.extend(_links(cid, self._read(cid)))
            except (_BlockError, ValueError):
                continue
        if not include_root:
            out.discard(root)
        return out

    def _dag_error(self, root: Cid) -> str:
        """Why ``root`` cannot be pinned recursively ("" if it can)."""
        try:
            for _ in self._walk(root):
                pass
        except _BlockError as exc:
            return exc.message
        return ""

    @staticmethod
    def _arg_cid(arg: str) -> Cid:
        text = arg.removeprefix("/ipfs/")
        if text.startswith("/"):
            raise _RpcError(f'invalid path "{arg}": the fake kubo resolves /ipfs/<cid> only')
        if "/" in text:
            raise _RpcError(f'invalid path "{arg}": the fake kubo does not resolve paths')
        try:
            return Cid.parse(text)
        except InvalidCidError as exc:
            raise _RpcError(f'invalid path "{arg}": invalid cid: {exc}') from exc

    # -- commands ------------------------------------------------------------------------
    async def _version(self, request: web.Request, opts: _Options, args: list[str]) -> web.Response:
        return _json(
            {
                "Version": self.version,
                "Commit": "",
                "Repo": "16",
                "System": "amd64/linux",
                "Golang": "go1.24.4",
            }
        )

    async def _dag_import(
        self, request: web.Request, opts: _Options, args: list[str]
    ) -> web.Response:
        pin_roots = opts.flag("pin-roots", True)
        stats = opts.flag("stats", False)
        allow_big = opts.flag("allow-big-block", False)
        opts.flag("silent", False)
        if request.content_type != "multipart/form-data":
            raise _RequestError("file argument 'path' is required")
        files: list[bytes] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise _RpcError("expected a file handle")
            files.append(bytes(await part.read()))
        if not files:
            raise _RequestError("file argument 'path' is required")

        staged: list[tuple[Cid, bytes]] = []
        roots: dict[Cid, None] = {}
        for car in files:
            stream = io.BytesIO(car)
            try:
                header_roots = _read_header(stream)
            except _CarError as exc:
                raise _RpcError(str(exc)) from exc
            roots.update(dict.fromkeys(header_roots))
            previous: Cid | None = None
            while True:
                try:
                    section = _read_section(stream)
                except _CarError as exc:
                    raise _RpcError(_import_error(previous, None, str(exc))) from exc
                if section is None:
                    break
                cid, data = section
                if not allow_big and len(data) > self.max_block_size:
                    limit = f"{self.max_block_size >> 20}MiB"
                    raise _RpcError(
                        _import_error(
                            previous,
                            cid,
                            f"produced block is over {limit}: big blocks can't be exchanged "
                            "with other peers. consider using UnixFS for automatic chunking "
                            "of bigger files, or pass --allow-big-block to override",
                        )
                    )
                try:
                    _links(cid, data)
                except ValueError as exc:
                    raise _RpcError(_import_error(previous, cid, str(exc))) from exc
                staged.append((cid, data))
                previous = cid

        lines: list[dict[str, Any]] = []
        with self._lock:
            for cid, data in staged:
                if self.write_through:
                    self._blocks[cid.multihash] = data
                else:
                    self._blocks.setdefault(cid.multihash, data)
            if pin_roots:
                for root in roots:
                    if root.hash_code != IDENTITY and root.multihash not in self._blocks:
                        err = _not_found(root)
                    else:
                        err = self._dag_error(root)
                    if not err:
                        self._direct.pop(root, None)
                        self._recursive[root] = None
                    lines.append({"Root": {"Cid": {"/": str(root)}, "PinErrorMsg": err}})
        if stats:
            lines.append(
                {
                    "Stats": {
                        "BlockCount": len(staged),
                        "BlockBytesCount": sum(len(d) for _, d in staged),
                    }
                }
            )
        return _ndjson(lines)

    async def _dag_export(
        self, request: web.Request, opts: _Options, args: list[str]
    ) -> web.StreamResponse:
        opts.flag("progress", False)
        root = self._arg_cid(args[0])
        try:  # kubo checks the root before it starts streaming
            self._read(root)
        except _BlockError as exc:
            raise _RpcError(exc.message) from exc
        resp = _TrailerResponse(
            {
                "Content-Type": "application/vnd.ipld.car",
                "X-Stream-Output": "1",
                "Trailer": "X-Stream-Error",
                "Vary": "Origin",
            }
        )
        await resp.prepare(request)
        await resp.write_chunk(_car_header([root]))
        error = ""
        try:
            for cid, data in self._walk(root):
                await resp.write_chunk(_car_section(cid, data))
        except _BlockError as exc:
            if exc.cid == root:
                error = f"root blk load failed: {exc.message}"
            else:
                error = f'walk failed: could not load link "{exc.cid}": {exc.message}'
        await resp.finish({"X-Stream-Error": error} if error else {})
        return resp

    async def _block_get(
        self, request: web.Request, opts: _Options, args: list[str]
    ) -> web.Response:
        cid = self._arg_cid(args[0])
        try:
            data = self._read(cid)
        except _BlockError as exc:
            raise _RpcError(exc.message) from exc
        return web.Response(
            body=data,
            headers={
                "Content-Type": "text/plain",
                "X-Stream-Output": "1",
                "Trailer": "X-Stream-Error",
                "Vary": "Origin",
            },
        )

    async def _block_stat(
        self, request: web.Request, opts: _Options, args: list[str]
    ) -> web.Response:
        cid = self._arg_cid(args[0])
        if not self.has_block(cid):
            raise _RpcError(_offline_not_found(cid))
        size = len(cid.digest) if cid.hash_code == IDENTITY else len(self.block(cid))
        return _json({"Key": str(cid), "Size": size})

    async def _pin_add(self, request: web.Request, opts: _Options, args: list[str]) -> web.Response:
        recursive = opts.flag("recursive", True)
        opts.string("name", "")
        opts.flag("progress", False)
        pinned: list[str] = []
        for arg in args:
            cid = self._arg_cid(arg)
            with self._lock:
                if recursive:
                    err = self._dag_error(cid)
                    if err:
                        raise _RpcError(f"pin: {err}")
                    self._direct.pop(cid, None)
                    self._recursive[cid] = None
                else:
                    try:
                        data = self._read(cid)
                        _links(cid, data)
                    except _BlockError as exc:
                        raise _RpcError(f"pin: {exc.message}") from exc
                    except ValueError as exc:
                        raise _RpcError(f"pin: {exc}") from exc
                    if cid in self._recursive:
                        raise _RpcError(f"pin: {cid} already pinned recursively")
                    self._direct[cid] = None
            pinned.append(str(cid))
        return _json({"Pins": pinned})

    async def _pin_rm(self, request: web.Request, opts: _Options, args: list[str]) -> web.Response:
        recursive = opts.flag("recursive", True)
        removed: list[str] = []
        for arg in args:
            cid = self._arg_cid(arg)
            with self._lock:
                if cid in self._recursive:
                    if not recursive:
                        raise _RpcError(f"{cid} is pinned recursively")
                    del self._recursive[cid]
                elif cid in self._direct:
                    del self._direct[cid]
                else:
                    raise _RpcError("not pinned or pinned indirectly")
            removed.append(str(cid))
        return _json({"Pins": removed})

    async def _pin_ls(self, request: web.Request, opts: _Options, args: list[str]) -> web.Response:
        kind = opts.string("type", "all")
        stream = opts.flag("stream", False)
        opts.flag("quiet", False)
        opts.flag("names", False)
        if kind not in _PIN_TYPES:
            raise _RpcError(
                f"invalid type '{kind}', must be one of {{direct, indirect, recursive, all}}"
            )
        entries: list[tuple[str, str]] = []
        with self._lock:
            if args:
                for arg in args:
                    cid = self._arg_cid(arg)
                    found = self._pin_ls_one(cid, kind)
                    if found is None:
                        raise _RpcError(f"path '/ipfs/{arg.removeprefix('/ipfs/')}' is not pinned")
                    entries.append((str(cid), found))
            else:
                if kind in ("all", "recursive"):
                    entries += [(str(c), "recursive") for c in self._recursive]
                if kind in ("all", "direct"):
                    entries += [(str(c), "direct") for c in self._direct]
                if kind in ("all", "indirect"):
                    indirect: dict[Cid, None] = {}
                    for root in self._recursive:
                        try:
                            for cid, _ in self._walk(root):
                                if cid != root and cid not in self._recursive:
                                    indirect[cid] = None
                        except _BlockError as exc:
                            raise _RpcError(exc.message) from exc
                    entries += [(str(c), "indirect") for c in indirect]
        if stream:
            return _ndjson({"Cid": c, "Type": t} for c, t in entries)
        return _json({"Keys": {c: {"Type": t, "Name": ""} for c, t in entries}})

    def _pin_ls_one(self, cid: Cid, kind: str) -> str | None:
        if kind in ("all", "recursive") and cid in self._recursive:
            return "recursive"
        if kind in ("all", "direct") and cid in self._direct:
            return "direct"
        if kind in ("all", "indirect"):
            for root in self._recursive:
                if cid in self._reachable(root):
                    return f"indirect through {root}"
        return None
