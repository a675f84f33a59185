"""Many small records: ``Client.aput`` one by one vs ``Client.aput_many``.

Starts three storage nodes as separate processes (``medmesh node run``, fsync on, DHT on,
127.0.0.1), stores ``--count`` records of ``--size`` bytes sealed for the wallet and one
other recipient, with k=2 of n=3, the way ``RecordKeeper.put_many`` imports FHIR resources:

- ``aput``: one ``Client.aput`` per record, 16 at a time (``asyncio.gather`` behind a
  semaphore, as ``RecordKeeper.put_many`` did before ``aput_many``);
- ``many``: one ``Client.aput_many`` call.

For each: records/s (wall), client CPU per record (this process, all threads), the nodes'
CPU per record (their processes, incl. DHT announcements), signed requests per record and
HTTP requests per record; and the client CPU of sealing alone, so that the storage share of
the client's CPU can be read off. Afterwards ``--verify`` records of each run are fetched
through the normal get path and compared byte for byte.

    .venv/bin/python bench/storage_batch.py                  # 2,000 x 1 KB, both modes
    .venv/bin/python bench/storage_batch.py --mode many --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medmesh.crypto.envelope import RecordSealer
from medmesh.crypto.keys import EncryptionPublicKey
from medmesh.devnet import Devnet
from medmesh.identity import Wallet
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.client import Client
from medmesh.storage.transport import NodeClient
from medmesh.storage.uploader import StoreParams

PARAMS = StoreParams(k=2, n=3)
CONCURRENCY = 16  # aput calls at once (what RecordKeeper.put_many used before aput_many)


class CountingSigner:
    """The wallet, counting the requests it signs."""

    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet
        self.count = 0

    @property
    def address(self) -> str:
        return self.wallet.address

    def sign_message(self, data: bytes) -> bytes:
        self.count += 1
        return self.wallet.sign_message(data)


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def nodes_cpu(net: Devnet) -> float:
    total = 0.0
    for st in net.status():
        if st.pid is None:
            continue
        fields = Path(f"/proc/{st.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def records(count: int, size: int, seed: int) -> list[bytes]:
    """FHIR-like JSON padded to ``size`` bytes (distinct per record)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        doc = {
            "resourceType": "Observation",
            "id": f"obs-{seed}-{i}",
            "status": "final",
            "valueQuantity": {"value": rng.uniform(3, 12), "unit": "mmol/L"},
        }
        text = json.dumps(doc)
        out.append((text + " " * max(0, size - len(text))).encode()[:size])
    return out


class RequestCounter:
    """Counts HTTP requests sent by every NodeClient (patched for the benchmark only)."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = NodeClient._request

    def __enter__(self) -> RequestCounter:
        orig = self._orig
        counter = self

        async def counted(node: NodeClient, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await orig(node, *args, **kwargs)

        NodeClient._request = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        NodeClient._request = self._orig  # type: ignore[method-assign]


def run_mode(
    mode: str, urls: list[str], wallet: Wallet, items: list[bytes], other: EncryptionPublicKey
) -> tuple[dict[str, float], list[Any]]:
    signer = CountingSigner(wallet)
    client = Client(NetworkStore(urls, signer=signer, params=PARAMS), wallet)
    recipients = [other]

    async def one_by_one() -> list[Any]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(data: bytes) -> Any:
            async with gate:
                return await client.aput(data, recipients=recipients)

        try:
            return await asyncio.gather(*(one(d) for d in items))
        finally:
            await client.store.close()

    async def batched() -> list[Any]:
        try:
            return await client.aput_many([(d, recipients) for d in items])
        finally:
            await client.store.close()

    with RequestCounter() as requests:
        start = time.perf_counter()
        c0 = own_cpu()
        results = asyncio.run(one_by_one() if mode == "aput" else batched())
        wall = time.perf_counter() - start
        cpu = own_cpu() - c0
    n = len(items)
    return {
        "records_per_s": n / wall,
        "wall_s": wall,
        "client_cpu_ms_per_record": cpu / n * 1e3,
        "signed_per_record": signer.count / n,
        "http_per_record": requests.count / n,
    }, results


def seal_cpu(wallet: Wallet, items: list[bytes], other: EncryptionPublicKey) -> float:
    """Client CPU (ms per record) of sealing alone, as both modes do it."""
    keys = [wallet.encryption_public_key, other]
    c0 = own_cpu()
    for data in items:
        sealer = RecordSealer(keys)
        sealer.update(data)
        sealer.finalize()
    return (own_cpu() - c0) / len(items) * 1e3


def verify(urls: list[str], wallet: Wallet, items: list[bytes], results: list[Any], k: int) -> int:
    client = Client(NetworkStore(urls, signer=wallet, params=PARAMS), wallet)
    picks = random.Random(1).sample(range(len(items)), min(k, len(items)))

    async def run() -> int:
        try:
            for i in picks:
                buf = io.BytesIO()
                await client.aget(results[i].cid, buf)
                assert buf.getvalue() == items[i], f"record {i} differs"
        finally:
            await client.store.close()
        return len(picks)

    return asyncio.run(run())


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--mode", choices=["aput", "many", "both"], default="both")
    p.add_argument("--verify", type=int, default=100, help="records fetched back per mode")
    p.add_argument("--json", type=Path, help="also write results here")
    args = p.parse_args()
    wallet, other = Wallet.create(), Wallet.create()
    modes = ["aput", "many"] if args.mode == "both" else [args.mode]
    out: dict[str, Any] = {"count": args.count, "size": args.size, "k": PARAMS.k, "n": PARAMS.n}
    with tempfile.TemporaryDirectory(
        prefix="medmesh-bench-", dir=os.environ.get("MEDMESH_BENCH_DIR")
    ) as tmp:
        net = Devnet(Path(tmp) / "net")
        net.up(3, trusted=[wallet.address], base_port=0)
        try:
            urls = [s.url for s in net.status() if s.running]
            time.sleep(2.0)  # let the DHT join so announcements cost what they will
            out["seal_cpu_ms_per_record"] = seal_cpu(
                wallet, records(500, args.size, 99), other.encryption_public_key
            )
            for seed, mode in enumerate(modes):
                items = records(args.count, args.size, seed)
                n0 = nodes_cpu(net)
                stats, results = run_mode(mode, urls, wallet, items, other.encryption_public_key)
                time.sleep(3.0)  # background DHT announcements finish on the nodes
                stats["nodes_cpu_ms_per_record"] = (nodes_cpu(net) - n0) / args.count * 1e3
                stats["verified"] = verify(urls, wallet, items, results, args.verify)
                out[mode] = stats
                print(f"{mode}: {json.dumps(stats)}", file=sys.stderr)
        finally:
            net.down()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
