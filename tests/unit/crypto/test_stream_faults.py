"""Sealed stream faults: every alteration is detected, typed, and releases no bad plaintext."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from medmesh.crypto.errors import (
    DecryptionError,
    InvalidHeaderError,
    SegmentOrderError,
    SegmentTamperedError,
    TrailingDataError,
    TruncatedStreamError,
    WrongKeyError,
)
from medmesh.crypto.stream import (
    HEADER_SIZE,
    MIN_SEGMENT_SIZE,
    Opener,
    open_chunks,
    open_sealed,
    open_segment,
    seal,
    segment_offset,
)
from medmesh.errors import IntegrityError, InvalidInputError

SEG = MIN_SEGMENT_SIZE
FULL = SEG + 16
KEY = os.urandom(32)
DATA = os.urandom(3 * SEG + 1000)  # segments 0..2 full, segment 3 partial (final)
SEALED = seal(KEY, DATA, segment_size=SEG)


def _segments(sealed: bytes) -> list[bytes]:
    body = sealed[HEADER_SIZE:]
    return [body[i : i + FULL] for i in range(0, len(body), FULL)]


def _assemble(segments: list[bytes], sealed: bytes = SEALED) -> bytes:
    return sealed[:HEADER_SIZE] + b"".join(segments)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _open_streaming(data: bytes, chunk: int = 1000) -> bytes:
    opener = Opener(KEY)
    out = b"".join(opener.update(data[i : i + chunk]) for i in range(0, len(data), chunk))
    return out + opener.finalize()


OPENERS: list[Callable[[bytes], bytes]] = [
    lambda data: open_sealed(KEY, data),
    _open_streaming,
    lambda data: b"".join(open_chunks(KEY, [data[i : i + 777] for i in range(0, len(data), 777)])),
]
openers = pytest.mark.parametrize("open_", OPENERS, ids=["one_shot", "opener", "open_chunks"])


def test_error_family() -> None:
    for error in (
        InvalidHeaderError,
        WrongKeyError,
        TruncatedStreamError,
        SegmentOrderError,
        SegmentTamperedError,
        TrailingDataError,
    ):
        assert issubclass(error, DecryptionError)
    assert issubclass(DecryptionError, IntegrityError)


def test_unaltered_stream_opens() -> None:
    for open_ in OPENERS:
        assert open_(SEALED) == DATA


@openers
def test_truncation_at_a_segment_boundary(open_: Callable[[bytes], bytes]) -> None:
    for keep in (1, 2, 3):
        with pytest.raises(TruncatedStreamError):
            open_(_assemble(_segments(SEALED)[:keep]))


def test_truncation_at_a_boundary_of_an_exact_multiple_stream() -> None:
    sealed = seal(KEY, os.urandom(2 * SEG), segment_size=SEG)
    with pytest.raises(TruncatedStreamError, match="segment 0"):
        open_sealed(KEY, sealed[: HEADER_SIZE + FULL])


@openers
def test_truncation_to_the_bare_header(open_: Callable[[bytes], bytes]) -> None:
    with pytest.raises(TruncatedStreamError):
        open_(SEALED[:HEADER_SIZE])


@openers
def test_truncation_mid_segment(open_: Callable[[bytes], bytes]) -> None:
    # Cut inside segment 2: the remainder cannot authenticate as the final segment.
    cut = segment_offset(2, SEG) + 100
    with pytest.raises(SegmentTamperedError, match="segment 2") as info:
        open_(SEALED[:cut])
    assert info.value.index == 2
    # Cut leaving less than a tag of segment 3.
    with pytest.raises(TruncatedStreamError):
        open_(SEALED[: segment_offset(3, SEG) + 5])


@openers
def test_truncation_inside_the_header(open_: Callable[[bytes], bytes]) -> None:
    for cut in (0, 5, HEADER_SIZE - 1):
        with pytest.raises(InvalidHeaderError):
            open_(SEALED[:cut])


@openers
def test_swapping_two_segments(open_: Callable[[bytes], bytes]) -> None:
    segments = _segments(SEALED)
    segments[0], segments[1] = segments[1], segments[0]
    with pytest.raises(SegmentOrderError) as info:
        open_(_assemble(segments))
    assert (info.value.index, info.value.found) == (0, 1)


def test_moving_the_final_segment_forward() -> None:
    sealed = seal(KEY, os.urandom(4 * SEG), segment_size=SEG)  # final segment is full size
    segments = _segments(sealed)
    segments[1], segments[3] = segments[3], segments[1]
    with pytest.raises(SegmentOrderError) as info:
        _open_streaming(_assemble(segments, sealed))
    assert (info.value.index, info.value.found) == (1, 3)


def test_duplicated_segment() -> None:
    segments = _segments(SEALED)
    with pytest.raises(SegmentOrderError):
        open_sealed(KEY, _assemble([segments[0], segments[0], *segments[1:]]))


def test_dropped_middle_segment() -> None:
    segments = _segments(SEALED)
    with pytest.raises(SegmentOrderError) as info:
        open_sealed(KEY, _assemble([segments[0], *segments[2:]]))
    assert (info.value.index, info.value.found) == (1, 2)


def test_order_search_is_limited_to_the_window() -> None:
    data = os.urandom(20 * SEG)
    sealed = seal(KEY, data, segment_size=SEG)
    segments = _segments(sealed)
    assert len(segments) == 20
    near = segments.copy()
    near[2], near[18] = near[18], near[2]  # 16 apart: found
    with pytest.raises(SegmentOrderError):
        open_sealed(KEY, _assemble(near, sealed))
    far = segments.copy()
    far[1], far[18] = far[18], far[1]  # 17 apart: outside the search window
    with pytest.raises(SegmentTamperedError):
        open_sealed(KEY, _assemble(far, sealed))


def test_segment_from_another_stream_under_the_same_key() -> None:
    other = seal(KEY, DATA, segment_size=SEG)  # same key and data, new nonce prefix
    segments = _segments(SEALED)
    segments[1] = _segments(other)[1]
    with pytest.raises(SegmentTamperedError, match="segment 1"):
        open_sealed(KEY, _assemble(segments))


def test_every_header_bit_flip_is_detected_before_any_output() -> None:
    for bit in range(HEADER_SIZE * 8):
        opener = Opener(KEY)
        with pytest.raises((InvalidHeaderError, WrongKeyError)):
            opener.update(_flip(SEALED, bit))  # the whole stream in one call: no output


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (0, InvalidHeaderError),
        (6, InvalidHeaderError),
        (7, InvalidHeaderError),
        (10, WrongKeyError),
        (12, WrongKeyError),
        (30, WrongKeyError),
    ],
    ids=["magic", "version", "suite", "segment_size", "nonce_prefix", "commitment"],
)
def test_header_field_tampering(offset: int, error: type[DecryptionError]) -> None:
    with pytest.raises(error):
        open_sealed(KEY, _flip(SEALED, offset * 8))


@openers
@pytest.mark.parametrize("segment", [0, 1, 3])
@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_flipped_bit_in_a_segment(
    open_: Callable[[bytes], bytes], segment: int, where: str
) -> None:
    start = segment_offset(segment, SEG)
    end = start + (FULL if segment < 3 else 1000 + 16)
    position = start + 17 if where == "ciphertext" else end - 3
    with pytest.raises(SegmentTamperedError, match=f"segment {segment}") as info:
        open_(_flip(SEALED, position * 8 + 5))
    assert info.value.index == segment


def test_wrong_key_is_detected_from_the_header_alone() -> None:
    opener = Opener(os.urandom(32))
    with pytest.raises(WrongKeyError):
        opener.update(SEALED[:HEADER_SIZE])
    with pytest.raises(InvalidInputError):  # a failed opener stays failed
        opener.update(SEALED[HEADER_SIZE:])
    with pytest.raises(WrongKeyError):
        open_sealed(os.urandom(32), SEALED)


def test_trailing_data_after_a_full_final_segment() -> None:
    sealed = seal(KEY, os.urandom(2 * SEG), segment_size=SEG)
    for extra in (b"\x00", os.urandom(100), sealed):
        with pytest.raises(TrailingDataError):
            open_sealed(KEY, sealed + extra)
        with pytest.raises(TrailingDataError):
            _open_streaming(sealed + extra)


def test_trailing_data_after_a_partial_final_segment() -> None:
    # Documented limitation: without a length, it looks like a damaged final segment.
    with pytest.raises(SegmentTamperedError, match="segment 3"):
        open_sealed(KEY, SEALED + b"\x00")


def test_no_plaintext_of_a_segment_is_released_before_its_tag_verifies() -> None:
    tampered = _flip(SEALED, (segment_offset(1, SEG) + 40) * 8)
    opener = Opener(KEY)
    released = opener.update(tampered[: segment_offset(2, SEG)])  # segment 1 complete
    assert released == DATA[:SEG]  # only segment 0, which verified
    with pytest.raises(SegmentTamperedError):
        opener.update(tampered[segment_offset(2, SEG) : segment_offset(2, SEG) + 1])


def test_open_chunks_yields_only_verified_segments_before_failing() -> None:
    tampered = _flip(SEALED, (segment_offset(2, SEG) + 40) * 8)
    chunks = [tampered[i : i + 500] for i in range(0, len(tampered), 500)]
    received: list[bytes] = []
    with pytest.raises(SegmentTamperedError):
        for piece in open_chunks(KEY, chunks):
            received.append(piece)
    assert b"".join(received) == DATA[: 2 * SEG]


def test_messages_never_contain_key_or_plaintext() -> None:
    small_key = KEY.hex()[:16]
    cases = [
        _flip(SEALED, (segment_offset(1, SEG) + 1) * 8),
        SEALED[: segment_offset(2, SEG)],
        SEALED + b"\x00",
        _assemble(list(reversed(_segments(SEALED)))),
    ]
    for case in cases:
        with pytest.raises(DecryptionError) as info:
            open_sealed(KEY, case)
        text = str(info.value) + repr(info.value)
        assert small_key not in text
        assert DATA[:8].hex() not in text
        assert repr(DATA[:8])[2:-1] not in text


class TestOpenSegment:
    header = SEALED[:HEADER_SIZE]
    segment1 = _segments(SEALED)[1]
    final = _segments(SEALED)[3]

    def test_wrong_index(self) -> None:
        with pytest.raises(SegmentOrderError) as info:
            open_segment(KEY, self.header, 2, self.segment1, last=False)
        assert info.value.found == 1

    def test_claims_last_for_an_inner_segment(self) -> None:
        with pytest.raises(TruncatedStreamError):
            open_segment(KEY, self.header, 1, self.segment1, last=True)

    def test_claims_inner_for_the_final_segment(self) -> None:
        with pytest.raises(SegmentTamperedError):  # wrong length for an inner segment
            open_segment(KEY, self.header, 3, self.final, last=False)
        exact = seal(KEY, os.urandom(2 * SEG), segment_size=SEG)
        with pytest.raises(TrailingDataError):
            open_segment(KEY, exact[:HEADER_SIZE], 1, _segments(exact)[1], last=False)

    def test_tampered(self) -> None:
        with pytest.raises(SegmentTamperedError):
            open_segment(KEY, self.header, 1, _flip(self.segment1, 99), last=False)

    def test_wrong_key(self) -> None:
        with pytest.raises(WrongKeyError):
            open_segment(os.urandom(32), self.header, 1, self.segment1, last=False)

    def test_bad_lengths_and_index(self) -> None:
        with pytest.raises(SegmentTamperedError):
            open_segment(KEY, self.header, 1, self.segment1[:-1], last=False)
        with pytest.raises(SegmentTamperedError):
            open_segment(KEY, self.header, 3, self.final[:15], last=True)
        with pytest.raises(InvalidInputError):
            open_segment(KEY, self.header, -1, self.segment1, last=False)
