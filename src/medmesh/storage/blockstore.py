"""A disk blockstore: small blocks in append-only pack files, large ones one file each.

Layout::

    <root>/packs/00000001.pack        blocks of at most PACK_MAX_BLOCK bytes, appended
    <root>/packs/index.db             SQLite: blocks(key, pack, offset, length)
    <root>/blocks/<shard>/<KEY>.data  larger blocks (and small ones from before packs)

Blocks are keyed by *multihash*, not by CID, so one block reached through a CIDv0 and a
CIDv1 (or through the ``raw`` and ``dag-pb`` codecs) is stored once.

Why packs: importing records stores thousands of ~1 KB blocks per batch (one ``put_many``
of ~2,000 per node per batch). As one file each (temporary file, rename, stats), a
``put_many`` of 2,000 blocks of 700 bytes cost 120-870 ms of CPU on a 2-core test machine
(ext4, with fsync), nearly all of it in the kernel creating and renaming files: the largest
latency of the import. Appended to a pack with one write and indexed in one SQLite
transaction, it costs 11-14 ms of CPU, both syncs included (``bench/blockstore.py``).

Packs: each entry is self-describing, a header (magic ``MMPK``, data length as u32,
multihash length as u16, the multihash) followed by the block's bytes. The index row's
``offset`` is where the bytes start. A pack is appended to until it passes
``PACK_TARGET_SIZE``; then the next number is started.

Durability order of :meth:`Blockstore.put_many`: the batch's new entries are appended to
the pack with one write, the pack is ``fdatasync``-ed (and its folder, if the pack is new),
and only then are the index rows inserted in one transaction (``synchronous=FULL``: the
commit is durable). The index never points at bytes that may be lost, and a returned put
survives a crash. Bytes past the last indexed entry of a pack were never acknowledged
(a crash between the append and the commit, or a failed commit): a pack is truncated to
the end of its last indexed entry when the store is opened (a failed commit truncates at
once). With ``fsync=False`` the ``fdatasync`` calls are skipped (SQLite still syncs its
commits) and a crash may lose a pack's tail that the index points at: those rows are
dropped at open, so a lost block is absent rather than served short.

Erasure (a patient's right to erasure): deleting a packed block removes its bytes from
the disk, not just its index row. In one transaction the rows are deleted and the entries'
ranges recorded as pending erasures; then each range (header and data) is punched out
with ``fallocate(PUNCH_HOLE | KEEP_SIZE)`` (overwritten with zeros where that is not
supported), the pack is ``fdatasync``-ed, and the pending records are cleared. A crash
before the end leaves the pending records, and the ranges are erased again at the next
open. The index never points at erased bytes, and reads check, under a sequence counter
bumped around every erasure, that an entry was not erased while they read it: ``get``
never returns zeros for a block.

Large blocks keep kubo's ``flatfs`` layout (``next-to-last/2`` shards): ``KEY`` is the
unpadded upper-case base32 of the multihash and ``shard`` the two characters before its
last one. A block is written to a temporary file in its shard folder, synced and renamed
into place; a batch is committed as a group on Linux: all temporary files are written,
one ``syncfs`` makes their data durable, they are renamed, and a second ``syncfs`` makes
the names durable. Stray temporary files from a crash are removed at open. Deletions are
made durable by ``fsync``-ing the touched shard folders (one ``syncfs`` for a batch).
Small blocks found in the flatfs tree (written before packs existed) are read, listed,
sized and deleted as before; new small blocks always go to packs.

Concurrency: the node calls the store from worker threads. Writers are serialised by one
lock (so a block stored by two concurrent puts is written and counted once) and, across
processes, by an ``flock`` on ``packs/lock`` held from the append to the commit and around
erasures and the recovery at open. Reads go through pooled SQLite connections (WAL lets
them run while a write commits) and ``pread`` on cached pack descriptors.

Every ``put`` checks the bytes against the CID first (:class:`BlockMismatchError`) and
refuses blocks over ``max_block_size`` (:class:`InvalidInputError`) or beyond the quota or
free disk space (:class:`StorageFullError`); nothing is written in any of these cases.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import fcntl
import os
import re
import sqlite3
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, cast

from medmesh.errors import InvalidInputError, NotFoundError, StorageFullError
from medmesh.sqlite import immediate
from medmesh.storage.cid import IDENTITY, RAW, Cid

__all__ = [
    "DEFAULT_MAX_BLOCK_SIZE",
    "PACK_MAX_BLOCK",
    "PACK_TARGET_SIZE",
    "Blockstore",
    "BlockstoreStats",
]

DEFAULT_MAX_BLOCK_SIZE: Final = 2 * 1024 * 1024  # 2 MiB, the bitswap limit
#: Free space the store keeps for the rest of the system; writes past it get 507.
DEFAULT_RESERVE: Final = 64 * 1024 * 1024
#: Blocks of at most this many bytes go to pack files; larger ones to their own file.
PACK_MAX_BLOCK: Final = 64 * 1024
#: A pack is appended to until it reaches this size; then a new one is started.
PACK_TARGET_SIZE: Final = 256 * 1024 * 1024
_SUFFIX: Final = ".data"
_TMP_PREFIX: Final = ".tmp-"
_MAGIC: Final = b"MMPK"
_HEADER: Final = struct.Struct("<4sIH")  # magic, data length, multihash length
_PACK_NAME: Final = re.compile(r"^(\d{8})\.pack$")
_OPEN_PACKS: Final = 64  # read descriptors kept open
_CHUNK: Final = 500  # keys per SQL statement (well under SQLite's variable limit)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS blocks (
    key BLOB PRIMARY KEY,      -- the multihash
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,   -- where the block's bytes start in the pack
    length INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erasing (  -- pack ranges to erase again after a crash
    pack INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class BlockstoreStats:
    """Counts for monitoring and quotas."""

    blocks: int
    bytes_used: int
    quota: int | None
    disk_free: int


class _Loc(NamedTuple):
    """Where a packed block is: its bytes are ``length`` bytes at ``offset`` of ``pack``."""

    key: bytes
    pack: int
    offset: int
    length: int

    @property
    def start(self) -> int:
        """Where the entry (header included) starts."""
        return self.offset - _HEADER.size - len(self.key)


def _cid_from_key(key: str) -> Cid:
    pad = "=" * (-len(key) % 8)
    return _cid_from_multihash(base64.b32decode(key + pad))


def _cid_from_multihash(mh: bytes) -> Cid:
    # multihash = varint(code) varint(len) digest; our codes and lengths fit in one byte
    code, length, digest = mh[0], mh[1], mh[2:]
    if len(digest) != length:
        raise InvalidInputError("corrupt blockstore key")
    return Cid(1, RAW, code, digest)  # the store keys by multihash and does not know codecs


def _chunks(items: list[bytes]) -> Iterator[list[bytes]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _marks(items: list[bytes]) -> str:
    """SQL placeholders for ``items`` (only ``?``: the values are bound, never inlined)."""
    return ",".join("?" * len(items))


def _connect(path: Path, *, reader: bool) -> sqlite3.Connection:
    # autocommit: the writer opens its transactions explicitly; a reader's every SELECT
    # sees the last commit. Not bound to a thread: readers are pooled, close() is anywhere.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA synchronous=FULL")  # every commit syncs the WAL: durable
    if reader:
        conn.execute("PRAGMA query_only=ON")
    return conn


class _Fd:
    """An open pack descriptor and the readers using it (closed when unused and evicted)."""

    __slots__ = ("fd", "retired", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.retired = False


class _Packs:
    """The pack files and their index: descriptors, connections and plain operations.

    Holds no reference to its :class:`Blockstore`, so the store can close it when it is
    garbage-collected. The store decides the order and the locking of operations.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db_path = folder / "index.db"
        self.writer = _connect(self.db_path, reader=False)
        self.writer.execute("PRAGMA journal_mode=WAL")
        self.writer.executescript(_SCHEMA)
        self.lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._readers: list[sqlite3.Connection] = []
        self._fd_lock = threading.Lock()
        self._fds: OrderedDict[int, _Fd] = OrderedDict()
        self.write_pack = max(self.numbers(), default=1)
        self.write_fd: int | None = None
        #: a pack file was created and its name is not yet synced in the folder
        self.folder_dirty = False

    def path(self, pack: int) -> Path:
        return self.folder / f"{pack:08d}.pack"

    def numbers(self) -> list[int]:
        """The numbers of the pack files on disk."""
        return sorted(
            int(m.group(1)) for name in os.listdir(self.folder) if (m := _PACK_NAME.match(name))
        )

    # -- index ---------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        """Run a read on a pooled connection (WAL: it does not wait for the writer)."""
        try:
            conn = self._readers.pop()
        except IndexError:
            conn = _connect(self.db_path, reader=True)
        try:
            return cast(list[tuple[object, ...]], conn.execute(sql, args).fetchall())
        finally:
            self._readers.append(conn)

    def lookup(self, key: bytes) -> _Loc | None:
        rows = self._query("SELECT pack, offset, length FROM blocks WHERE key = ?", (key,))
        if not rows:
            return None
        pack, offset, length = cast(tuple[int, int, int], rows[0])
        return _Loc(key, pack, offset, length)

    def present(self, keys: list[bytes], *, writer: bool = False) -> set[bytes]:
        """Which of ``keys`` are indexed (through the writer's connection if ``writer``)."""
        found: set[bytes] = set()
        for chunk in _chunks(keys):
            sql = f"SELECT key FROM blocks WHERE key IN ({_marks(chunk)})"  # noqa: S608
            rows = (
                self.writer.execute(sql, chunk).fetchall()
                if writer
                else self._query(sql, tuple(chunk))
            )
            found.update(cast(bytes, row[0]) for row in rows)
        return found

    def keys_after(self, last: bytes, limit: int) -> list[bytes]:
        sql = "SELECT key FROM blocks WHERE key > ? ORDER BY key LIMIT ?"
        return [cast(bytes, row[0]) for row in self._query(sql, (last, limit))]

    def locate(self, keys: list[bytes]) -> list[_Loc]:
        """The index rows of ``keys`` (writer's connection: call under the writer lock)."""
        locs: list[_Loc] = []
        for chunk in _chunks(keys):
            where = f"WHERE key IN ({_marks(chunk)})"
            sql = f"SELECT key, pack, offset, length FROM blocks {where}"  # noqa: S608
            locs.extend(_Loc(*row) for row in self.writer.execute(sql, chunk))
        return locs

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The writer's connection in a transaction: committed on exit, or rolled back."""
        return immediate(self.writer)

    # -- pack files ----------------------------------------------------------------------
    def read(self, loc: _Loc) -> bytes | None:
        """The block's bytes, or None if the entry's header does not name ``loc.key``."""
        head = _HEADER.size + len(loc.key)
        handle = self._acquire(loc.pack)
        try:
            raw = os.pread(handle.fd, head + loc.length, loc.start)
        finally:
            self._release(handle)
        if len(raw) != head + loc.length:
            return None
        magic, length, _ = _HEADER.unpack_from(raw)
        if magic != _MAGIC or length != loc.length or raw[_HEADER.size : head] != loc.key:
            return None
        return raw[head:]

    def _acquire(self, pack: int) -> _Fd:
        with self._fd_lock:
            handle = self._fds.get(pack)
            if handle is None:
                handle = _Fd(os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC))
                self._fds[pack] = handle
                if len(self._fds) > _OPEN_PACKS:
                    _, old = self._fds.popitem(last=False)
                    old.retired = True
                    if not old.users:
                        os.close(old.fd)
            else:
                self._fds.move_to_end(pack)
            handle.users += 1
            return handle

    def _release(self, handle: _Fd) -> None:
        with self._fd_lock:
            handle.users -= 1
            if handle.retired and not handle.users:
                os.close(handle.fd)

    def append_target(self) -> tuple[int, int, int]:
        """(pack, descriptor, end): where the next entries go."""
        while True:
            if self.write_fd is None:
                path = self.path(self.write_pack)
                self.folder_dirty = self.folder_dirty or not path.exists()
                self.write_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            end = os.fstat(self.write_fd).st_size
            if end < PACK_TARGET_SIZE:
                return self.write_pack, self.write_fd, end
            os.close(self.write_fd)
            self.write_fd = None
            self.write_pack += 1

    def close(self) -> None:
        with self._fd_lock:
            for handle in self._fds.values():
                handle.retired = True
                if not handle.users:
                    os.close(handle.fd)
            self._fds.clear()
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None
        while self._readers:
            self._readers.pop().close()
        self.writer.close()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _entries(
    blocks: list[tuple[bytes, memoryview]], pack: int, start: int
) -> tuple[bytearray, list[_Loc]]:
    """The pack bytes of ``blocks`` appended at ``start``, and their index rows."""
    buf = bytearray()
    locs: list[_Loc] = []
    for key, view in blocks:
        buf += _HEADER.pack(_MAGIC, len(view), len(key))
        buf += key
        locs.append(_Loc(key, pack, start + len(buf), len(view)))
        buf += view
    return buf, locs


class Blockstore:
    """Durable content-addressed block storage in a folder.

    >>> store = Blockstore(tmp_path)                      # doctest: +SKIP
    >>> cid = store.put(Cid.of(b"data"), b"data")          # doctest: +SKIP
    >>> store.get(cid)                                     # doctest: +SKIP
    b'data'
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        quota: int | None = None,
        max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
        reserve: int = DEFAULT_RESERVE,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root)
        self.blocks_dir = self.root / "blocks"
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.packs_dir = self.root / "packs"
        new_folder = not self.packs_dir.is_dir()
        self.packs_dir.mkdir(exist_ok=True)
        self.quota = quota
        self.max_block_size = max_block_size
        self.reserve = reserve
        self.fsync = fsync
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        #: bumped before and after every erasure: a read that saw it change reads again
        self._erase_seq = 0
        self._count = 0
        self._used = 0
        #: small blocks in the flatfs tree (from before packs); if none, puts skip the stat
        self._flat_small = False
        self._packs = _Packs(self.packs_dir)
        self._finalizer = weakref.finalize(self, self._packs.close)
        if fsync and new_folder:
            _fsync_dir(self.packs_dir)  # the index and lock files
            _fsync_dir(self.root)
        self._recover()
        self._scan()

    def close(self) -> None:
        """Close the index and the pack files (also done when the store is collected)."""
        self._finalizer()

    # -- startup -----------------------------------------------------------------------
    def _recover(self) -> None:
        """Finish interrupted erasures, cut unacknowledged appends, count packed blocks."""
        db = self._packs.writer
        with self._exclusive():
            pending = db.execute("SELECT pack, start, end FROM erasing").fetchall()
            if pending:
                self._erase_ranges([cast(tuple[int, int, int], row) for row in pending])
            ends = self._pack_ends()
            sizes = {n: self._packs.path(n).stat().st_size for n in self._packs.numbers()}
            lost = {n: sizes.get(n, 0) for n, end in ends.items() if end > sizes.get(n, 0)}
            if lost:
                # only without fsync: a crash lost bytes the index points at; forget them
                with self._packs.transaction() as tx:
                    tx.executemany(
                        "DELETE FROM blocks WHERE pack = ? AND offset + length > ?", lost.items()
                    )
                ends = self._pack_ends()
            for pack, size in sizes.items():
                if size > ends.get(pack, 0):
                    os.truncate(self._packs.path(pack), ends.get(pack, 0))  # never acknowledged
            count, used = db.execute("SELECT COUNT(*), TOTAL(length) FROM blocks").fetchone()
        self._count, self._used = count, int(used)

    def _pack_ends(self) -> dict[int, int]:
        """Each pack's end of its last indexed entry."""
        rows = self._packs.writer.execute(
            "SELECT pack, MAX(offset + length) FROM blocks GROUP BY pack"
        )
        return {pack: end for pack, end in rows.fetchall()}

    def _scan(self) -> None:
        count = used = 0
        small = False
        for shard in self.blocks_dir.iterdir():
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard):
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)  # left by a crash before rename: never acked
                elif entry.name.endswith(_SUFFIX):
                    size = entry.stat().st_size
                    count += 1
                    used += size
                    small = small or size <= PACK_MAX_BLOCK
        self._count += count
        self._used += used
        self._flat_small = small

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The writer lock: this process's threads, then other processes (``flock``)."""
        with self._publish_lock:
            fcntl.flock(self._packs.lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._packs.lock_fd, fcntl.LOCK_UN)

    # -- paths -------------------------------------------------------------------------
    def _path(self, cid: Cid) -> Path:
        return self._flat_path(cid.multihash)

    def _flat_path(self, multihash: bytes) -> Path:
        key = base64.b32encode(multihash).decode("ascii").rstrip("=")
        return self.blocks_dir / key[-3:-1] / (key + _SUFFIX)

    # -- reads -------------------------------------------------------------------------
    def has(self, cid: Cid) -> bool:
        if cid.hash_code == IDENTITY:
            return True
        return self._packs.lookup(cid.multihash) is not None or self._path(cid).is_file()

    def get(self, cid: Cid) -> bytes:
        """The block's bytes; raises :class:`NotFoundError` if absent."""
        if cid.hash_code == IDENTITY:
            return cid.digest
        data = self._read_packed(cid.multihash)
        if data is not None:
            return data
        try:
            return self._path(cid).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"block {cid} not found") from None

    def _read_packed(self, key: bytes) -> bytes | None:
        while True:
            seq = self._erase_seq
            loc = self._packs.lookup(key)
            if loc is None:
                return None
            data = self._packs.read(loc)
            if self._erase_seq != seq:
                continue  # an erasure ran meanwhile: it may have zeroed what was read
            if data is not None:
                return data
            if self._packs.lookup(key) != loc:
                continue  # erased or moved by another process meanwhile
            raise OSError(errno.EIO, f"pack {loc.pack} entry at {loc.start} is corrupt")

    def path_of(self, cid: Cid) -> Path | None:
        """The file holding ``cid`` (for zero-copy serving), or None.

        None for a packed block too: callers fall back to :meth:`get`.
        """
        path = self._path(cid)
        return path if path.is_file() else None

    def location(self, cid: Cid) -> tuple[Path, int, int] | None:
        """Where the block's bytes are on disk: (file, offset, length), or None if absent.

        For diagnostics and tests that damage blocks on purpose.
        """
        if cid.hash_code == IDENTITY:
            return None
        loc = self._packs.lookup(cid.multihash)
        if loc is not None:
            return self._packs.path(loc.pack), loc.offset, loc.length
        path = self._path(cid)
        try:
            return path, 0, path.stat().st_size
        except FileNotFoundError:
            return None

    def size(self, cid: Cid) -> int:
        loc = self._packs.lookup(cid.multihash)
        if loc is not None:
            return loc.length
        try:
            return self._path(cid).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"block {cid} not found") from None

    def keys(self) -> Iterator[Cid]:
        """Every stored block, as a raw-codec CIDv1 of its multihash."""
        last = b""
        while page := self._packs.keys_after(last, 1000):
            yield from (_cid_from_multihash(key) for key in page)
            last = page[-1]
        for shard in sorted(self.blocks_dir.iterdir()):
            if not shard.is_dir():
                continue
            for name in sorted(os.listdir(shard)):
                if name.endswith(_SUFFIX) and not name.startswith(_TMP_PREFIX):
                    yield _cid_from_key(name[: -len(_SUFFIX)])

    def stats(self) -> BlockstoreStats:
        free = _disk_free(self.root)
        with self._lock:
            return BlockstoreStats(self._count, self._used, self.quota, free)

    # -- writes ------------------------------------------------------------------------
    def check_room(self, nbytes: int) -> None:
        """Raise :class:`StorageFullError` unless ``nbytes`` more fit in quota and disk."""
        with self._lock:
            if self.quota is not None and self._used + nbytes > self.quota:
                raise StorageFullError("node quota exceeded")
        if _disk_free(self.root) - nbytes < self.reserve:
            raise StorageFullError("node disk is full")

    def put(
        self, cid: Cid, data: bytes | bytearray | memoryview, *, verified: bool = False
    ) -> bool:
        """Store ``data`` under ``cid`` durably. Returns False if it was already present.

        ``verified=True`` skips the hash check when the caller has just done it.
        """
        return self.put_many([(cid, data)], verified=verified) == 1

    def put_many(
        self,
        blocks: list[tuple[Cid, bytes | bytearray | memoryview]],
        *,
        verified: bool = False,
    ) -> int:
        """Store a batch of blocks durably; returns how many were new.

        All blocks are checked before anything is written, so a batch with one bad block
        writes nothing. Small blocks are appended to a pack with one write, synced, then
        indexed in one transaction; large ones are written to files, synced, renamed and
        their folders synced. The batch is acknowledged only when all of it is durable.
        """
        small: dict[bytes, memoryview] = {}
        large: dict[bytes, tuple[Path, memoryview]] = {}
        for cid, data in blocks:
            if len(data) > self.max_block_size:
                raise InvalidInputError(
                    f"block of {len(data)} bytes exceeds the {self.max_block_size}-byte limit"
                )
            if not verified:
                cid.verify(data)
            if cid.hash_code == IDENTITY:
                continue
            key = cid.multihash
            if key in small or key in large:
                continue
            if len(data) <= PACK_MAX_BLOCK:
                small[key] = memoryview(data)
            else:
                large[key] = (self._path(cid), memoryview(data))
        # blocks already held need no room
        held = self._packs.present([*small, *large])
        if self._flat_small:
            held.update(k for k in small if self._flat_path(k).is_file())
        held.update(k for k, (path, _) in large.items() if path.is_file())
        todo = [(k, v) for k, v in small.items() if k not in held]
        files = [pv for k, pv in large.items() if k not in held]
        if not todo and not files:
            return 0
        self.check_room(sum(len(v) for _, v in todo) + sum(len(v) for _, v in files))
        new = self._put_packed(todo) if todo else 0
        if files:
            new += self._put_files(files)
        return new

    def _put_packed(self, blocks: list[tuple[bytes, memoryview]]) -> int:
        """Append, sync, index: the index never points at bytes that could be lost."""
        with self._exclusive():
            # another writer may have stored some of them since the check above
            held = self._packs.present([k for k, _ in blocks], writer=True)
            blocks = [(k, v) for k, v in blocks if k not in held]
            if not blocks:
                return 0
            pack, fd, start = self._packs.append_target()
            buf, locs = _entries(blocks, pack, start)
            try:
                _pwrite_all(fd, buf, start)
                if self.fsync:
                    self._sync_pack(pack, fd)
                    if self._packs.folder_dirty:  # a new pack: its name must last too
                        _fsync_dir(self.packs_dir)
                        self._packs.folder_dirty = False
                self._index_add(locs)
            except BaseException as exc:
                # never indexed: remove the bytes rather than leave them until the next open
                # (the commit is all or nothing: one row tells whether it happened)
                with contextlib.suppress(Exception):
                    if not self._packs.present([locs[0].key], writer=True):
                        os.ftruncate(fd, start)
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StorageFullError("node disk is full") from exc
                if (
                    isinstance(exc, sqlite3.Error)
                    and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                ):
                    raise StorageFullError("node disk is full") from exc
                raise
            with self._lock:
                self._count += len(locs)
                self._used += sum(loc.length for loc in locs)
            return len(locs)

    def _index_add(self, locs: list[_Loc]) -> None:
        """Insert the rows of appended entries; the commit acknowledges them."""
        with self._packs.transaction() as db:
            db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", locs)

    def _sync_pack(self, pack: int, fd: int) -> None:
        """Make the bytes written to ``pack`` durable."""
        os.fdatasync(fd)

    def _put_files(self, todo: list[tuple[Path, memoryview]]) -> int:
        """Write large blocks to their own files (flatfs), as a group commit."""
        new_dirs: set[Path] = set()
        staged: list[tuple[Path, Path]] = []
        new_sizes: list[int] = []
        # Group commit: one syncfs() for the batch's data and one for its names, instead of
        # an fsync per file and per folder (half the time per 4 MiB batch, measured).
        group = self.fsync and _syncfs is not None and len(todo) > 1
        try:
            for path, view in todo:
                shard = path.parent
                if not shard.is_dir():
                    shard.mkdir(parents=True, exist_ok=True)
                    new_dirs.add(shard)
                tmp = shard / f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}"
                staged.append((tmp, path))
                _write_file(tmp, view, self.fsync and not group)
            if group:
                self._syncfs()  # the data is durable before any name points to it
            # Publish under a lock so that concurrent puts of one block count it once.
            with self._publish_lock:
                for (tmp, path), (_, view) in zip(staged, todo, strict=True):
                    if path.is_file():  # another writer stored the same block meanwhile
                        os.unlink(tmp)
                        continue
                    os.replace(tmp, path)
                    new_sizes.append(len(view))
            if group:
                self._syncfs()  # ... and so are the names
            elif self.fsync:
                for shard in {path.parent for _, path in staged}:
                    _fsync_dir(shard)
                if new_dirs:
                    _fsync_dir(self.blocks_dir)
        except OSError as exc:
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError("node disk is full") from exc
            raise
        with self._lock:
            self._count += len(new_sizes)
            self._used += sum(new_sizes)
        return len(new_sizes)

    def _syncfs(self) -> None:
        assert _syncfs is not None
        fd = os.open(self.blocks_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def delete(self, cid: Cid) -> bool:
        """Remove a block durably. Returns False if it was absent."""
        return self.delete_many([cid]) == 1

    def delete_many(self, cids: Iterable[Cid]) -> int:
        """Remove blocks durably; returns how many were present (and are now gone).

        A packed block's index row is deleted (committed), then its bytes are erased from
        the pack and the pack synced; a block file is unlinked, then each touched shard
        folder is ``fsync``-ed (one ``syncfs`` for a batch on Linux). The deletion, and
        the erasure of the bytes, survive a crash once this returns. Identity CIDs hold
        no bytes and count as absent.
        """
        keys = list(dict.fromkeys(c.multihash for c in cids if c.hash_code != IDENTITY))
        if not keys:
            return 0
        erased: list[_Loc] = []
        removed: list[tuple[Path, int]] = []
        gone: set[bytes] = set()
        try:
            # under the writer lock: a concurrent put of the same block either published
            # before (and is deleted here) or publishes after (and counts as new)
            with self._exclusive():
                erased = self._index_remove(keys)
                gone.update(loc.key for loc in erased)
                if erased:
                    self._erase_seq += 1
                    try:
                        self._erase(
                            [(loc.pack, loc.start, loc.offset + loc.length) for loc in erased]
                        )
                    finally:
                        self._erase_seq += 1
                for key in keys:
                    path = self._flat_path(key)
                    try:
                        size = path.stat().st_size
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    removed.append((path, size))
                    gone.add(key)
        finally:
            with self._lock:
                self._count -= len(erased) + len(removed)
                self._used -= sum(loc.length for loc in erased) + sum(s for _, s in removed)
        if removed and self.fsync:
            self._sync_dirs({path.parent for path, _ in removed}, group=len(removed) > 1)
        return len(gone)

    def _index_remove(self, keys: list[bytes]) -> list[_Loc]:
        """Delete the rows of ``keys`` and record their ranges as pending erasures."""
        locs = self._packs.locate(keys)
        if locs:
            with self._packs.transaction() as db:
                db.executemany("DELETE FROM blocks WHERE key = ?", [(loc.key,) for loc in locs])
                db.executemany(
                    "INSERT INTO erasing VALUES (?, ?, ?)",
                    [(loc.pack, loc.start, loc.offset + loc.length) for loc in locs],
                )
        return locs

    def _erase(self, ranges: list[tuple[int, int, int]]) -> None:
        """Erase the (pack, start, end) ranges of just-deleted entries from the disk."""
        self._erase_ranges(ranges)

    def _erase_ranges(self, ranges: list[tuple[int, int, int]]) -> None:
        """Zero the ranges (holes where possible), sync, then clear their pending records."""
        by_pack: dict[int, list[tuple[int, int]]] = {}
        for pack, start, end in ranges:
            by_pack.setdefault(pack, []).append((start, end))
        for pack, spans in sorted(by_pack.items()):
            try:
                fd = os.open(self._packs.path(pack), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                for start, end in spans:
                    _erase_span(fd, start, min(end, size))
                if self.fsync:
                    self._sync_pack(pack, fd)
            finally:
                os.close(fd)
        # the bytes are gone (and durable): forget the pending records. If this commit is
        # lost in a crash, the ranges are erased once more at open, which is harmless.
        with self._packs.transaction() as db:
            db.executemany("DELETE FROM erasing WHERE pack = ? AND start = ? AND end = ?", ranges)

    def _sync_dirs(self, dirs: set[Path], *, group: bool) -> None:
        """Make changes to the names in ``dirs`` durable (one ``syncfs`` for a group)."""
        if group and _syncfs is not None:
            self._syncfs()
            return
        for d in dirs:
            _fsync_dir(d)


def _load_libc_fn(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    """A function of the C library (None where it lacks it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return cast(Callable[..., int], fn)


#: Linux's syncfs(2): flush one filesystem.
_syncfs = _load_libc_fn("syncfs", [ctypes.c_int])
#: Linux's fallocate(2), with 64-bit offsets.
_fallocate = _load_libc_fn(
    "fallocate64", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
)
_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02


def _erase_span(fd: int, start: int, end: int) -> None:
    """Replace bytes ``start:end`` of a file with zeros: a hole if possible, else writes."""
    if end <= start:
        return
    if _fallocate is not None:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if _fallocate(fd, mode, start, end - start) == 0:
            return
    _pwrite_all(fd, bytes(end - start), start)  # no hole punching here: overwrite


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _write_file(path: Path, view: memoryview, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
