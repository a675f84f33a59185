"""Tests for medmesh.storage.erasure (zfec k-of-n over stripes)."""

from __future__ import annotations

import itertools
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import InsufficientSharesError, InvalidInputError, StorageError
from medmesh.storage.erasure import (
    DEFAULT_PARAMS,
    ErasureParams,
    decode_stripe,
    encode_parity,
    encode_stripe,
    pad_stripe,
    unpad_stripe,
)

P35 = ErasureParams(3, 5)


def _blocks(k: int, length: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(length) for _ in range(k)]


# -- parameters ----------------------------------------------------------------------------


def test_default_params_are_3_of_5() -> None:
    assert ErasureParams() == DEFAULT_PARAMS == ErasureParams(k=3, n=5)
    assert DEFAULT_PARAMS.parity == 2


@pytest.mark.parametrize("k,n", [(1, 1), (1, 256), (256, 256), (10, 12)])
def test_params_accept_the_valid_range(k: int, n: int) -> None:
    params = ErasureParams(k, n)
    assert (params.k, params.n) == (k, n)


@pytest.mark.parametrize("k,n", [(0, 5), (-1, 5), (4, 3), (3, 257), (257, 257), (0, 0)])
def test_params_reject_out_of_range(k: int, n: int) -> None:
    with pytest.raises(InvalidInputError, match="1 <= k <= n <= 256"):
        ErasureParams(k, n)


@pytest.mark.parametrize("k,n", [(True, 5), (3.0, 5), ("3", 5), (3, None)])
def test_params_reject_non_integers(k: object, n: object) -> None:
    with pytest.raises(ValueError, match="must be an integer"):  # InvalidInputError is a ValueError
        ErasureParams(k, n)  # type: ignore[arg-type]


# -- encoding ------------------------------------------------------------------------------


def test_encode_is_systematic() -> None:
    data = _blocks(3, 1000)
    shares = encode_stripe(data, P35)
    assert len(shares) == 5
    assert shares[:3] == data
    assert all(len(s) == 1000 for s in shares)
    assert shares[3] != shares[4]
    assert all(s not in data for s in shares[3:])


def test_encode_parity_is_the_tail_of_encode_stripe() -> None:
    data = _blocks(3, 777, seed=1)
    assert encode_parity(data, P35) == encode_stripe(data, P35)[3:]


def test_encode_parity_reads_memoryview_slices_and_bytearrays() -> None:
    data = _blocks(3, 4096, seed=2)
    buf = bytearray(b"".join(data))
    view = memoryview(buf)
    slices = [view[i * 4096 : (i + 1) * 4096] for i in range(3)]
    expected = encode_parity(data, P35)
    assert encode_parity(slices, P35) == expected
    assert encode_parity([bytearray(b) for b in data], P35) == expected
    full = encode_stripe(slices, P35)
    assert all(type(s) is bytes for s in full)
    assert full[:3] == data


def test_encode_casts_wide_memoryviews_to_bytes() -> None:
    wide = memoryview(bytearray(range(12))).cast("I")  # 3 items of 4 bytes
    assert len(wide) == 3
    shares = encode_stripe([wide, wide, wide], P35)
    assert shares[0] == bytes(range(12))


def test_encode_refuses_non_contiguous_buffers() -> None:
    strided = memoryview(bytearray(20))[::2]
    with pytest.raises(InvalidInputError, match="contiguous"):
        encode_parity([strided, strided, strided], P35)


def test_encode_does_not_copy_full_length_bytes_blocks() -> None:
    data = _blocks(3, 64, seed=3)
    shares = encode_stripe(data, P35)
    assert all(shares[i] is data[i] for i in range(3))


def test_k_equals_n_has_no_parity() -> None:
    params = ErasureParams(2, 2)
    data = _blocks(2, 10)
    assert encode_parity(data, params) == []
    assert encode_stripe(data, params) == data
    assert decode_stripe({0: data[0], 1: data[1]}, params) == data


def test_encoding_is_deterministic_across_calls() -> None:
    data = _blocks(4, 300, seed=4)
    params = ErasureParams(4, 9)
    assert encode_stripe(data, params) == encode_stripe(list(data), params)


def test_max_256_shares_decode_from_the_last_k() -> None:
    params = ErasureParams(4, 256)
    data = _blocks(4, 32, seed=5)
    shares = encode_stripe(data, params)
    assert len(shares) == 256
    assert decode_stripe({i: shares[i] for i in range(252, 256)}, params) == data


# -- padding ---------------------------------------------------------------------------------


def test_pad_stripe_pads_short_blocks_and_adds_fillers() -> None:
    padded, lengths = pad_stripe([b"abcd", b"ef"], P35)
    assert padded == [b"abcd", b"ef\x00\x00", b"\x00\x00\x00\x00"]
    assert lengths == [4, 2]
    assert unpad_stripe(padded, lengths) == [b"abcd", b"ef"]


def test_short_stripe_encodes_like_its_padded_form() -> None:
    blocks = [os.urandom(1000), os.urandom(333)]
    padded, lengths = pad_stripe(blocks, P35)
    shares = encode_stripe(blocks, P35)
    assert shares == encode_stripe(padded, P35)
    assert encode_parity(blocks, P35) == shares[3:]
    decoded = decode_stripe({2: shares[2], 3: shares[3], 4: shares[4]}, P35)
    assert decoded == padded
    assert unpad_stripe(decoded, lengths) == blocks


def test_stripe_of_empty_blocks_gives_empty_shares() -> None:
    shares = encode_stripe([b""], P35)
    assert shares == [b""] * 5
    padded, lengths = pad_stripe([b""], P35)
    assert (padded, lengths) == ([b"", b"", b""], [0])
    decoded = decode_stripe({3: shares[3], 4: shares[4], 0: shares[0]}, P35)
    assert unpad_stripe(decoded, lengths) == [b""]


def test_empty_stripe_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="at least one block"):
        encode_stripe([], P35)
    with pytest.raises(InvalidInputError, match="at least one block"):
        pad_stripe([], P35)


def test_too_many_blocks_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="at most k=3"):
        encode_parity(_blocks(4, 8), P35)


def test_non_bytes_blocks_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="bytes-like"):
        encode_stripe(["abc", "def", "ghi"], P35)  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="sequence of blocks"):
        encode_stripe(b"abcdef", P35)  # type: ignore[arg-type]


def test_unpad_rejects_lengths_that_do_not_fit() -> None:
    with pytest.raises(InvalidInputError):
        unpad_stripe([b"ab", b"cd"], [1, 2, 3])
    with pytest.raises(InvalidInputError):
        unpad_stripe([b"ab"], [3])
    with pytest.raises(InvalidInputError):
        unpad_stripe([b"ab"], [-1])


# -- decoding --------------------------------------------------------------------------------


def test_every_3_subset_of_5_decodes() -> None:
    data = _blocks(3, 4099, seed=6)
    shares = encode_stripe(data, P35)
    for subset in itertools.combinations(range(5), 3):
        assert decode_stripe({i: shares[i] for i in subset}, P35) == data, subset


def test_decode_with_more_than_k_shares() -> None:
    data = _blocks(3, 100, seed=7)
    shares = encode_stripe(data, P35)
    assert decode_stripe(dict(enumerate(shares)), P35) == data
    assert decode_stripe({4: shares[4], 1: shares[1], 3: shares[3], 2: shares[2]}, P35) == data


def test_decode_accepts_memoryviews_and_returns_bytes() -> None:
    data = _blocks(3, 50, seed=8)
    shares = encode_stripe(data, P35)
    out = decode_stripe({i: memoryview(shares[i]) for i in (0, 3, 4)}, P35)
    assert out == data
    assert all(type(b) is bytes for b in out)


def test_decode_leaves_the_callers_mapping_alone() -> None:
    # zfec's decode() reorders its argument sequences in place.
    data = _blocks(3, 64, seed=9)
    shares = encode_stripe(data, P35)
    given_shares = {4: shares[4], 2: shares[2], 0: shares[0]}
    snapshot = list(given_shares.items())
    assert decode_stripe(given_shares, P35) == data
    assert list(given_shares.items()) == snapshot


def test_too_few_shares_raise_insufficient_shares() -> None:
    shares = encode_stripe(_blocks(3, 10), P35)
    with pytest.raises(InsufficientSharesError, match="needs 3 shares") as info:
        decode_stripe({0: shares[0], 4: shares[4]}, P35, stripe_index=7)
    assert info.value.missing_stripes == [7]
    assert isinstance(info.value, StorageError)
    with pytest.raises(InsufficientSharesError) as info2:
        decode_stripe({}, P35)
    assert info2.value.missing_stripes == []


@pytest.mark.parametrize("bad", [5, -1, 255, True])
def test_out_of_range_share_index_is_refused(bad: int) -> None:
    shares = encode_stripe(_blocks(3, 10), P35)
    given_shares = {bad: shares[3], 0: shares[0], 2: shares[2]}  # bad first: True == 1
    assert len(given_shares) == 3
    with pytest.raises(InvalidInputError, match="share index"):
        decode_stripe(given_shares, P35)


def test_unequal_share_lengths_are_refused() -> None:
    shares = encode_stripe(_blocks(3, 10), P35)
    with pytest.raises(InvalidInputError, match="same length"):
        decode_stripe({0: shares[0], 3: shares[3], 4: shares[4][:-1]}, P35)


def test_decoding_changes_with_a_corrupted_parity_share() -> None:
    # Erasure coding is not an integrity check: callers verify share CIDs first.
    data = _blocks(3, 32, seed=10)
    shares = encode_stripe(data, P35)
    bad = bytearray(shares[3])
    bad[0] ^= 1
    assert decode_stripe({0: shares[0], 1: shares[1], 3: bytes(bad)}, P35) != data


def test_coders_are_safe_to_share_between_threads() -> None:
    params = ErasureParams(5, 8)
    stripes = [_blocks(5, 20_000, seed=s) for s in range(24)]
    expected = [encode_stripe(s, params) for s in stripes]
    subsets = [random.Random(i).sample(range(8), 5) for i in range(24)]

    def roundtrip(i: int) -> tuple[list[bytes], list[bytes]]:
        shares = encode_stripe(stripes[i], params)
        return shares, decode_stripe({j: shares[j] for j in subsets[i]}, params)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(roundtrip, range(24)))
    for i, (shares, decoded) in enumerate(results):
        assert shares == expected[i]
        assert decoded == stripes[i]


# -- properties ------------------------------------------------------------------------------


Case = tuple[ErasureParams, list[bytes], list[int]]


@st.composite
def _stripe_cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, n))
    count = draw(st.integers(1, k))
    blocks = draw(st.lists(st.binary(max_size=300), min_size=count, max_size=count))
    subset = draw(st.permutations(range(n)))[:k]
    return ErasureParams(k, n), blocks, subset


@settings(max_examples=150, deadline=None)
@given(_stripe_cases())
def test_any_k_shares_rebuild_the_stripe(case: Case) -> None:
    params, blocks, subset = case
    padded, lengths = pad_stripe(blocks, params)
    shares = encode_stripe(blocks, params)
    assert len(shares) == params.n
    assert len({len(s) for s in shares}) == 1
    assert shares[: params.k] == padded
    assert encode_parity(blocks, params) == shares[params.k :]
    decoded = decode_stripe({i: shares[i] for i in subset}, params)
    assert decoded == padded
    assert unpad_stripe(decoded, lengths) == blocks


@settings(max_examples=50, deadline=None)
@given(_stripe_cases(), st.data())
def test_fewer_than_k_shares_never_decode(case: Case, data: st.DataObject) -> None:
    params, blocks, subset = case
    shares = encode_stripe(blocks, params)
    fewer = data.draw(st.integers(0, params.k - 1))
    with pytest.raises(InsufficientSharesError):
        decode_stripe({i: shares[i] for i in subset[:fewer]}, params)
