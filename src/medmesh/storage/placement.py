"""Rendezvous (highest-random-weight) placement of stripes onto storage nodes.

Every (key, node) pair gets a score ``BLAKE3(key || 0x00 || node_id)`` (node ids UTF-8 encoded,
scores compared as 256-bit big-endian numbers); a key's nodes are ranked by score, highest
first. The shares of stripe ``s`` of an object go to the first ``n`` eligible nodes in the
ranking for ``stripe_key(object_key, s) = object_key || s`` (``s`` as u64 big-endian): share
``i`` to element ``i``. Everyone who knows the registered node list computes the same placement,
with no coordination and no state. ``object_key`` is random for a streamed upload and
:func:`content_key` of the CID where the CID is known first (batches, one-leaf objects), so
readers of small objects know which node to ask first.

What stays put when the node list changes
-----------------------------------------
The guarantees are about the **set** of nodes that holds a stripe, and they are exact:

- *Removing* a node changes only the stripes it was in: there, it is replaced by the next node in
  that stripe's ranking, and every other node of the stripe stays in the set.
- *Adding* a node changes a stripe only if the newcomer ranks in its top ``n`` (probability
  ``n / (N + 1)`` with ``N`` old nodes); it then displaces exactly one node, the previous
  ``n``-th. So about ``1 / (N + 1)`` of all (stripe, node) assignments move: the minimum for the
  newcomer to get its fair share.
- Nodes are ranked the same way whatever order the list is given in.

The *share index* a node is given follows the rank order, so a membership change above a node in
the ranking shifts which index :func:`place_stripe` would now give it. No stateless scheme can
keep every index in place: removing two nodes ``x`` then ``y`` would have to give ``x``'s index
to the next node in one order and ``y``'s in the other. This does not matter in practice: shares
are content-addressed and listed by index in the share manifest, and the manifest (or the DHT)
records where each share actually went. Placement decides *first* placement and where to
*repair*: after losing node ``x``, the replacement for the share that ``x`` held is the one node
in ``place_stripe(..., live_nodes)`` that was not already in the stripe (or, equivalently,
``place_stripe(..., live_nodes, n=1, exclude=current_holders)``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

from blake3 import blake3

from medmesh.errors import InvalidInputError, StorageError

__all__ = ["content_key", "node_score", "place_stripe", "rank_nodes", "stripe_key"]

_SEP: Final = b"\x00"
_U64: Final = 1 << 64


def _node_bytes(node: str) -> bytes:
    if not isinstance(node, str) or not node:
        raise InvalidInputError("node ids must be non-empty strings")
    try:
        return node.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidInputError("node ids must be valid Unicode") from exc


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidInputError("placement key must be bytes")
    return bytes(key)


def node_score(key: bytes, node: str) -> bytes:
    """The rendezvous score of ``node`` for ``key``: ``BLAKE3(key || 0x00 || node_id)``.

    Compare scores as bytes (equivalently, as big-endian integers); higher wins.
    """
    return blake3(_check_key(key) + _SEP + _node_bytes(node)).digest()


def rank_nodes(key: bytes, nodes: Sequence[str]) -> list[str]:
    """``nodes`` ordered by rendezvous score for ``key``, highest first.

    Repeated node ids count once. Equal scores (a BLAKE3 collision, so never in practice) are
    broken by node id, ascending. The result does not depend on the order of ``nodes``.

    >>> rank_nodes(b"key", ["a", "b", "c"]) == rank_nodes(b"key", ["c", "a", "b", "a"])
    True
    """
    if isinstance(nodes, str):
        raise InvalidInputError("nodes must be a sequence of node ids, not one string")
    prefix = _check_key(key) + _SEP
    scored = {node: blake3(prefix + _node_bytes(node)).digest() for node in nodes}
    # Sort ascending by node id first, then stably by score descending: ties keep id order.
    return sorted(sorted(scored), key=scored.__getitem__, reverse=True)


def content_key(root_multihash: bytes) -> bytes:
    """The object key of an object whose CID is known before its shares are placed: its
    multihash, tagged. Batches (:func:`medmesh.storage.batch.upload_many`) and one-leaf
    uploads use it, so a reader of a one-block object can ask the node that ranks first for
    ``stripe_key(content_key(mh), 0)`` for its data share before asking anyone else. Other
    uploads, whose CID is known only at the end, use a random key; placement is correct with
    any key, the reader then just asks everyone.
    """
    return b"medmesh-content:" + _check_key(root_multihash)


def stripe_key(object_key: bytes, stripe_index: int) -> bytes:
    """The placement key of one stripe: ``object_key || stripe_index`` (u64 big-endian)."""
    if not isinstance(stripe_index, int) or isinstance(stripe_index, bool):
        raise InvalidInputError("stripe index must be an integer")
    if not 0 <= stripe_index < _U64:
        raise InvalidInputError("stripe index must fit in an unsigned 64-bit integer")
    return _check_key(object_key) + stripe_index.to_bytes(8, "big")


def place_stripe(
    object_key: bytes,
    stripe_index: int,
    nodes: Sequence[str],
    n: int,
    exclude: Collection[str] = (),
    *,
    allow_fewer: bool = False,
) -> list[str]:
    """The ``n`` distinct nodes for the shares of one stripe; share ``i`` goes to element ``i``.

    ``nodes`` is every registered node; ``exclude`` removes some (unreachable, full, or already
    holding a share of this stripe) before the top ``n`` are taken. Raises
    :class:`~medmesh.errors.StorageError` when fewer than ``n`` eligible nodes exist, unless
    ``allow_fewer`` is true: then all eligible nodes are returned, in rank order, and the caller
    decides (e.g. to put two shares on one node, or to wait).

    >>> place_stripe(b"obj", 0, ["n1", "n2", "n3", "n4"], 2, exclude={"n1"}) != []
    True
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidInputError("n must be a positive integer")
    if isinstance(exclude, str):
        raise InvalidInputError("exclude must be a collection of node ids, not one string")
    excluded = frozenset(exclude)
    ranked = rank_nodes(stripe_key(object_key, stripe_index), nodes)
    eligible = [node for node in ranked if node not in excluded]
    if len(eligible) < n and not allow_fewer:
        raise StorageError(
            f"stripe {stripe_index} needs {n} distinct storage nodes, "
            f"only {len(eligible)} eligible of {len(ranked)} known"
        )
    return eligible[:n]
