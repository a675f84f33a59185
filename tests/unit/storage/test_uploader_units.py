"""Pieces of the put pipeline that need no network."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from medmesh.storage.uploader import _leaves


@given(st.lists(st.binary(max_size=700), max_size=30), st.integers(min_value=1, max_value=300))
def test_leaves_cut_any_pieces_into_exact_chunks(pieces: list[bytes], chunk: int) -> None:
    data = b"".join(pieces)
    leaves = list(_leaves(pieces, chunk))
    assert b"".join(leaves) == data
    assert all(len(leaf) == chunk for leaf in leaves[:-1])
    if leaves:
        assert 0 < len(leaves[-1]) <= chunk
    else:
        assert data == b""
