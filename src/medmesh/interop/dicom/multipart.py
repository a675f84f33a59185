"""``multipart/related`` for DICOMweb (PS3.18 8.6.1.2, RFC 2046/2387), streamed both ways.

WADO-RS answers and STOW-RS requests carry DICOM files as parts of a multipart body, and a
file may be many gigabytes, so nothing here holds a whole part in memory:

- :func:`multipart_body` writes a body from parts given as iterables of chunks;
- :class:`PartParser` splits a body fed in chunks of any size into part headers and data
  (a push parser, for a server reading a request stream);
- :func:`first_part` streams the data of the first part of a body (a client reading one
  retrieved instance).

A body that ends before its close delimiter raises :class:`~medmesh.errors.IntegrityError`:
that is how a client notices a server that stopped half-way (a record failing its
authentication check mid-stream cannot change a status already sent).

>>> body = b"".join(multipart_body([[b"DICM..."]], "b0", "application/dicom"))
>>> b"".join(first_part([body[:7], body[7:]], "b0"))
b'DICM...'
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Final, Literal

from medmesh.errors import IntegrityError, InvalidInputError

__all__ = [
    "PartParser",
    "boundary_of",
    "closing",
    "first_part",
    "multipart_body",
    "new_boundary",
    "part_head",
    "type_of",
]

MAX_PART_HEADERS: Final = 16 * 1024
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}")

Event = (
    tuple[Literal["part"], dict[str, str]]
    | tuple[Literal["data"], bytes]
    | tuple[Literal["end"], None]
)


def new_boundary() -> str:
    return f"medmesh-{secrets.token_hex(16)}"


def part_head(boundary: str, content_type: str) -> bytes:
    """The delimiter and headers that open the first part."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")


def closing(boundary: str) -> bytes:
    """The CRLF and close delimiter that end the last part and the body."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def multipart_body(
    parts: Iterable[Iterable[bytes]], boundary: str, content_type: str
) -> Iterator[bytes]:
    """A multipart body of ``parts`` (each an iterable of chunks), all of ``content_type``."""
    head = part_head(boundary, content_type)
    for n, chunks in enumerate(parts):
        yield head if n == 0 else b"\r\n" + head
        yield from chunks
    yield closing(boundary)


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/related`` Content-Type."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        raise InvalidInputError("expected a multipart/related body")
    for param in _params(params):
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if _BOUNDARY.fullmatch(value):
                return value
    raise InvalidInputError("the multipart body names no valid boundary")


def type_of(content_type: str) -> str | None:
    """The ``type`` parameter of a multipart Content-Type (lower case), if any."""
    _, _, params = content_type.partition(";")
    for param in _params(params):
        name, _, value = param.partition("=")
        if name.strip().lower() == "type":
            return value.strip().strip('"').lower()
    return None


def _params(text: str) -> list[str]:
    """``;``-separated parameters, quoted strings kept whole."""
    return [p for p in re.findall(r'(?:[^;"]|"[^"]*")+', text) if p.strip()]


class PartParser:
    """Split a multipart body, fed in chunks of any size, into events: ``("part",
    headers)`` when a part starts (header names in lower case), ``("data", bytes)`` for its
    content, ``("end", None)`` when it ends. :meth:`close` checks the body was complete.

    Example::

        parser = PartParser(boundary)
        for chunk in body:
            for kind, value in parser.feed(chunk):
                ...
        parser.close()
    """

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        # a delimiter is CRLF--boundary; the first may open the body: read it as after a CRLF
        self._buf = bytearray(b"\r\n")
        self._state: Literal["preamble", "delimiter", "headers", "body", "done"] = "preamble"

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        buf = self._buf
        keep = len(self._delimiter) - 1
        while True:
            if self._state == "preamble":
                at = buf.find(self._delimiter)
                if at < 0:
                    del buf[: max(0, len(buf) - keep)]
                    return events
                del buf[: at + len(self._delimiter)]
                self._state = "delimiter"
            elif self._state == "delimiter":
                if len(buf) < 2:
                    return events
                if buf[:2] == b"--":
                    buf.clear()  # the epilogue is ignored
                    self._state = "done"
                    return events
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise InvalidInputError("malformed multipart delimiter line")
                    return events
                if buf[:eol].strip(b" \t"):
                    raise InvalidInputError("malformed multipart delimiter line")
                del buf[: eol + 2]
                self._state = "headers"
            elif self._state == "headers":
                if buf[:2] == b"\r\n":
                    raw, skip = b"", 2
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > MAX_PART_HEADERS:
                            raise InvalidInputError("a part's headers are too long")
                        return events
                    raw, skip = bytes(buf[:end]), end + 4
                del buf[:skip]
                events.append(("part", _headers(raw)))
                self._state = "body"
            elif self._state == "body":
                at = buf.find(self._delimiter)
                if at >= 0:
                    if at:
                        events.append(("data", bytes(buf[:at])))
                    del buf[: at + len(self._delimiter)]
                    events.append(("end", None))
                    self._state = "delimiter"
                    continue
                if len(buf) > keep:
                    events.append(("data", bytes(buf[: len(buf) - keep])))
                    del buf[: len(buf) - keep]
                return events
            else:
                buf.clear()
                return events

    def close(self) -> None:
        if self._state != "done":
            raise IntegrityError("the body ended before its closing boundary: incomplete")


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n") if raw else []:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise InvalidInputError("malformed part header")
        out[name.strip().lower()] = value.strip()
    return out


def first_part(chunks: Iterable[bytes], boundary: str) -> Iterator[bytes]:
    """Stream the data of the first part of a multipart body arriving as ``chunks``.

    Raises :class:`~medmesh.errors.InvalidInputError` when the body holds no part, and
    :class:`~medmesh.errors.IntegrityError` when it ends before the part does.
    """
    parser = PartParser(boundary)
    started = False
    for chunk in chunks:
        for kind, value in parser.feed(chunk):
            if kind == "part":
                if started:
                    return
                started = True
            elif kind == "data":
                assert isinstance(value, bytes)
                yield value
            else:
                return
    if not started:
        raise InvalidInputError("the multipart body has no part")
    raise IntegrityError("the body ended before its part did: incomplete")
