"""CIDs: our fast binary/base32 paths agree with the multiformats reference package."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID as MfCid

from medmesh.errors import BlockMismatchError, InvalidCidError
from medmesh.storage.cid import BLAKE3, DAG_CBOR, DAG_PB, IDENTITY, PROBE_CID, RAW, SHA2_256, Cid

codecs = st.sampled_from([RAW, DAG_PB, DAG_CBOR])
hashes = st.sampled_from([SHA2_256, BLAKE3])


@given(codecs, hashes, st.binary(min_size=32, max_size=32))
def test_v1_text_and_bytes_match_multiformats(codec: int, hash_code: int, digest: bytes) -> None:
    cid = Cid(1, codec, hash_code, digest)
    ref = MfCid.decode(bytes(cid))
    assert str(cid) == str(ref.set(base="base32"))
    assert Cid.parse(str(cid)) == cid
    assert Cid.parse(str(ref.set(base="base58btc"))) == cid  # other multibases go via multiformats
    assert Cid.from_bytes(bytes(ref)) == cid


@given(st.binary(min_size=32, max_size=32))
def test_v0(digest: bytes) -> None:
    cid = Cid(0, DAG_PB, SHA2_256, digest)
    assert str(cid) == str(MfCid.decode(bytes(cid)))
    assert Cid.parse(str(cid)) == cid
    assert cid.to_v1().version == 1 and cid.to_v1().multihash == cid.multihash


def test_known_vectors() -> None:
    assert (
        str(Cid.of(b"hello world\n"))
        == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    )
    assert str(PROBE_CID) == "bafkqaaa"
    assert Cid.parse("bafkqaaa").hash_code == IDENTITY


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "baaaa",
        "not-a-cid",
        "../../etc/passwd",
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei",  # truncated
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei5",  # bad padding bits
        "Qm123",
        "zzzz",
        "b" + "a" * 600,
        "bafkqaaa\x00",
        "bäfk",
    ],
)
def test_malformed_cids_are_refused_without_echo(text: str) -> None:
    with pytest.raises(InvalidCidError) as info:
        Cid.parse(text)
    if len(text) > 3:
        assert text not in info.value.message


def test_verify() -> None:
    cid = Cid.of(b"abc", hash_code=BLAKE3)
    cid.verify(b"abc")
    with pytest.raises(BlockMismatchError):
        cid.verify(b"abd")


def test_unsupported_hash_refused() -> None:
    ref = MfCid("base32", 1, "raw", ("sha2-512", bytes(64)))
    with pytest.raises(InvalidCidError):
        Cid.parse(str(ref))


def test_immutable_and_hashable() -> None:
    a, b = Cid.of(b"x"), Cid.of(b"x")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.version = 0  # type: ignore[misc]


@given(
    codecs, st.binary(min_size=32, max_size=32), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567")
)
def test_only_the_canonical_base32_text_parses(codec: int, digest: bytes, last: str) -> None:
    """Any last character: the text parses only if it is the CID's own text form (no bits
    set past the last byte), and then it is that CID."""
    cid = Cid(1, codec, SHA2_256, digest)
    text = str(cid)[:-1] + last
    try:
        parsed = Cid.parse(text)
    except InvalidCidError:
        assert text != str(cid)
    else:
        assert str(parsed) == text == str(Cid.from_bytes(bytes(parsed)))


@given(codecs, hashes, st.binary(min_size=32, max_size=32))
def test_a_pickled_cid_comes_back_whole(codec: int, hash_code: int, digest: bytes) -> None:
    """Worker processes send CIDs by pickle, rebuilt from their parts: the same CID in
    every respect (equality, hash, binary and text forms)."""
    import pickle

    for cid in (Cid(1, codec, hash_code, digest), Cid(0, DAG_PB, SHA2_256, digest)):
        fresh = pickle.loads(pickle.dumps(cid))  # before its text form was made
        assert str(fresh) == str(cid)
        back = pickle.loads(pickle.dumps(cid))  # after: the text travels with it
        assert back == cid and hash(back) == hash(cid)
        assert bytes(back) == bytes(cid) and str(back) == str(cid)
        assert (back.version, back.codec, back.hash_code, back.digest) == (
            cid.version, cid.codec, cid.hash_code, cid.digest,
        )  # fmt: skip
