"""Storage benchmark: put/get throughput, machine ceiling, scaling with nodes, peak RSS.

Runs a real local network (storage nodes as separate processes, fsync on, 127.0.0.1) in a
temporary folder and prints a table. Usage::

    .venv/bin/python bench/storage.py                 # the full run (500 MB x3, 2 GB RSS)
    .venv/bin/python bench/storage.py --quick         # a smoke run in about a minute

Figures (issue 2): put of 500 MB <= 5 s and get <= 3 s (medians of 3, 5 nodes, 3-of-5);
put/get as a fraction of the single-process AES-256-GCM + SHA-256 ceiling; download
throughput with per-node bandwidth caps for 1, 3, 5 and 8 nodes; peak RSS of put and get
of a 2 GB file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medmesh.crypto.stream import Sealer, new_data_key
from medmesh.devnet import Devnet
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.client import Client
from medmesh.storage.uploader import StoreParams

console = Console()
MB = 1_000_000


def make_file(path: Path, size: int) -> None:
    """Incompressible test data, written once (not timed)."""
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as fh:
        left = size
        i = 0
        while left:
            n = min(left, len(block))
            # vary each block cheaply so the data does not repeat
            fh.write(i.to_bytes(8, "big") + block[8:n] if n > 8 else block[:n])
            left -= n
            i += 1


def ceiling(path: Path) -> float:
    """Single-process AES-256-GCM (1 MiB segments) + SHA-256 over the file, in MB/s."""
    sealer = Sealer(new_data_key())
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        data = fh.read()
    start = time.perf_counter()
    view = memoryview(data)
    for off in range(0, len(view), 4 * 1024 * 1024):
        h.update(sealer.update(view[off : off + 4 * 1024 * 1024]))
    h.update(sealer.finalize())
    return size / MB / (time.perf_counter() - start)


def start_net(root: Path, nodes: int, wallet: Wallet, rate_limit: int = 0) -> Devnet:
    net = Devnet(root)
    net.up(nodes, trusted=[wallet.address], base_port=0, rate_limit=rate_limit)
    return net


def client(net: Devnet, wallet: Wallet, params: StoreParams) -> Client:
    urls = [s.url for s in net.status() if s.running]
    return Client(NetworkStore(urls, signer=wallet, params=params), wallet)


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_put_get(work: Path, wallet: Wallet, size: int, runs: int) -> dict[str, object]:
    src = work / "input.bin"
    make_file(src, size)
    net = start_net(work / "net", 5, wallet)
    try:
        c = client(net, wallet, StoreParams())
        puts, gets, cid = [], [], None
        cpu = {"put_client": 0.0, "put_nodes": 0.0, "get_client": 0.0, "get_nodes": 0.0}
        for i in range(runs):
            c0, n0 = own_cpu(), nodes_cpu(net)
            t, res = timed(c.put, src)
            cpu["put_client"] += own_cpu() - c0
            cpu["put_nodes"] += nodes_cpu(net) - n0
            puts.append(t)
            cid = res.cid
            out = work / f"out-{i}.bin"
            c0, n0 = own_cpu(), nodes_cpu(net)
            t, _ = timed(c.get, cid, out)
            cpu["get_client"] += own_cpu() - c0
            cpu["get_nodes"] += nodes_cpu(net) - n0
            gets.append(t)
            if i == 0:
                assert _same(src, out), "round trip mismatch"
            out.unlink()
        return {
            "size": size,
            "put": statistics.median(puts),
            "get": statistics.median(gets),
            "puts": puts,
            "gets": gets,
            "ceiling": ceiling(src),
            "cpu": {k: v / runs for k, v in cpu.items()},
        }
    finally:
        net.down()
        src.unlink(missing_ok=True)


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def nodes_cpu(net: Devnet) -> float:
    """CPU seconds used so far by the devnet's node processes."""
    total = 0.0
    for st in net.status():
        if st.pid is None:
            continue
        fields = Path(f"/proc/{st.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _same(a: Path, b: Path) -> bool:
    def digest(p: Path) -> bytes:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        return h.digest()

    return digest(a) == digest(b)


def bench_scaling(work: Path, wallet: Wallet, size: int, cap: int) -> list[dict[str, object]]:
    """Download throughput with each node's egress capped at ``cap`` bytes/s."""
    src = work / "scale.bin"
    make_file(src, size)
    rows = []
    try:
        for nodes in (1, 3, 5, 8):
            k, n = (1, 1) if nodes == 1 else (min(3, nodes), min(5, nodes))
            net = start_net(work / f"scale-{nodes}", nodes, wallet, rate_limit=cap)
            try:
                c = client(net, wallet, StoreParams(k=k, n=n))
                cid = c.put(src).cid
                out = work / "scale-out.bin"
                t, _ = timed(c.get, cid, out)
                out.unlink()
                rows.append({"nodes": nodes, "k": k, "n": n, "seconds": t, "mbps": size / MB / t})
            finally:
                net.down()
    finally:
        src.unlink(missing_ok=True)
    return rows


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork+exec, so a child would report the benchmark driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(args: argparse.Namespace) -> None:
    """Run one put or get in this process and print its peak RSS (MB) as JSON."""
    wallet = load_wallet(args.wallet, "bench")
    urls = args.urls.split(",")
    c = Client(NetworkStore(urls, signer=wallet), wallet)
    start = time.perf_counter()
    if args.rss_child == "put":
        result = {"cid": str(c.put(args.file).cid)}
    else:
        c.get(args.cid, args.file)
        result = {}
    result["seconds"] = time.perf_counter() - start
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def bench_rss(work: Path, wallet: Wallet, size: int) -> dict[str, float]:
    wallet_file = work / "wallet.json"
    save_wallet(wallet, wallet_file, "bench", scrypt_n=2**10)
    src = work / "big.bin"
    make_file(src, size)
    net = start_net(work / "rss-net", 5, wallet)
    urls = ",".join(s.url for s in net.status())
    try:
        base = [sys.executable, __file__, "--wallet", str(wallet_file), "--urls", urls]
        put = json.loads(subprocess.check_output([*base, "--rss-child", "put", "--file", str(src)]))
        out = work / "big-out.bin"
        get = json.loads(
            subprocess.check_output(
                [*base, "--rss-child", "get", "--file", str(out), "--cid", put["cid"]]
            )
        )
        assert _same(src, out)
        out.unlink()
        return {
            "size": size,
            "put_rss": put["rss_mb"],
            "get_rss": get["rss_mb"],
            "put_s": put["seconds"],
            "get_s": get["seconds"],
        }
    finally:
        net.down()
        src.unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mb", type=int, default=500, help="put/get object size (MB)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scale-mb", type=int, default=64, help="object size for the scaling test")
    p.add_argument("--cap-mbps", type=float, default=10.0, help="per-node egress cap (MB/s)")
    p.add_argument("--rss-gb", type=float, default=2.0, help="object size for peak RSS (GB)")
    p.add_argument("--quick", action="store_true", help="small sizes, one run")
    p.add_argument("--json", type=Path, help="also write results here")
    p.add_argument("--rss-child", choices=["put", "get"], help=argparse.SUPPRESS)
    p.add_argument("--wallet", help=argparse.SUPPRESS)
    p.add_argument("--urls", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--cid", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    if args.quick:
        args.size_mb, args.runs, args.scale_mb, args.rss_gb = 50, 1, 16, 0.2
    wallet = Wallet.create()
    with tempfile.TemporaryDirectory(
        prefix="medmesh-bench-", dir=os.environ.get("MEDMESH_BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        console.print(f"put/get {args.size_mb} MB x{args.runs} ...")
        pg = bench_put_get(work, wallet, args.size_mb * MB, args.runs)
        console.print(f"download scaling, {args.scale_mb} MB, {args.cap_mbps} MB/s per node ...")
        scale = bench_scaling(work, wallet, args.scale_mb * MB, int(args.cap_mbps * MB))
        console.print(f"peak RSS, {args.rss_gb} GB ...")
        rss = bench_rss(work, wallet, int(args.rss_gb * 1000 * MB))

    size_mb = pg["size"] / MB  # type: ignore[operator]
    t = Table(title=f"medmesh storage benchmark ({platform.node()}, {os.cpu_count()} cores)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    ceil = pg["ceiling"]
    put_rate = size_mb / pg["put"]  # type: ignore[operator]
    get_rate = size_mb / pg["get"]  # type: ignore[operator]
    t.add_row(
        f"put {size_mb:.0f} MB (median of {args.runs})",
        f"{pg['put']:.2f} s  ({put_rate:.0f} MB/s)",
        "<= 5 s",
    )
    t.add_row(
        f"get {size_mb:.0f} MB (median of {args.runs})",
        f"{pg['get']:.2f} s  ({get_rate:.0f} MB/s)",
        "<= 3 s",
    )
    t.add_row("ceiling: AES-256-GCM + SHA-256, 1 process", f"{ceil:.0f} MB/s", "")
    cpu = pg["cpu"]
    t.add_row(
        "CPU s per put: client + nodes",
        f"{cpu['put_client']:.2f} + {cpu['put_nodes']:.2f}",  # type: ignore[index]
        "",
    )
    t.add_row(
        "CPU s per get: client + nodes",
        f"{cpu['get_client']:.2f} + {cpu['get_nodes']:.2f}",  # type: ignore[index]
        "",
    )
    t.add_row("put / ceiling", f"{put_rate / ceil:.2f}", ">= 0.5")  # type: ignore[operator]
    t.add_row("get / ceiling", f"{get_rate / ceil:.2f}", ">= 0.5")  # type: ignore[operator]
    for row in scale:
        t.add_row(
            f"get, {row['nodes']} node(s) capped at {args.cap_mbps:g} MB/s ({row['k']}-of-{row['n']})",
            f"{row['mbps']:.1f} MB/s",
            "grows",
        )
    t.add_row(
        f"peak RSS put {rss['size'] / 1e9:.1f} GB",
        f"{rss['put_rss']:.0f} MB  ({rss['put_s']:.1f} s)",
        "< 300 MB",
    )
    t.add_row(
        f"peak RSS get {rss['size'] / 1e9:.1f} GB",
        f"{rss['get_rss']:.0f} MB  ({rss['get_s']:.1f} s)",
        "< 300 MB",
    )
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps({"put_get": pg, "scaling": scale, "rss": rss}, indent=2))


if __name__ == "__main__":
    main()
