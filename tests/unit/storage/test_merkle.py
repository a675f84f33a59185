"""Tests for medmesh.storage.merkle (segment Merkle trees and storage proofs)."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import InvalidInputError
from medmesh.storage.merkle import (
    SEGMENT_SIZE,
    MerkleProof,
    MerkleTree,
    merkle_root,
    prove,
    segment_count,
    verify_proof,
)


def _leaf(segment: bytes) -> bytes:
    return blake3(b"\x00" + segment).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return blake3(b"\x01" + left + right).digest()


def _rfc6962_root(data: bytes, segment_size: int) -> bytes:
    """RFC 6962 section 2.1 MTH, written recursively and independently of the module."""
    segments = [data[i : i + segment_size] for i in range(0, len(data), segment_size)] or [b""]

    def mth(items: list[bytes]) -> bytes:
        if len(items) == 1:
            return _leaf(items[0])
        split = 1
        while split * 2 < len(items):
            split *= 2
        return _node(mth(items[:split]), mth(items[split:]))

    return mth(segments)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# -- shape -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length,expected",
    [(0, 1), (1, 1), (4095, 1), (4096, 1), (4097, 2), (1 << 20, 256), ((1 << 20) + 1, 257)],
)
def test_segment_count(length: int, expected: int) -> None:
    assert segment_count(length) == expected
    assert MerkleTree(bytes(length)).segment_count == expected


def test_segment_count_with_other_sizes() -> None:
    assert segment_count(10, 3) == 4
    assert segment_count(9, 3) == 3
    assert segment_count(0, 1) == 1


@pytest.mark.parametrize("length,size", [(-1, 4096), (10, 0), (10, -5), (True, 4096), (10, True)])
def test_segment_count_rejects_bad_arguments(length: int, size: int) -> None:
    with pytest.raises(InvalidInputError):
        segment_count(length, size)


def test_empty_share_has_one_empty_segment() -> None:
    assert merkle_root(b"") == _leaf(b"")
    proof = prove(b"", 0)
    assert proof == MerkleProof(index=0, segment=b"", path=())
    assert verify_proof(merkle_root(b""), proof, 0)


def test_single_segment_root_is_its_leaf_hash() -> None:
    data = _rand(SEGMENT_SIZE, 1)
    assert merkle_root(data) == _leaf(data)


def test_two_segments() -> None:
    data = _rand(SEGMENT_SIZE + 5, 2)
    assert merkle_root(data) == _node(_leaf(data[:SEGMENT_SIZE]), _leaf(data[SEGMENT_SIZE:]))


def test_odd_node_is_promoted_not_duplicated() -> None:
    a, b, c = b"a" * 4, b"b" * 4, b"c" * 4
    three = merkle_root(a + b + c, 4)
    assert three == _node(_node(_leaf(a), _leaf(b)), _leaf(c))
    # Duplicating the odd node (Bitcoin style) would make these two shares collide.
    assert merkle_root(a + b + c + c, 4) != three
    assert merkle_root(a + b + c + c, 4) == _node(
        _node(_leaf(a), _leaf(b)), _node(_leaf(c), _leaf(c))
    )


def test_leaf_cannot_pose_as_inner_node() -> None:
    a, b = _rand(32, 3), _rand(32, 4)
    root = merkle_root(a + b, 32)
    forged = _leaf(a) + _leaf(b)  # a 64-byte "share" made of the two child hashes
    assert merkle_root(forged, 64) != root
    assert not verify_proof(root, MerkleProof(0, forged, ()), 64, 64)


@pytest.mark.parametrize("count", [*range(1, 34), 63, 64, 65, 100])
def test_root_equals_rfc6962_tree_hash(count: int) -> None:
    data = _rand(count * 16 - 3, count)
    assert segment_count(len(data), 16) == count
    assert merkle_root(data, 16) == _rfc6962_root(data, 16)


def test_root_of_one_mib_share() -> None:
    data = _rand(1 << 20, 5)
    root = merkle_root(data)
    assert root == _rfc6962_root(data, SEGMENT_SIZE)
    assert MerkleTree(data).root == root


def test_root_accepts_bytearray_and_memoryview() -> None:
    data = _rand(10_000, 6)
    root = merkle_root(data)
    assert merkle_root(bytearray(data)) == root
    assert merkle_root(memoryview(data)) == root
    assert MerkleTree(memoryview(data)).root == root


def test_root_rejects_non_bytes_and_bad_segment_size() -> None:
    with pytest.raises(InvalidInputError):
        merkle_root("text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        merkle_root(b"abc", 0)
    with pytest.raises(InvalidInputError):
        MerkleTree(b"abc", -1)


def test_changing_any_segment_changes_the_root() -> None:
    data = _rand(5 * 64 + 10, 7)
    root = merkle_root(data, 64)
    for pos in range(0, len(data), 37):
        assert merkle_root(_flip(data, pos * 8), 64) != root
    assert merkle_root(data + b"\x00", 64) != root
    assert merkle_root(data[:-1], 64) != root


# -- proofs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 5 * SEGMENT_SIZE + 7, 1 << 20],
)
def test_every_index_verifies(length: int) -> None:
    data = _rand(length, length)
    tree = MerkleTree(data)
    root = merkle_root(data)
    assert tree.root == root
    for index in range(tree.segment_count):
        proof = tree.prove(index)
        assert proof.segment == data[index * SEGMENT_SIZE : (index + 1) * SEGMENT_SIZE]
        assert verify_proof(root, proof, length), index


def test_prove_function_matches_tree() -> None:
    data = _rand(9 * 100 + 1, 8)
    tree = MerkleTree(data, 100)
    for index in range(10):
        assert prove(data, index, 100) == tree.prove(index)


def test_path_lengths_skip_promoted_levels() -> None:
    tree = MerkleTree(bytes(5 * 8), 8)  # 5 leaves: levels of 5, 3, 2, 1
    assert [len(tree.prove(i).path) for i in range(5)] == [3, 3, 3, 3, 1]


@pytest.mark.parametrize("index", [-1, 3, 100, True])
def test_prove_rejects_out_of_range_index(index: int) -> None:
    tree = MerkleTree(bytes(3 * 8), 8)
    with pytest.raises(InvalidInputError):
        tree.prove(index)


def test_every_bit_flip_in_segment_or_path_fails() -> None:
    size = 64
    data = _rand(12 * size + 20, 9)  # 13 segments, last one short
    tree = MerkleTree(data, size)
    for index in range(tree.segment_count):
        proof = tree.prove(index)
        assert verify_proof(tree.root, proof, len(data), size)
        for bit in range(len(proof.segment) * 8):
            bad = dataclasses.replace(proof, segment=_flip(proof.segment, bit))
            assert not verify_proof(tree.root, bad, len(data), size), (index, bit)
        for element in range(len(proof.path)):
            for bit in range(256):
                path = list(proof.path)
                path[element] = _flip(path[element], bit)
                bad = dataclasses.replace(proof, path=tuple(path))
                assert not verify_proof(tree.root, bad, len(data), size), (index, element, bit)


def test_every_bit_flip_in_root_fails() -> None:
    data = _rand(3 * SEGMENT_SIZE, 10)
    tree = MerkleTree(data)
    proof = tree.prove(1)
    for bit in range(256):
        assert not verify_proof(_flip(tree.root, bit), proof, len(data))


def test_wrong_index_fails() -> None:
    # Random segments are all distinct; with equal segments another index can be truly valid.
    size = 32
    data = _rand(11 * size, 11)
    tree = MerkleTree(data, size)
    for index in range(11):
        proof = tree.prove(index)
        for other in range(11):
            if other != index:
                moved = dataclasses.replace(proof, index=other)
                assert not verify_proof(tree.root, moved, len(data), size), (index, other)


@pytest.mark.parametrize("index", [11, 12, 1 << 40, -1])
def test_index_out_of_range_fails(index: int) -> None:
    size = 32
    data = _rand(11 * size, 12)
    tree = MerkleTree(data, size)
    proof = dataclasses.replace(tree.prove(10), index=index)
    assert not verify_proof(tree.root, proof, len(data), size)


def test_truncated_or_extended_path_fails() -> None:
    size = 32
    data = _rand(11 * size, 13)
    tree = MerkleTree(data, size)
    extra = _rand(32, 14)
    for index in range(11):
        proof = tree.prove(index)
        variants = [
            proof.path[:-1],
            proof.path[1:],
            (*proof.path, extra),
            (extra, *proof.path),
            (*proof.path, proof.path[-1]),
            (),
        ]
        for path in variants:
            bad = dataclasses.replace(proof, path=path)
            assert not verify_proof(tree.root, bad, len(data), size), (index, path)


def test_path_element_of_wrong_size_fails() -> None:
    data = _rand(4 * 32, 15)
    tree = MerkleTree(data, 32)
    proof = tree.prove(0)
    for bad_hash in (proof.path[0][:-1], proof.path[0] + b"\x00", b""):
        bad = dataclasses.replace(proof, path=(bad_hash, *proof.path[1:]))
        assert not verify_proof(tree.root, bad, len(data), 32)


def test_segment_of_wrong_length_fails() -> None:
    size = 32
    data = _rand(3 * size + 5, 16)  # last segment is 5 bytes
    tree = MerkleTree(data, size)
    last = tree.prove(3)
    assert len(last.segment) == 5
    assert not verify_proof(
        tree.root, dataclasses.replace(last, segment=last.segment + b"\0"), len(data), size
    )
    assert not verify_proof(
        tree.root, dataclasses.replace(last, segment=last.segment[:-1]), len(data), size
    )
    first = tree.prove(0)
    assert not verify_proof(
        tree.root, dataclasses.replace(first, segment=first.segment[:-1]), len(data), size
    )


def test_proof_from_one_share_fails_for_another() -> None:
    a, b = _rand(5000, 17), _rand(5000, 18)
    assert not verify_proof(merkle_root(b), prove(a, 1), 5000)


def test_root_of_wrong_type_or_size_fails() -> None:
    data = _rand(100, 19)
    proof = prove(data, 0)
    root = merkle_root(data)
    assert not verify_proof(root[:-1], proof, 100)
    assert not verify_proof(root + b"\x00", proof, 100)
    assert not verify_proof(root.hex(), proof, 100)  # type: ignore[arg-type]


def test_verify_rejects_bad_caller_arguments() -> None:
    proof = prove(b"abc", 0)
    with pytest.raises(InvalidInputError):
        verify_proof(merkle_root(b"abc"), proof, -1)
    with pytest.raises(InvalidInputError):
        verify_proof(merkle_root(b"abc"), proof, 3, 0)


def test_verify_needs_the_segment_size_used_to_build() -> None:
    data = _rand(1000, 20)
    proof = prove(data, 0, 100)
    assert verify_proof(merkle_root(data, 100), proof, 1000, 100)
    assert not verify_proof(merkle_root(data, 100), proof, 1000, 200)


# -- wire form ---------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    data = _rand(7 * SEGMENT_SIZE + 3, 21)
    for index in (0, 6, 7):
        proof = prove(data, index)
        wire = json.dumps(proof.to_json())
        back = MerkleProof.from_json(json.loads(wire))
        assert back == proof
        assert verify_proof(merkle_root(data), back, len(data))


def test_json_shape() -> None:
    proof = MerkleProof(index=2, segment=b"\xab\xcd", path=(b"\x01" * 32,))
    assert proof.to_json() == {"index": 2, "segment": "abcd", "path": ["01" * 32]}


_GOOD = {"index": 1, "segment": "00ff", "path": ["aa" * 32]}


@pytest.mark.parametrize(
    "doc",
    [
        {"index": 1, "segment": "00ff"},
        {**_GOOD, "extra": 1},
        {**_GOOD, "index": -1},
        {**_GOOD, "index": True},
        {**_GOOD, "index": "1"},
        {**_GOOD, "segment": "00FF"},
        {**_GOOD, "segment": "0ff"},
        {**_GOOD, "segment": "00 ff"},
        {**_GOOD, "segment": "zz"},
        {**_GOOD, "segment": b"\x00"},
        {**_GOOD, "path": "aa" * 32},
        {**_GOOD, "path": ["aa" * 31]},
        {**_GOOD, "path": ["aa" * 33]},
        {**_GOOD, "path": [None]},
        {**_GOOD, "path": ["aa" * 32] * 65},
        ["index", "segment", "path"],
    ],
)
def test_from_json_is_strict(doc: object) -> None:
    with pytest.raises(InvalidInputError):
        MerkleProof.from_json(doc)  # type: ignore[arg-type]


def test_from_json_accepts_the_good_document() -> None:
    assert MerkleProof.from_json(_GOOD) == MerkleProof(1, b"\x00\xff", (b"\xaa" * 32,))


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64), st.data())
def test_any_proof_verifies_and_root_is_rfc6962(
    data: bytes, size: int, draw: st.DataObject
) -> None:
    count = segment_count(len(data), size)
    index = draw.draw(st.integers(0, count - 1))
    root = merkle_root(data, size)
    assert root == _rfc6962_root(data, size)
    proof = prove(data, index, size)
    assert verify_proof(root, proof, len(data), size)
    assert MerkleProof.from_json(json.loads(json.dumps(proof.to_json()))) == proof


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.integers(1, 32), st.data())
def test_any_tampered_proof_fails(data: bytes, size: int, draw: st.DataObject) -> None:
    count = segment_count(len(data), size)
    index = draw.draw(st.integers(0, count - 1))
    proof = prove(data, index, size)
    root = merkle_root(data, size)
    targets = ["segment"] + (["path"] if proof.path else [])
    target = draw.draw(st.sampled_from(targets))
    if target == "segment":
        bit = draw.draw(st.integers(0, len(proof.segment) * 8 - 1))
        bad = dataclasses.replace(proof, segment=_flip(proof.segment, bit))
    else:
        element = draw.draw(st.integers(0, len(proof.path) - 1))
        bit = draw.draw(st.integers(0, 255))
        path = list(proof.path)
        path[element] = _flip(path[element], bit)
        bad = dataclasses.replace(proof, path=tuple(path))
    assert not verify_proof(root, bad, len(data), size)
