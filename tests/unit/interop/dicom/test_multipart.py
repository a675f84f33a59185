"""multipart/related for WADO-RS: written and read back whole, in any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medmesh.errors import IntegrityError, InvalidInputError
from medmesh.interop.dicom.multipart import (
    PartParser,
    boundary_of,
    closing,
    first_part,
    multipart_body,
    new_boundary,
    part_head,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@given(payload=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_round_trip_in_any_chunking(payload: bytes, cuts: list[int]) -> None:
    b = new_boundary()
    body = part_head(b, "application/dicom") + payload + closing(b)
    assert b"".join(first_part(split(body, cuts), b)) == payload


@given(
    payloads=st.lists(st.binary(max_size=600), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_parser_splits_many_parts_in_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    b = new_boundary()
    body = b"".join(multipart_body([[p] for p in payloads], b, "application/dicom"))
    parser = PartParser(b)
    parts: list[bytes] = []
    for chunk in split(body, cuts):
        for kind, value in parser.feed(chunk):
            if kind == "part":
                assert value == {"content-type": "application/dicom"}
                parts.append(b"")
            elif kind == "data":
                parts[-1] += value  # type: ignore[operator]
    parser.close()
    assert parts == payloads


def test_parser_reads_padding_empty_headers_and_stops_at_the_close() -> None:
    body = (
        b"preamble\r\n--b \t\r\n\r\nfirst\r\n--b\r\nContent-Type: x/y\r\nX-A: 1\r\n\r\n"
        b"second\r\n--b--\r\nepilogue --b"
    )
    parser = PartParser("b")
    events = parser.feed(body)
    parser.close()
    assert events == [
        ("part", {}), ("data", b"first"), ("end", None),
        ("part", {"content-type": "x/y", "x-a": "1"}), ("data", b"second"), ("end", None),
    ]  # fmt: skip
    cut = PartParser("b")
    cut.feed(body[:40])
    with pytest.raises(IntegrityError):
        cut.close()
    with pytest.raises(InvalidInputError):
        PartParser("b").feed(b"--b\r\nno colon here\r\n\r\n")


def test_payload_that_looks_like_a_delimiter_prefix() -> None:
    b = "bb"
    payload = b"\r\n--b\r\n-\r\n--bx"  # never the full CRLF--bb delimiter
    body = b"preamble\r\n" + part_head(b, "application/dicom") + payload + closing(b)
    assert b"".join(first_part([body[i : i + 3] for i in range(0, len(body), 3)], b)) == payload


def test_truncated_body_raises() -> None:
    b = new_boundary()
    body = part_head(b, "application/dicom") + b"x" * 1000  # no closing delimiter
    with pytest.raises(IntegrityError):
        b"".join(first_part([body], b))


def test_no_part_raises() -> None:
    with pytest.raises(InvalidInputError):
        list(first_part([b"not multipart at all"], "b"))


def test_boundary_of() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary=abc-1') == "abc-1"
    assert boundary_of('multipart/related; boundary="q=x"; type="application/dicom"') == "q=x"
    with pytest.raises(InvalidInputError):
        boundary_of("application/json")
    with pytest.raises(InvalidInputError):
        boundary_of('multipart/related; type="application/dicom"')
