"""A storage node's blockstore: small blocks in pack files against one file per block.

Writes ``--blocks`` random blocks of ``--size`` bytes with ``Blockstore.put_many`` in
batches of ``--batch`` (as a node stores one CAR of a batch upload: fsync on, on the disk
under ``--dir``), then reads them all back with ``get`` and erases them with
``delete_many``, timing wall and CPU (this process: the kernel's file work included) per
batch. Two layouts:

- ``packs``: the store as it is (blocks of at most ``PACK_MAX_BLOCK`` appended to a pack
  file, indexed in SQLite);
- ``files``: the same store with ``PACK_MAX_BLOCK`` set to 0, so every block takes the
  one-file-per-block path (kubo's flatfs layout) that all blocks took before packs.

    .venv/bin/python bench/blockstore.py                    # 10 batches of 2,000 x 700 B
    .venv/bin/python bench/blockstore.py --size 4096 --batches 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from medmesh.storage import blockstore
from medmesh.storage.blockstore import Blockstore
from medmesh.storage.cid import Cid

console = Console()


def run(layout: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    saved = blockstore.PACK_MAX_BLOCK
    if layout == "files":
        blockstore.PACK_MAX_BLOCK = 0  # type: ignore[misc]  # every block to its own file
    try:
        store = Blockstore(folder)
        put_wall, put_cpu, cids = [], [], []
        for _ in range(args.batches):
            blocks: list[tuple[Cid, bytes | bytearray | memoryview]] = [
                (Cid.of(b), b) for b in (os.urandom(args.size) for _ in range(args.batch))
            ]
            t, c = time.perf_counter(), time.process_time()
            store.put_many(blocks, verified=True)
            put_wall.append(time.perf_counter() - t)
            put_cpu.append(time.process_time() - c)
            cids += [cid for cid, _ in blocks]
        t = time.perf_counter()
        for cid in cids:
            store.get(cid)
        get_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(0, len(cids), args.batch):
            store.delete_many(cids[i : i + args.batch])
        delete_s = time.perf_counter() - t
        store.close()
    finally:
        blockstore.PACK_MAX_BLOCK = saved  # type: ignore[misc]
    put_wall.sort()
    put_cpu.sort()
    return {
        "layout": layout,
        "put_wall_ms": 1000 * put_wall[len(put_wall) // 2],
        "put_wall_max_ms": 1000 * put_wall[-1],
        "put_cpu_ms": 1000 * put_cpu[len(put_cpu) // 2],
        "get_us": 1e6 * get_s / len(cids),
        "delete_ms": 1000 * delete_s / args.batches,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=700, help="bytes per block (default 700)")
    ap.add_argument("--batch", type=int, default=2000, help="blocks per put_many (2,000)")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--dir", default=None, help="where to write (default: the temp folder)")
    args = ap.parse_args()
    rows = []
    for layout in ("files", "packs"):
        with tempfile.TemporaryDirectory(prefix="medmesh-bs-bench-", dir=args.dir) as tmp:
            rows.append(run(layout, Path(tmp), args))
    table = Table(
        title=f"Blockstore: {args.batches} x put_many of {args.batch:,} x {args.size} B, fsync on"
    )
    for col in ("layout", "put_many p50 (wall)", "max", "put_many p50 (CPU)", "get per block",
                "delete_many per batch"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(r["layout"], f"{r['put_wall_ms']:.1f} ms", f"{r['put_wall_max_ms']:.1f} ms",
                      f"{r['put_cpu_ms']:.1f} ms", f"{r['get_us']:.1f} µs", f"{r['delete_ms']:.1f} ms")  # fmt: skip
    console.print(table)
    console.print(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}  {os.cpu_count()} cores, "
                  f"Python {sys.version.split()[0]}, command: {' '.join(sys.argv)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
