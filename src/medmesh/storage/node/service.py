"""What a storage node does, independent of any transport.

:class:`NodeService` stores and serves blocks, keeps the index of objects whose shares the
node holds (SQLite, in the data folder), and answers storage challenges. The HTTP layer
(:mod:`medmesh.storage.node.http`) and the DHT call only this class.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from medmesh.errors import InvalidInputError, MedmeshError, NotFoundError
from medmesh.storage.auth import ReplayGuard
from medmesh.storage.blockstore import Blockstore
from medmesh.storage.car import read_car
from medmesh.storage.cid import Cid
from medmesh.storage.manifest import (
    TABLE_STRIPES,
    Manifest,
    ManifestHead,
    decode_head,
    decode_manifest,
    decode_table,
)
from medmesh.storage.merkle import MerkleProof, prove
from medmesh.storage.node.config import NodeConfig

__all__ = ["MAX_REGISTER_BATCH", "Challenge", "NodeService", "load_node_key"]

KEY_FILE = "node.key"
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: Objects indexed by one :meth:`NodeService.register_objects` call (``POST /objects/batch``).
MAX_REGISTER_BATCH = 1024
MANIFEST_CACHE = 64

log = logging.getLogger(__name__)


def load_node_key(data: Path) -> LocalAccount:
    """The node's secp256k1 identity key, created on first start (file mode 0600)."""
    path = data / KEY_FILE
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        acct: LocalAccount = Account.create()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(acct.key.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return acct
    account: LocalAccount = Account.from_key(bytes.fromhex(path.read_text().strip()))
    return account


@dataclass(frozen=True)
class Challenge:
    """A storage proof: segment ``proof.index`` of share ``cid`` with its Merkle path."""

    cid: Cid
    length: int
    segment_size: int
    proof: MerkleProof


class NodeService:
    """A storage node's operations over its blockstore and object index."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        data = config.data_path
        data.mkdir(parents=True, exist_ok=True)
        self.account = load_node_key(data)
        self.store = Blockstore(
            data,
            quota=config.quota,
            max_block_size=config.max_block_size,
            fsync=config.fsync,
        )
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(data / "index.db", check_same_thread=False)
        with self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit syncs the WAL, so an acknowledged registration is durable
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS objects ("
                " object TEXT NOT NULL, manifest TEXT NOT NULL,"
                " PRIMARY KEY (object, manifest))"
            )
        self.trusted = frozenset(config.trusted)
        #: nonces of signed requests, kept on disk so a restart does not allow replays
        self.replay_guard = ReplayGuard(path=data / "nonces.db")
        self._manifests: OrderedDict[Cid, Manifest] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def node_id(self) -> str:
        """The node's address; requests are signed for it."""
        return str(self.account.address)

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        self.replay_guard.close()
        self.store.close()

    # -- blocks ------------------------------------------------------------------------
    def get_block(self, cid: Cid) -> bytes:
        return self.store.get(cid)

    def put_block(self, cid: Cid, data: bytes) -> bool:
        return self.store.put(cid, data)

    def put_car(self, body: bytes) -> tuple[int, int]:
        """Store every block of a CAR body; returns (new blocks, blocks in the CAR).

        Every block is verified against its CID while reading; if any fails, nothing is
        stored.
        """
        if len(body) > MAX_BATCH_BYTES:
            raise InvalidInputError("batch too large")
        _, blocks_iter = read_car(io.BytesIO(body))
        blocks: list[tuple[Cid, bytes | bytearray | memoryview]] = [
            (b.cid, b.data) for b in blocks_iter
        ]
        return self.store.put_many(blocks, verified=True), len(blocks)

    def delete_block(self, cid: Cid) -> bool:
        return self.store.delete(cid)

    # -- objects -----------------------------------------------------------------------
    def _head(self, manifest: Cid) -> ManifestHead:
        return decode_head(self.store.get(manifest))

    def _manifest(self, mcid: Cid) -> Manifest:
        """A decoded manifest (immutable, so cached by CID)."""
        with self._cache_lock:
            cached = self._manifests.get(mcid)
            if cached is not None:
                self._manifests.move_to_end(mcid)
                return cached
        root = self.store.get(mcid)
        mcid.verify(root)
        head = decode_head(root)
        manifest = decode_manifest(root, [self.store.get(t) for t in head.tables])
        with self._cache_lock:
            self._manifests[mcid] = manifest
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return manifest

    def _check_registration(self, obj: Cid, manifest: Cid) -> None:
        """Raise unless ``manifest`` is stored here whole (root and tables) and names ``obj``."""
        head = self._head(manifest)
        if head.object != obj:
            raise InvalidInputError("manifest does not describe this object")
        for table in head.tables:
            if not self.store.has(table):
                raise InvalidInputError("manifest stripe tables must be stored first")

    def register_object(self, obj: Cid, manifest: Cid) -> None:
        """Record that this node holds shares of ``obj`` described by ``manifest``.

        The manifest root and its tables must already be stored here, and must name ``obj``.
        The index entry is durable (SQLite commit, WAL synced) when this returns.
        """
        self._check_registration(obj, manifest)
        with self._db_lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO objects (object, manifest) VALUES (?, ?)",
                (str(obj), str(manifest)),
            )

    def register_objects(self, entries: Sequence[tuple[Cid, Cid]]) -> list[MedmeshError | None]:
        """:meth:`register_object` for many ``(object, manifest)`` pairs, one commit.

        Each entry is checked on its own, by the same rules; the result lists, in order,
        None for an entry now indexed or the error that refused it. The good entries are
        indexed together in one transaction, durable when this returns; a refused entry
        does not hold back the others. At most :data:`MAX_REGISTER_BATCH` entries.
        """
        if len(entries) > MAX_REGISTER_BATCH:
            raise InvalidInputError(f"at most {MAX_REGISTER_BATCH} objects per batch")
        results: list[MedmeshError | None] = []
        good: list[tuple[str, str]] = []
        for obj, manifest in entries:
            try:
                self._check_registration(obj, manifest)
            except MedmeshError as exc:
                results.append(exc)
                continue
            results.append(None)
            good.append((str(obj), str(manifest)))
        if good:
            with self._db_lock, self._db:
                self._db.executemany(
                    "INSERT OR IGNORE INTO objects (object, manifest) VALUES (?, ?)", good
                )
        return results

    def unregister_object(self, obj: Cid, manifest: Cid) -> None:
        with self._db_lock, self._db:
            self._db.execute(
                "DELETE FROM objects WHERE object = ? AND manifest = ?", (str(obj), str(manifest))
            )

    def erase_object(self, obj: Cid) -> int:
        """Delete every block of ``obj`` this node holds and forget the object.

        For each manifest registered for ``obj``: the shares it lists, the DAG's interior
        nodes, the stripe tables and the manifest root (and ``obj``'s own block). Blocks
        that another object registered here still lists are kept (found by reading the
        other manifests: erasure is rare, so no reverse index is kept). A manifest that
        can no longer be read whole is erased as far as its readable blocks go.

        Order and durability: shares and DAG nodes go first, then the stripe tables, then
        the manifest roots, each batch durable before the next
        (:meth:`Blockstore.delete_many`); the object is unregistered last. A crash in
        between leaves the object registered with what still names the remaining blocks,
        so erasing again finishes the work.

        Returns the number of blocks deleted. Raises :class:`NotFoundError` if no manifest
        of ``obj`` is registered here.
        """
        mine = self.manifests(obj)
        if not mine:
            raise NotFoundError("object not known to this node")
        content: dict[bytes, Cid] = {}
        meta: dict[bytes, Cid] = {}
        for mcid in mine:
            data, manifest_blocks, complete = self._manifest_blocks(mcid)
            if not complete:
                log.warning("erasing %s: manifest %s is not fully readable", obj, mcid)
            content.update((c.multihash, c) for c in data)
            meta.update((c.multihash, c) for c in manifest_blocks)
        content.setdefault(obj.multihash, obj)
        for key in meta:
            content.pop(key, None)
        erased = set(mine)
        for other, mcid in self.objects():
            if not content and not meta:
                break
            if other == obj or mcid in erased:
                continue
            data, manifest_blocks, _ = self._manifest_blocks(mcid)
            for c in (*data, *manifest_blocks):
                content.pop(c.multihash, None)
                meta.pop(c.multihash, None)
        # the roots last: until they go, a retry can still read the tables they name
        roots = {m.multihash for m in mine}
        deleted = self.store.delete_many(content.values())
        deleted += self.store.delete_many(c for k, c in meta.items() if k not in roots)
        deleted += self.store.delete_many(c for k, c in meta.items() if k in roots)
        with self._db_lock, self._db:
            self._db.execute("DELETE FROM objects WHERE object = ?", (str(obj),))
        with self._cache_lock:
            for mcid in mine:
                self._manifests.pop(mcid, None)
        return deleted

    def _manifest_blocks(self, mcid: Cid) -> tuple[list[Cid], list[Cid], bool]:
        """(shares and DAG nodes, manifest blocks, whether the manifest was read whole).

        Falls back to what can be read when a table or the root is missing or damaged.
        """
        try:
            m = self._manifest(mcid)
        except MedmeshError:
            pass
        else:
            return [c for _, _, c in m.share_index()] + list(m.dag), [mcid, *m.tables], True
        try:
            root = self.store.get(mcid)
            mcid.verify(root)
            head = decode_head(root)
        except MedmeshError:
            return [], [mcid], False
        data = list(head.dag)
        for t, table in enumerate(head.tables):
            try:
                raw = self.store.get(table)
                table.verify(raw)
                stripes = decode_table(raw, head.n, t * TABLE_STRIPES)
            except MedmeshError:
                continue
            data.extend(c for st in stripes for c in st.shares if c is not None)
        return data, [mcid, *head.tables], False

    def manifests(self, obj: Cid) -> list[Cid]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT manifest FROM objects WHERE object = ? ORDER BY manifest", (str(obj),)
            ).fetchall()
        return [Cid.parse(r[0]) for r in rows]

    def objects(self) -> Iterator[tuple[Cid, Cid]]:
        with self._db_lock:
            rows = self._db.execute("SELECT object, manifest FROM objects").fetchall()
        for o, m in rows:
            yield Cid.parse(o), Cid.parse(m)

    def object_info(self, obj: Cid) -> dict[str, Any]:
        """The manifests of ``obj`` known here and, per manifest, the shares held."""
        manifests = self.manifests(obj)
        if not manifests:
            raise NotFoundError("object not known to this node")
        out = []
        for mcid in manifests:
            manifest = self._manifest(mcid)
            held = [[s, i] for s, i, cid in manifest.share_index() if self.store.has(cid)]
            dag = all(self.store.has(c) for c in manifest.dag)
            out.append({"manifest": str(mcid), "shares": held, "dag": dag})
        return {"object": str(obj), "manifests": out}

    # -- proofs ------------------------------------------------------------------------
    def challenge(self, cid: Cid, index: int, segment_size: int) -> Challenge:
        """Segment ``index`` of the share ``cid`` and its Merkle path."""
        data = self.store.get(cid)
        if not 64 <= segment_size <= 1 << 20:
            raise InvalidInputError("segment size out of range")
        count = max(1, -(-len(data) // segment_size))
        if not 0 <= index < count:
            raise InvalidInputError("segment index out of range")
        return Challenge(cid, len(data), segment_size, prove(data, index, segment_size))

    def info(self) -> dict[str, Any]:
        st = self.store.stats()
        return {
            "id": self.node_id,
            "blocks": st.blocks,
            "bytes_used": st.bytes_used,
            "quota": st.quota,
            "disk_free": st.disk_free,
        }
