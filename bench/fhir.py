"""FHIR benchmark: import, reads through the full path, and search, on a real local network.

Starts a fresh local chain (Anvil under medmesh's supervisor, 1 s blocks), three storage
nodes and a hospital's FHIR gateway (uvicorn on 127.0.0.1, acting for the hospital's wallet,
its index following the ledger), as ``medmesh gateway run --fhir`` has them. Patients
register and grant the hospital treatment and contribute consent. Then:

1. **import**: ``--resources`` resources (``--patients`` Patients, the rest small
   Observations: glucose, heart rate, blood pressure codes, dates over two years) written to
   an NDJSON file and imported as ``medmesh fhir import`` does, from a client process of its
   own (batch Bundles of ``--chunk`` over HTTP with a SMART token, ``--parallel`` in
   flight): validation, sealing for the patient and the hospital, storage (3 nodes, k=2 of
   n=3), anchoring (``anchor_many``), indexing. Resources per second, end to end;
2. **reads**: ``--reads`` ``GET /fhir/Observation/{id}`` from ``--clients`` client processes
   over keep-alive connections, each with a SMART access token: session check, consent
   ``eth_call``, ciphertext fetched from the nodes and verified, opened, checked, access
   logged. Client-observed reads/s, p50/p95/p99/max;
3. **search**: ``GET /fhir/Observation?patient=…&code=…&date=ge…`` (``--searches`` of them,
   random patient, code and start date) over the imported set; then a *copy* of the
   gateway's index file (SQLite backup, opened as its own :class:`FhirIndex` with the
   gateway's secret) is filled up to ``--search-resources`` with synthetic Observations
   (1,000 patients, a few with many more resources than most, 10 LOINC codes, dates over
   two years; not on chain) and the same query shape is timed on it directly, which is
   where the size of the index matters (the API adds one consent batch per page, measured
   in step 3a). A copy, because the live index follows the ledger: the gateway's own
   reconcile would (rightly) delete rows no record stands for.

Results: a table on stdout, JSON in ``bench/out/fhir.json``; copy them into
``docs/benchmarks.md`` with the machine, date and command printed at the end.

    .venv/bin/python bench/fhir.py                   # about 3-5 minutes
    .venv/bin/python bench/fhir.py --resources 2000 --reads 1000 --search-resources 20000
    .venv/bin/python bench/fhir.py --search-shapes patient+code+date,code,date,status+offset
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import importlib.util
import json
import multiprocessing
import os
import random
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# This file is named like the ``fhir`` package (fhir.resources): keep its folder off the
# import path, and load the shared helpers of bench/ledger.py by file.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
_spec = importlib.util.spec_from_file_location("medmesh_bench_ledger", _BENCH / "ledger.py")
assert _spec is not None and _spec.loader is not None
_ledger_bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _ledger_bench
_spec.loader.exec_module(_ledger_bench)
fund, machine_info = _ledger_bench.fund, _ledger_bench.machine_info
percentiles, start_chain = _ledger_bench.percentiles, _ledger_bench.start_chain

import uvicorn  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from medmesh.consent.access_log import AccessLog  # noqa: E402
from medmesh.consent.gateway import Gateway  # noqa: E402
from medmesh.consent.sharing import RecordKeeper  # noqa: E402
from medmesh.daemons import free_port  # noqa: E402
from medmesh.devnet import Devnet  # noqa: E402
from medmesh.identity import Wallet  # noqa: E402
from medmesh.interop.client import GatewayClient  # noqa: E402
from medmesh.interop.fhir.importer import DEFAULT_PARALLEL, Importer  # noqa: E402
from medmesh.interop.fhir.index import FhirIndex, IndexedResource  # noqa: E402
from medmesh.interop.fhir.repository import ACCOUNT_SYSTEM  # noqa: E402
from medmesh.interop.fhir.search import parse_search  # noqa: E402
from medmesh.interop.fhir.server import FhirService, create_fhir_app  # noqa: E402
from medmesh.interop.smart import client_assertion  # noqa: E402
from medmesh.ledger.client import Ledger  # noqa: E402
from medmesh.ledger.contracts import Purpose, Role, Scope  # noqa: E402
from medmesh.ledger.deploy import deploy  # noqa: E402
from medmesh.ledger.indexer import Indexer  # noqa: E402
from medmesh.ledger.rpc import Rpc  # noqa: E402
from medmesh.ledger.tx import TxSender  # noqa: E402
from medmesh.storage.backends.network import NetworkStore  # noqa: E402
from medmesh.storage.client import Client  # noqa: E402
from medmesh.storage.uploader import StoreParams  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
console = Console()
CODES = [
    ("2339-0", "Glucose", "mg/dL"),
    ("8867-4", "Heart rate", "/min"),
    ("8480-6", "Systolic BP", "mm[Hg]"),
]
FOREVER = 2**63
PARAMS = StoreParams(k=2, n=3)


def observation(rng: random.Random, patient_id: str, n: int) -> dict[str, Any]:
    code, text, unit = CODES[n % len(CODES)]
    day = rng.randrange(730)
    when = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + day * 86400 + rng.randrange(86400))
    )
    return {
        "resourceType": "Observation", "id": f"obs-{n}", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                   "code": "vital-signs" if code != "2339-0" else "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}], "text": text},
        "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": round(rng.uniform(50, 180), 1), "unit": unit,
                          "system": "http://unitsofmeasure.org", "code": unit},
    }  # fmt: skip


# Step 3b: the synthetic fill of a copy of the index. The first three codes are the imported ones.
SEARCH_CODES = [c for c, _, _ in CODES] + [
    "718-7", "4548-4", "2160-0", "2093-3", "6690-2", "789-8", "29463-7",
]  # fmt: skip
SEARCH_PATIENTS = 1000
SEARCH_START = 1_700_000_000  # dates over two years from here, as in observation()
SEARCH_DAYS = 730


def synthetic_row(
    rng: random.Random, n: int, patients: int
) -> tuple[IndexedResource, dict[str, Any]]:
    """A current Observation ``syn-<n>`` of one of ``patients`` patients (``pat-<k>``, owned
    by a made-up address; low k have more: ``pat-0`` about 1 % of all, ten times the mean),
    one of :data:`SEARCH_CODES`, at a moment of :data:`SEARCH_DAYS` (last updated within the
    hour after it)."""
    k = min(int(patients * rng.random() ** 1.5), patients - 1)
    when = SEARCH_START + rng.randrange(SEARCH_DAYS * 86400)
    body = {
        "resourceType": "Observation", "id": f"syn-{n}", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                   "code": "laboratory" if n % 3 else "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": rng.choice(SEARCH_CODES)}]},
        "subject": {"reference": f"Patient/pat-{k}"},
        "effectiveDateTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
        "valueQuantity": {"value": round(rng.uniform(50, 180), 1)},
    }  # fmt: skip
    row = IndexedResource(os.urandom(32), "Observation", body["id"], 1, True, f"0x{k:040x}",
                          b"synthetic", float(when + rng.randrange(3600)))  # fmt: skip
    return row, body


def fill_index(
    index: FhirIndex, size: int, rng: random.Random, *, patients: int = SEARCH_PATIENTS
) -> int:
    """Add synthetic rows to ``index`` until it holds ``size`` resources (10,000 per
    transaction); how many were added."""
    extra = size - index.count()
    for first in range(0, extra, 10_000):
        index.put(
            [synthetic_row(rng, n, patients) for n in range(first, min(first + 10_000, extra))]
        )
    return max(extra, 0)


def search_query(
    rng: random.Random, shape: str = "patient+code+date", *, patients: int = SEARCH_PATIENTS
) -> list[tuple[str, str]]:
    """The (name, value) pairs of one random search of ``shape``: ``+``-joined parts of
    patient, code, date (ge a random day), status, category, updated, id, offset."""
    day = time.strftime("%Y-%m-%d", time.gmtime(SEARCH_START + rng.randrange(SEARCH_DAYS) * 86400))
    parts = {
        "patient": ("patient", f"pat-{rng.randrange(patients)}"),
        "code": ("code", f"http://loinc.org|{rng.choice(SEARCH_CODES)}"),
        "date": ("date", f"ge{day}"),
        "status": ("status", "final"),
        "category": ("category", rng.choice(["laboratory", "vital-signs"])),
        "updated": ("_lastUpdated", f"ge{day}"),
        "id": ("_id", f"syn-{rng.randrange(10_000)}"),
        "offset": ("_offset", str(rng.randrange(0, 200, 20))),
    }
    return [parts[p] for p in shape.split("+")]


def time_searches(
    index: FhirIndex, searches: int, rng: random.Random, shape: str = "patient+code+date"
) -> dict[str, Any]:
    """Time ``searches`` random searches of ``shape`` on ``index`` (one page and the total)."""
    times, hits, totals = [], 0, 0
    for _ in range(searches):
        query = parse_search("Observation", search_query(rng, shape))
        t = time.perf_counter()
        found, total = index.search(query)
        times.append(time.perf_counter() - t)
        hits += len(found)
        totals += total
    return {"shape": shape, "indexed": index.count(), "searches": len(times),
            "mean_hits": hits / len(times), "mean_total": totals / len(times),
            "latency": percentiles(times)}  # fmt: skip


def copy_index(source: Path | str, dest: Path | str) -> None:
    """Copy the SQLite file at ``source`` to ``dest`` (backup API: a consistent snapshot
    of a live database, WAL included)."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(dest)) as dst,
    ):
        src.backup(dst)


def search_index_copy(
    source: Path | str,
    secret: bytes,
    dest: Path,
    size: int,
    searches: int,
    rng: random.Random,
    shapes: tuple[str, ...] = ("patient+code+date",),
) -> dict[str, Any]:
    """Step 3b: copy the index at ``source`` to ``dest``, fill the copy up to ``size``
    resources and time ``searches`` searches of each of ``shapes`` on it."""
    copy_index(source, dest)
    index = FhirIndex(dest, secret)  # the same secret: the copy's rows stay readable
    try:
        console.print(f"filling a copy of the index up to {size:,} resources ...")
        t0 = time.perf_counter()
        added = fill_index(index, size, rng)
        fill_s = time.perf_counter() - t0
        console.print(f"  {added:,} synthetic rows in {fill_s:.1f} s")
        index.search(parse_search("Observation", search_query(rng)))  # warm the page cache
        timed = [time_searches(index, searches, rng, shape) for shape in shapes]
        return timed[0] | {"added": added, "fill_s": fill_s, "shapes": timed}
    finally:
        index.close()


def patient(wallet: Wallet, chain_id: int, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": f"pat-{n}",
        "identifier": [{"system": ACCOUNT_SYSTEM, "value": wallet.did(chain_id)}],
        "name": [{"family": f"Synthetic{n}", "given": ["Test"]}],
        "gender": ("female", "male", "other")[n % 3], "birthDate": f"{1940 + n % 60}-0{1 + n % 9}-1{n % 10}",
    }  # fmt: skip


def reader(url: str, token: str, ids: list[str], out: Any, go: Any = None) -> None:
    """One client process: GET each id over one keep-alive connection, time each.

    With ``go``, it says "ready" on ``out`` and waits for ``go`` first, so that the
    processes' start-up (a spawned interpreter importing this module) is not timed.
    """
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    times, bad = [], 0
    if go is not None:
        out.put("ready")
        go.wait()
    for id_ in ids:
        t = time.perf_counter()
        conn.request("GET", f"/fhir/Observation/{id_}", headers=headers)
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t)
        if r.status != 200 or json.loads(body).get("id") != id_:
            bad += 1
    out.put((times, bad))


def import_client(
    url: str, signing_key: bytes, paths: list[str], state_dir: str, chunk: int, parallel: int,
    out: Any, go: Any,
) -> None:  # fmt: skip
    """The import client in a process of its own, as ``medmesh fhir import`` runs: says
    "ready" on ``out`` once started and signed in, waits for ``go``, then imports and puts
    ``(seconds, imported, failed)``."""
    from medmesh.crypto.keys import EncryptionPrivateKey

    wallet = Wallet.from_keys(signing_key, [EncryptionPrivateKey.generate()])  # signs only
    with GatewayClient(url, wallet, timeout=600.0) as gw:
        gw.authenticate("system/*.cu")
        send = functools.partial(gw.bundle, minimal=True)  # as `medmesh fhir import` sends
        importer = Importer([Path(p) for p in paths], send, state_dir=Path(state_dir),
                            chunk=chunk, parallel=parallel)  # fmt: skip
        out.put("ready")
        go.wait()
        t0 = time.perf_counter()
        importer.count()
        summary = importer.run()
        out.put((time.perf_counter() - t0, summary.imported, summary.failed))


def get_token(url: str, hospital: Wallet) -> str:
    import requests

    r = requests.post(
        f"{url}/auth/token",
        data={"grant_type": "client_credentials",
              "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
              "client_assertion": client_assertion(hospital, f"{url}/auth/token"), "scope": "system/*.rs"},
        timeout=10,
    )  # fmt: skip
    r.raise_for_status()
    return str(r.json()["access_token"])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--resources", type=int, default=10_000, help="resources imported (default 10,000)"
    )
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=1000, help="resources per batch Bundle")
    ap.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help="batch Bundles in flight (as `fhir import`)",
    )
    ap.add_argument("--reads", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=4, help="client processes for the reads")
    ap.add_argument("--searches", type=int, default=1000)
    ap.add_argument("--search-resources", type=int, default=100_000, help="index size for step 3b")
    ap.add_argument(
        "--search-shapes",
        default="patient+code+date",
        help="step 3b: comma-separated query shapes, each +-joined parts of patient, code, date, "
        "status, category, updated, id, offset (default patient+code+date)",
    )
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "fhir.json"))
    args = ap.parse_args()
    info = machine_info()
    results: dict[str, Any] = {"args": vars(args)}
    rng = random.Random(7)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medmesh-fhir-bench-")))
        gov, hospital = Wallet.create(), Wallet.create()
        patients = [Wallet.create() for _ in range(args.patients)]
        nodes = Devnet(work / "nodes")
        stack.callback(nodes.down)
        node_urls = [
            s.url
            for s in nodes.up(
                3,
                trusted=[gov.address, hospital.address, *(p.address for p in patients)],
                base_port=0,
            )
        ]
        chain, url, watch = start_chain(stack, work / "chain")
        watch.stop()
        rpc = stack.enter_context(Rpc(url, timeout=60.0))
        fund(rpc, gov.address, hospital.address, *(p.address for p in patients))
        book = deploy(TxSender(rpc, gov))
        g = Ledger(url, book, signer=gov, durable=chain.wait_durable)
        console.print(f"registering {len(patients)} patients and their consents ...")
        h = Ledger(url, book, signer=hospital, durable=chain.wait_durable)
        h.registry.register(hospital.encryption_public_key.to_bytes(), "")
        g.registry.admit(hospital.address, Role.PROVIDER | Role.GATEWAY)

        def enrol(p: Wallet) -> None:  # each patient is its own sender: all in parallel
            pl = Ledger(url, book, signer=p)
            pl.registry.register(p.encryption_public_key.to_bytes(), "")
            pl.consent.grant(
                hospital.address, Scope.all(), Purpose.TREATMENT | Purpose.CONTRIBUTE, FOREVER
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(enrol, patients))

        indexer = Indexer(h, f"sqlite:///{work}/hospital-index.db")
        log = AccessLog(h, f"sqlite:///{work}/gateway.db")
        port = free_port(socket.SOCK_STREAM)
        gateway = Gateway(h, indexer, NetworkStore(node_urls, signer=hospital, params=PARAMS), log,
                          domain=f"127.0.0.1:{port}", uri=f"http://127.0.0.1:{port}")  # fmt: skip
        keeper = RecordKeeper(
            hospital,
            h,
            indexer,
            Client(NetworkStore(node_urls, signer=hospital, params=PARAMS), hospital),
        )
        base = f"http://127.0.0.1:{port}/fhir"
        service = FhirService(gateway, keeper, work / "fhir.db", base_url=base)
        log.start()
        stack.callback(log.stop, flush=False)
        server = uvicorn.Server(uvicorn.Config(create_fhir_app(service), host="127.0.0.1", port=port,
                                               log_level="warning", access_log=False))  # fmt: skip
        serving = threading.Thread(target=server.run, daemon=True)
        serving.start()
        stack.callback(serving.join, 10.0)
        stack.callback(setattr, server, "should_exit", True)
        while not server.started:
            time.sleep(0.05)

        # 1. import
        chain_id = h.chain_id
        resources = [patient(w, chain_id, i) for i, w in enumerate(patients)]
        resources += [
            observation(rng, f"pat-{i % len(patients)}", i)
            for i in range(args.resources - len(patients))
        ]
        export = work / "export.ndjson"
        export.write_text("".join(json.dumps(r) + "\n" for r in resources))
        console.print(
            f"importing {len(resources):,} resources from NDJSON in batches of {args.chunk} ..."
        )
        ctx = multiprocessing.get_context("spawn")
        q: Any = ctx.Queue()
        go = ctx.Event()
        proc = ctx.Process(target=import_client, args=(
            base, hospital._signing_key(), [str(export)], str(work / "imports"), args.chunk,
            args.parallel, q, go))  # fmt: skip
        proc.start()
        assert q.get(timeout=120) == "ready"
        go.set()
        import_s, imported, failed = q.get()
        proc.join()
        results["import"] = {"resources": len(resources), "imported": imported, "failed": failed,
                             "seconds": import_s, "per_s": len(resources) / import_s}  # fmt: skip
        console.print(f"  {len(resources) / import_s:,.0f} resources/s ({failed} failed)")

        # 2. reads, once the gateway has caught up with the import: its ledger follower and
        # index sync process the import's 10,000 anchors for a few seconds after the last
        # chunk, a one-off that would otherwise land in the first read round
        head = int(rpc.call("eth_blockNumber"), 16)
        t0 = time.perf_counter()
        while (
            time.perf_counter() - t0 < 120
            and int(service.index.get_meta("ledger_block") or -1) < head
        ):
            time.sleep(0.2)
        time.sleep(1.0)
        results["catch_up_s"] = time.perf_counter() - t0
        console.print(f"  the gateway caught up with the ledger in {results['catch_up_s']:.1f} s")
        token = get_token(base, hospital)
        obs_ids = [r["id"] for r in resources if r["resourceType"] == "Observation"]
        warm = [rng.choice(obs_ids) for _ in range(50)]
        reader(base, token, warm, q)
        q.get()
        per = args.reads // args.clients
        lists = [[rng.choice(obs_ids) for _ in range(per)] for _ in range(args.clients)]

        def read_round(label: str) -> dict[str, Any]:
            console.print(
                f"{per * args.clients:,} {label} reads from {args.clients} client processes ..."
            )
            go = ctx.Event()
            procs = [ctx.Process(target=reader, args=(base, token, ids, q, go)) for ids in lists]
            for p in procs:
                p.start()
            for _ in procs:
                assert q.get() == "ready"
            t0 = time.perf_counter()  # every client has started: time the reads only
            go.set()
            got = [q.get() for _ in procs]
            reads_s = time.perf_counter() - t0
            for p in procs:
                p.join()
            times = [t for ts, _ in got for t in ts]
            return {"clients": args.clients, "count": len(times), "bad": sum(b for _, b in got),
                    "per_s": len(times) / reads_s, "latency": percentiles(times)}  # fmt: skip

        # cold: mostly first reads of their record (ciphertext fetched from the nodes);
        # warm: the same reads again (ciphertext in the gateway's verified cache; the session
        # check, consent eth_call, decryption and access log run as before)
        results["reads"] = read_round("cold")
        results["reads_warm"] = read_round("warm")

        # 3a. search through the API
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        stimes, hits = [], 0
        for _ in range(args.searches):
            code = rng.choice(CODES)[0]
            start = time.strftime(
                "%Y-%m-%d", time.gmtime(1_700_000_000 + rng.randrange(730) * 86400)
            )
            params = {
                "patient": f"pat-{rng.randrange(len(patients))}",
                "code": f"http://loinc.org|{code}",
                "date": f"ge{start}",
            }
            t = time.perf_counter()
            r = session.get(f"{base}/Observation", params=params, timeout=30)
            stimes.append(time.perf_counter() - t)
            r.raise_for_status()
            hits += len(r.json().get("entry", []))
        results["search_api"] = {"indexed": service.index.count(), "searches": len(stimes),
                                 "mean_hits": hits / len(stimes), "latency": percentiles(stimes)}  # fmt: skip

        # 3b. the index alone at --search-resources rows, on a copy of the gateway's index
        results["search_index"] = search_index_copy(
            service.index.path,
            hospital.encryption_keys[0].secret_bytes(),  # as FhirService derives it
            work / "fhir-search-copy.db",
            args.search_resources,
            args.searches,
            rng,
            tuple(args.search_shapes.split(",")),
        )
        results["machine"] = info | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]}

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    table = Table(title="medmesh FHIR (vm, 2 cores)")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    imp, sa, si = results["import"], results["search_api"], results["search_index"]
    table.add_row(
        f"import {imp['resources']:,} resources (NDJSON, batches of {args.chunk})",
        f"{imp['per_s']:,.0f} /s ({imp['seconds']:.1f} s, {imp['failed']} failed)",
        ">= 1,000 /s",
    )
    for label, rd in (("cold", results["reads"]), ("warm", results["reads_warm"])):
        lat = rd["latency"]
        table.add_row(
            f"reads ({label}), {rd['clients']} clients, {rd['count']:,} (bad: {rd['bad']})",
            f"{rd['per_s']:,.0f} /s",
            ">= 500 /s",
        )
        table.add_row(
            "  read latency p50 / p95 / p99 / max",
            f"{lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.0f} ms",
            "p99 <= 50 ms",
        )
    lat = sa["latency"]
    table.add_row(
        f"search via API, {sa['indexed']:,} indexed, {sa['mean_hits']:.1f} hits",
        f"p50 {lat['p50_ms']:.1f} / p99 {lat['p99_ms']:.1f} ms",
        "",
    )
    lat = si["latency"]
    table.add_row(f"search, index copy alone, {si['indexed']:,} indexed ({si['added']:,} synthetic, filled in {si['fill_s']:.0f} s), {si['mean_hits']:.1f} hits of {si['mean_total']:,.1f}",
                  f"p50 {lat['p50_ms']:.1f} / p95 {lat['p95_ms']:.1f} / p99 {lat['p99_ms']:.1f} / max {lat['max_ms']:.0f} ms", "p99 <= 50 ms")  # fmt: skip
    for shape in si["shapes"][1:]:
        lat = shape["latency"]
        table.add_row(f"  {shape['shape']}, {shape['mean_hits']:.1f} hits of {shape['mean_total']:,.1f}",
                      f"p50 {lat['p50_ms']:.1f} / p95 {lat['p95_ms']:.1f} / p99 {lat['p99_ms']:.1f} / max {lat['max_ms']:.0f} ms", "")  # fmt: skip
    console.print(table)
    m = results["machine"]
    console.print(f"{m['date']}  {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, "
                  f"{m['anvil']}, commit {m['commit']}, load average {m['load_average_at_start'][0]} at start, "
                  f"{m['load_average_at_end'][0]} at end")  # fmt: skip
    console.print(f"command: {m['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
