"""Tests for medmesh.storage.placement (rendezvous hashing of stripes onto nodes)."""

from __future__ import annotations

from collections import Counter

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import InsufficientSharesError, InvalidInputError, StorageError
from medmesh.storage.placement import node_score, place_stripe, rank_nodes, stripe_key

N = 20
NODES = [f"0x{blake3(bytes([i])).hexdigest()[:40]}" for i in range(N)]  # address-like ids
OBJECT = bytes.fromhex("01551e20") + blake3(b"object").digest()  # a CID's binary form


def _placements(nodes: list[str], stripes: int, n: int = 5) -> list[list[str]]:
    return [place_stripe(OBJECT, s, nodes, n) for s in range(stripes)]


# -- ranking -----------------------------------------------------------------------------------


def test_score_is_blake3_of_key_separator_node() -> None:
    assert node_score(b"key", "node-a") == blake3(b"key\x00node-a").digest()
    assert node_score(b"k", "\u00e9") == blake3(b"k\x00\xc3\xa9").digest()  # UTF-8


def test_rank_orders_by_score_descending() -> None:
    key = b"some key"
    ranked = rank_nodes(key, NODES)
    expected = sorted(
        NODES,
        key=lambda node: int.from_bytes(blake3(key + b"\x00" + node.encode()).digest(), "big"),
        reverse=True,
    )
    assert ranked == expected


def test_rank_ignores_input_order_and_repeats() -> None:
    key = b"k"
    ranked = rank_nodes(key, NODES)
    assert rank_nodes(key, list(reversed(NODES))) == ranked
    assert rank_nodes(key, NODES + NODES[:5]) == ranked
    assert rank_nodes(key, tuple(NODES)) == ranked


def test_rank_depends_on_key() -> None:
    assert rank_nodes(b"a", NODES) != rank_nodes(b"b", NODES)


def test_rank_of_no_nodes_is_empty() -> None:
    assert rank_nodes(b"k", []) == []


@pytest.mark.parametrize("nodes", [[""], ["ok", 3], "node-a", ["\ud800"]])
def test_rank_rejects_bad_node_ids(nodes: object) -> None:
    with pytest.raises(InvalidInputError):
        rank_nodes(b"k", nodes)  # type: ignore[arg-type]


def test_rank_rejects_non_bytes_key() -> None:
    with pytest.raises(InvalidInputError):
        rank_nodes("key", NODES)  # type: ignore[arg-type]


# -- stripe keys -------------------------------------------------------------------------------


def test_stripe_key_is_object_key_and_u64_be() -> None:
    assert stripe_key(b"obj", 0) == b"obj" + bytes(8)
    assert stripe_key(b"obj", 258) == b"obj" + bytes(6) + b"\x01\x02"
    assert stripe_key(b"obj", 2**64 - 1) == b"obj" + b"\xff" * 8


@pytest.mark.parametrize("index", [-1, 2**64, True, 1.0])
def test_stripe_key_rejects_bad_index(index: int) -> None:
    with pytest.raises(InvalidInputError):
        stripe_key(b"obj", index)


# -- place_stripe ------------------------------------------------------------------------------


def test_placement_is_the_top_of_the_stripe_ranking() -> None:
    for s in range(50):
        placed = place_stripe(OBJECT, s, NODES, 5)
        assert placed == rank_nodes(stripe_key(OBJECT, s), NODES)[:5]


def test_placement_is_n_distinct_known_nodes() -> None:
    for s, placed in enumerate(_placements(NODES, 200)):
        assert len(placed) == 5
        assert len(set(placed)) == 5, s
        assert set(placed) <= set(NODES)


def test_stripes_of_one_object_spread_over_different_nodes() -> None:
    assert len({tuple(p) for p in _placements(NODES, 50)}) > 45


def test_exclude_equals_leaving_the_nodes_out() -> None:
    excluded = set(NODES[:4])
    rest = [node for node in NODES if node not in excluded]
    for s in range(100):
        placed = place_stripe(OBJECT, s, NODES, 5, exclude=excluded)
        assert placed == place_stripe(OBJECT, s, rest, 5)
        assert not excluded & set(placed)


def test_too_few_nodes_raise_storage_error() -> None:
    with pytest.raises(StorageError, match="needs 5 distinct storage nodes, only 4") as info:
        place_stripe(OBJECT, 3, NODES[:4], 5)
    assert not isinstance(info.value, InsufficientSharesError)
    with pytest.raises(StorageError, match="only 3 eligible of 5"):
        place_stripe(OBJECT, 3, NODES[:5], 5, exclude=NODES[:2])


def test_allow_fewer_returns_every_eligible_node_in_rank_order() -> None:
    placed = place_stripe(OBJECT, 3, NODES[:4], 5, allow_fewer=True)
    assert placed == rank_nodes(stripe_key(OBJECT, 3), NODES[:4])
    assert place_stripe(OBJECT, 3, [], 5, allow_fewer=True) == []


@pytest.mark.parametrize("n", [0, -1, True])
def test_bad_n_is_refused(n: int) -> None:
    with pytest.raises(InvalidInputError):
        place_stripe(OBJECT, 0, NODES, n)


def test_exclude_as_a_string_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        place_stripe(OBJECT, 0, NODES, 5, exclude=NODES[0])


# -- stability and balance ---------------------------------------------------------------------


def test_adding_a_node_moves_about_one_in_n_plus_one() -> None:
    stripes = 1000
    before = _placements(NODES, stripes)
    after = _placements([*NODES, "0xnewcomer"], stripes)
    moved = 0
    for old, new in zip(before, after, strict=True):
        gone, came = set(old) - set(new), set(new) - set(old)
        if gone:
            # The newcomer displaces exactly the stripe's lowest-ranked node, nothing else.
            assert came == {"0xnewcomer"}
            assert gone == {old[-1]}
        else:
            assert new == old
        moved += len(gone)
    fraction = moved / (stripes * 5)
    ideal = 1 / (N + 1)  # the newcomer's fair share
    assert 0.6 * ideal < fraction < 1.5 * ideal, fraction


def test_removing_a_node_moves_only_what_it_held() -> None:
    stripes = 1000
    before = _placements(NODES, stripes)
    for gone_node in (NODES[0], NODES[7], NODES[-1]):
        live = [node for node in NODES if node != gone_node]
        after = _placements(live, stripes)
        held = 0
        for s, (old, new) in enumerate(zip(before, after, strict=True)):
            if gone_node not in old:
                assert new == old, s
                continue
            held += 1
            # Every surviving node stays, in the same relative order; one node comes in.
            assert [node for node in old if node != gone_node] == [
                node for node in new if node in old
            ]
            (replacement,) = set(new) - set(old)
            assert replacement == rank_nodes(stripe_key(OBJECT, s), NODES)[5]
            # The repair recipe from the module docstring finds the same node.
            survivors = [node for node in old if node != gone_node]
            assert place_stripe(OBJECT, s, live, 1, exclude=survivors) == [replacement]
        assert 0.5 * stripes * 5 / N < held < 1.5 * stripes * 5 / N


def test_load_is_balanced_across_nodes() -> None:
    stripes, n = 3000, 5
    placements = _placements(NODES, stripes, n)
    per_node = Counter(node for placed in placements for node in placed)
    expected = stripes * n / N  # 750
    assert set(per_node) == set(NODES)
    assert max(per_node.values()) / min(per_node.values()) < 1.3
    chi2 = sum((count - expected) ** 2 / expected for count in per_node.values())
    assert chi2 < 45.3  # chi-square, 19 degrees of freedom, p = 0.001
    # Every share index is spread evenly too (index 0 is the most-loaded data share).
    for index in range(n):
        per_index = Counter(placed[index] for placed in placements)
        assert max(per_index.values()) < 2 * min(per_index.values()), index


def test_balance_chi_square_would_catch_a_biased_placement() -> None:
    # The bound above is not vacuous: always preferring the first nodes fails it.
    stripes, n = 3000, 5
    expected = stripes * n / N
    biased = Counter(node for s in range(stripes) for node in sorted(NODES)[s % 6 : s % 6 + n])
    chi2 = sum((biased.get(node, 0) - expected) ** 2 / expected for node in NODES)
    assert chi2 > 45.3


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=40),
    st.integers(0, 2**64 - 1),
    st.sets(st.text(min_size=1, max_size=12), min_size=1, max_size=30),
    st.integers(1, 12),
    st.data(),
)
def test_placement_properties(
    key: bytes, stripe: int, nodes: set[str], n: int, data: st.DataObject
) -> None:
    node_list = sorted(nodes)
    exclude = data.draw(st.sets(st.sampled_from(node_list)))
    eligible = len(nodes - exclude)
    placed = place_stripe(key, stripe, node_list, n, exclude, allow_fewer=True)
    assert len(placed) == min(n, eligible)
    assert len(set(placed)) == len(placed)
    assert not set(placed) & exclude
    ranking = [
        node for node in rank_nodes(stripe_key(key, stripe), node_list) if node not in exclude
    ]
    assert placed == ranking[:n]
    if eligible < n:
        with pytest.raises(StorageError):
            place_stripe(key, stripe, node_list, n, exclude)
