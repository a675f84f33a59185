"""Sealed stream format: layout, sizes, round trips and the incremental APIs."""

from __future__ import annotations

import array
import hashlib
import hmac
import itertools
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.crypto import stream
from medmesh.crypto.stream import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    Opener,
    Sealer,
    new_data_key,
    open_chunks,
    open_sealed,
    open_segment,
    parse_header,
    plaintext_size,
    seal,
    seal_chunks,
    sealed_size,
    segment_offset,
)
from medmesh.errors import InvalidInputError

SEG = MIN_SEGMENT_SIZE  # small segments keep the tests fast
KEY = bytes(range(32))
PREFIX = b"\x01\x02\x03\x04\x05\x06\x07"


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_header_layout_matches_the_spec() -> None:
    sealed = seal(KEY, b"x", segment_size=5000, nonce_prefix=PREFIX)
    assert HEADER_SIZE == 51
    fixed = b"MMSEAL" + b"\x01" + b"\x01" + struct.pack(">I", 5000) + PREFIX
    assert sealed[:19] == fixed
    commitment = hmac.new(KEY, b"medmesh/seal/v1/commit" + fixed, hashlib.sha256).digest()
    assert sealed[19:HEADER_SIZE] == commitment
    header = parse_header(sealed)
    assert (header.version, header.suite, header.segment_size) == (1, 1, 5000)
    assert header.nonce_prefix == PREFIX
    assert header.to_bytes() == sealed[:HEADER_SIZE]


def test_segments_are_plain_aes_gcm_with_counter_and_last_flag() -> None:
    """An independent decryption with AESGCM, straight from the documented layout."""
    data = os.urandom(2 * SEG + 10)
    sealed = seal(KEY, data, segment_size=SEG, nonce_prefix=PREFIX)
    header = sealed[:HEADER_SIZE]
    aead = AESGCM(KEY)
    body = sealed[HEADER_SIZE:]
    full = SEG + 16
    parts = [body[:full], body[full : 2 * full], body[2 * full :]]
    plain = [
        aead.decrypt(PREFIX + struct.pack(">IB", i, i == 2), part, header)
        for i, part in enumerate(parts)
    ]
    assert b"".join(plain) == data
    assert [len(p) for p in parts] == [full, full, 10 + 16]


def test_empty_plaintext_is_one_empty_final_segment() -> None:
    sealed = seal(KEY, b"", segment_size=SEG)
    assert len(sealed) == HEADER_SIZE + 16 == sealed_size(0, SEG)
    assert open_sealed(KEY, sealed) == b""


def test_exact_multiple_ends_with_a_full_final_segment() -> None:
    data = os.urandom(2 * SEG)
    sealed = seal(KEY, data, segment_size=SEG, nonce_prefix=PREFIX)
    assert len(sealed) == HEADER_SIZE + 2 * (SEG + 16)
    last = sealed[HEADER_SIZE + SEG + 16 :]
    nonce = PREFIX + struct.pack(">IB", 1, 1)
    assert AESGCM(KEY).decrypt(nonce, last, sealed[:HEADER_SIZE]) == data[SEG:]


@pytest.mark.parametrize(
    ("size", "segments"),
    [(0, 1), (1, 1), (SEG - 1, 1), (SEG, 1), (SEG + 1, 2), (3 * SEG, 3), (3 * SEG + 1, 4)],
)
def test_sealed_size_and_inverse(size: int, segments: int) -> None:
    assert sealed_size(size, SEG) == HEADER_SIZE + size + 16 * segments
    assert plaintext_size(sealed_size(size, SEG), SEG) == size


def test_default_segment_size_is_one_mib() -> None:
    assert DEFAULT_SEGMENT_SIZE == 1048576
    assert parse_header(seal(KEY, b"")).segment_size == DEFAULT_SEGMENT_SIZE
    assert sealed_size(3 * 2**20) == HEADER_SIZE + 3 * 2**20 + 3 * 16


@pytest.mark.parametrize(
    "bad",
    [0, HEADER_SIZE, HEADER_SIZE + 15, HEADER_SIZE + SEG + 16 + 5, HEADER_SIZE + SEG + 32],
)
def test_plaintext_size_rejects_impossible_sizes(bad: int) -> None:
    with pytest.raises(InvalidInputError):
        plaintext_size(bad, SEG)


@pytest.mark.parametrize("size", [MIN_SEGMENT_SIZE - 1, MAX_SEGMENT_SIZE + 1, 0, -1])
def test_segment_size_out_of_range_is_rejected(size: int) -> None:
    with pytest.raises(InvalidInputError):
        Sealer(KEY, size)
    with pytest.raises(InvalidInputError):
        sealed_size(10, size)


@pytest.mark.parametrize("size", [MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE])
def test_segment_size_bounds_are_accepted(size: int) -> None:
    data = os.urandom(size + 1)
    assert open_sealed(KEY, seal(KEY, data, segment_size=size)) == data


@pytest.mark.parametrize("key", [b"", b"k" * 31, b"k" * 33])
def test_key_must_be_32_bytes(key: bytes) -> None:
    with pytest.raises(InvalidInputError):
        seal(key, b"data")
    with pytest.raises(InvalidInputError):
        Opener(key)


def test_new_data_key_is_random_32_bytes() -> None:
    keys = {new_data_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(k) == 32 for k in keys)


def test_nonce_prefix_is_random_unless_given() -> None:
    assert seal(KEY, b"same") != seal(KEY, b"same")
    assert seal(KEY, b"same", nonce_prefix=PREFIX) == seal(KEY, b"same", nonce_prefix=PREFIX)
    with pytest.raises(InvalidInputError):
        Sealer(KEY, nonce_prefix=b"short")


def test_segment_offset() -> None:
    assert segment_offset(0, SEG) == HEADER_SIZE
    assert segment_offset(3, SEG) == HEADER_SIZE + 3 * (SEG + 16)


segment_sizes = st.sampled_from([SEG, SEG + 1, 5000, 2 * SEG])


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int]:
    """A segment size and a plaintext size near the interesting edges."""
    segment = draw(segment_sizes)
    kind = draw(st.sampled_from(["small", "multiple", "random"]))
    if kind == "small":
        return segment, draw(st.sampled_from([0, 1, 2]))
    if kind == "multiple":
        return segment, draw(st.integers(1, 4)) * segment + draw(st.sampled_from([-1, 0, 1]))
    return segment, draw(st.integers(0, 5 * segment))


@settings(max_examples=60, deadline=None)
@given(sizes())
def test_round_trip_property(case: tuple[int, int]) -> None:
    segment, size = case
    data = os.urandom(size)
    sealed = seal(KEY, data, segment_size=segment)
    assert len(sealed) == sealed_size(size, segment)
    assert plaintext_size(len(sealed), segment) == size
    assert open_sealed(KEY, sealed) == data


@settings(max_examples=60, deadline=None)
@given(sizes(), st.lists(st.integers(0, 10**6), max_size=12), st.lists(st.integers(0, 10**6)))
def test_streaming_with_random_chunks_equals_one_shot(
    case: tuple[int, int], seal_cuts: list[int], open_cuts: list[int]
) -> None:
    segment, size = case
    data = os.urandom(size)
    one_shot = seal(KEY, data, segment_size=segment, nonce_prefix=PREFIX)

    sealer = Sealer(KEY, segment, nonce_prefix=PREFIX)
    pieces = [sealer.update(chunk) for chunk in _split(data, seal_cuts)]
    streamed = b"".join(pieces) + sealer.finalize()
    assert streamed == one_shot
    assert b"".join(seal_chunks(KEY, _split(data, seal_cuts), segment, PREFIX)) == one_shot

    opener = Opener(KEY)
    opened = b"".join(opener.update(chunk) for chunk in _split(one_shot, open_cuts))
    assert opened + opener.finalize() == data
    assert b"".join(open_chunks(KEY, _split(one_shot, open_cuts))) == data


def test_sealer_holds_back_the_last_segment() -> None:
    sealer = Sealer(KEY, SEG, nonce_prefix=PREFIX)
    assert sealer.update(b"a" * SEG) == sealer.header  # full, but it may be the last one
    out = sealer.update(b"b")  # now segment 0 is known not to be last
    assert len(out) == SEG + 16
    assert sealer.update(b"c" * (SEG - 1)) == b""
    final = sealer.finalize()
    assert len(final) == SEG + 16
    expected = seal(KEY, b"a" * SEG + b"b" + b"c" * (SEG - 1), SEG, PREFIX)
    assert sealer.header + out + final == expected


def test_sealer_emits_header_first_even_with_no_data() -> None:
    sealer = Sealer(KEY, SEG)
    assert sealer.update(b"") == sealer.header
    assert sealer.update(b"") == b""
    assert len(sealer.finalize()) == 16
    with pytest.raises(InvalidInputError):
        sealer.update(b"more")


def test_opener_releases_a_segment_once_it_is_known_not_last() -> None:
    data = os.urandom(2 * SEG)
    sealed = seal(KEY, data, segment_size=SEG)
    opener = Opener(KEY)
    first_segment_end = HEADER_SIZE + SEG + 16
    assert opener.update(sealed[:first_segment_end]) == b""
    assert opener.header is not None and opener.header.segment_size == SEG
    assert opener.update(sealed[first_segment_end : first_segment_end + 1]) == data[:SEG]
    assert opener.update(sealed[first_segment_end + 1 :]) == b""
    assert opener.finalize() == data[SEG:]
    with pytest.raises(InvalidInputError):
        opener.update(b"x")


def test_huge_single_update_is_framed_without_buffering_everything() -> None:
    data = os.urandom(10 * SEG + 7)
    sealer = Sealer(KEY, SEG, nonce_prefix=PREFIX)
    out = sealer.update(data)
    assert len(out) == HEADER_SIZE + 10 * (SEG + 16)
    assert len(sealer._framer.tail) == 7
    assert out + sealer.finalize() == seal(KEY, data, SEG, PREFIX)


def test_accepts_bytearray_and_non_byte_memoryviews() -> None:
    words = array.array("I", range(5000))
    raw = words.tobytes()
    sealed = seal(KEY, memoryview(words), segment_size=SEG)
    assert open_sealed(KEY, bytearray(sealed)) == raw
    assert open_sealed(bytearray(KEY), memoryview(sealed)) == raw


def test_sealer_does_not_keep_a_reference_to_mutable_input() -> None:
    buf = bytearray(b"a" * 100)
    sealer = Sealer(KEY, SEG, nonce_prefix=PREFIX)
    sealed = sealer.update(buf)
    buf[:] = b"b" * 100  # a caller reusing its read buffer
    sealed += sealer.finalize()
    assert open_sealed(KEY, sealed) == b"a" * 100


def test_open_segment_random_access() -> None:
    data = os.urandom(3 * SEG + 100)
    sealed = seal(KEY, data, segment_size=SEG)
    header = sealed[:HEADER_SIZE]
    for index in range(4):
        start = segment_offset(index, SEG)
        chunk = sealed[start : start + SEG + 16]
        assert (
            open_segment(KEY, header, index, chunk, last=index == 3)
            == data[index * SEG : (index + 1) * SEG]
        )
    assert (
        open_segment(KEY, parse_header(header), 3, sealed[segment_offset(3, SEG) :], True)
        == (data[3 * SEG :])
    )


def test_module_exports_are_defined() -> None:
    for name in stream.__all__:
        assert hasattr(stream, name), name
