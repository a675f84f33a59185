"""medmesh.runtime: servers collect garbage on their own thresholds, and give the previous
ones back when they stop (a test run embedding a gateway keeps its own)."""

from __future__ import annotations

import gc

import pytest

from medmesh.runtime import SERVER_GC_THRESHOLDS, server_gc


def test_server_thresholds_while_serving_and_the_old_ones_after() -> None:
    before = gc.get_threshold()
    assert before != SERVER_GC_THRESHOLDS
    with server_gc():
        assert gc.get_threshold() == SERVER_GC_THRESHOLDS
    assert gc.get_threshold() == before


def test_the_old_thresholds_come_back_after_a_crash() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), server_gc():
        raise RuntimeError("the server failed")
    assert gc.get_threshold() == before


def test_servers_that_overlap_restore_the_thresholds_once_the_last_stops() -> None:
    before = gc.get_threshold()
    first, second = server_gc(), server_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first stops while the second still serves
    assert gc.get_threshold() == SERVER_GC_THRESHOLDS
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
