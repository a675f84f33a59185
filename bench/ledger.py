"""Ledger benchmark: gas per call, consent grants per second from one client, chain growth,
consent gateway latency.

Starts a real local chain in a temporary folder (Anvil under medmesh's supervisor, 1 s
interval mining, state dumped to disk every second, a free port), deploys the contracts and
measures:

1. gas, from real receipts: register, admit, grants at record / kind / all scope, re-grant,
   revoke, anchor (new and superseding), erase, break_glass, log_access (1 and 100 entries),
   anchor_batch of 1,000 records (Merkle root built here; one proof checked on chain with
   ``Records.in_batch``) and anchor_many of 1, 10, 100 and 256 records, the patient's own and
   a provider's for the patient (five FHIR kinds, kind grants), next to the targets;
2. throughput: ``--grants`` consent grants from one patient wallet to as many random
   grantees (a fresh storage slot each), signed locally and sent pipelined, ``--batch`` raw
   transactions per JSON-RPC batch with a fixed gas limit (no estimation round trip), then all
   receipts polled in batches; submitted/s, confirmed/s, time until the last block is
   durable, blocks used and the block-gas ceiling; and, for comparison, one grant at a time
   (send, wait for the receipt, next);
3. growth: what an idle block costs as the chain fills up: Anvil and supervisor CPU per
   block, block interval, worst RPC latency, durable lag, size and contents of the state dump
   (state.json), on the fresh chain and after the throughput run; with ``--grow N``, after
   every ``--grow-step`` more grants too (sent with at most 1,500 in flight); and, with
   ``--slots`` (default 50,000), on a second fresh chain holding that many storage slots
   written with anvil_setStorageAt and no transactions, to separate state from history;
4. the consent gateway (``--gateway``, default 10,000 requests; 0 skips it): a fresh chain,
   three storage nodes (``Devnet``), a patient's seven records (six reached through capsule
   blocks: one kind grant, two record grants; one sealed after its grant, its capsule in its
   header), the gateway served by uvicorn on 127.0.0.1 with its index following the chain
   and its access log flushing, as ``medmesh gateway run`` has them; the provider signs in
   with Ethereum and a client process sends ``GET /v1/records/{id}/capsule?purpose=treatment``
   over one keep-alive connection, one at a time: client-observed p50/p95/p99/max and
   requests/s, and where the server spends a request (session, locate, the consent
   ``eth_call``, access-log write-ahead, capsule lookup, whole ASGI app). Then a grant is
   revoked while its record is being asked for: every answer is bracketed by two
   ``eth_blockNumber`` probes, so it shows from which block the gateway refuses (the target:
   the revoke's own block, the next one at worst) and that each refusal is logged. Last, the
   access log is flushed and the ``AccessLogged`` events on chain are counted against the
   allowed answers.

Usage::

    .venv/bin/python bench/ledger.py                        # the default run (about 2 min)
    .venv/bin/python bench/ledger.py --grants 1000          # a smaller throughput run
    .venv/bin/python bench/ledger.py --grow 50000           # then 50,000 more grants (~4 min)
    .venv/bin/python bench/ledger.py --gateway-only         # only the gateway (about 1 min)
    .venv/bin/python bench/ledger.py --gateway-only --gateway-follower process

The machine's load average is recorded at start and end: on a shared 2-core machine other
processes move the throughput figures by 10-20 %.

Targets: first grant <= 50,000 gas, revoke <= 25,000, anchor one record <= 60,000, a batch
of 1,000 records <= 100 gas per record, anchor_many of 256 records <= 30,000 gas per record,
>= 300 grants/s confirmed from one client; gateway p50 <= 5 ms and p99 <= 20 ms over 10,000
requests, refusing from the block after a revoke at worst. Results go to ``--json`` (default
``bench/out/ledger.json``) as well as to the screen.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import itertools
import json
import math
import multiprocessing
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from rich.console import Console
from rich.table import Table

from medmesh.consent.access_log import AccessLog
from medmesh.consent.gateway import Gateway, create_app
from medmesh.consent.sharing import RecordKeeper
from medmesh.daemons import free_port
from medmesh.devnet import Devnet
from medmesh.errors import LedgerError
from medmesh.identity import Wallet
from medmesh.identity.siwe import new_message
from medmesh.ledger.chains import LocalChain, anvil_binary
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import ConsentContract, Purpose, Role, Scope, kind_tag, record_id
from medmesh.ledger.deploy import AddressBook, deploy
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import Call, Receipt, Signer, TxSender
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.cid import DAG_CBOR, Cid
from medmesh.storage.client import Client
from medmesh.storage.uploader import StoreParams

console = Console(width=None if sys.stdout.isatty() else 132)
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "bench" / "out" / "ledger.json"
ZERO = b"\0" * 32
KIND = "fhir:Observation"
IMPORT_KINDS = (KIND, "fhir:Condition", "fhir:Encounter", "fhir:Procedure", "fhir:Immunization")
ANCHOR_MANY_SIZES = (1, 10, 100, 256)
BLOCK_TIME = 1.0  # LocalChain's default interval mining
FUNDS = 10**21
STAGE_GAS = 1_000_000  # fixed limit for gas-table calls that depend on earlier, unmined ones
GROW_WINDOW = 1_500  # grants in flight during --grow steps (keeps fee quotes fresh)

GATEWAY_TARGETS = {"p50_ms": 5.0, "p99_ms": 20.0}
WARM_UP = 50  # untimed gateway requests before the timed ones
FOLLOW_INTERVAL = 0.5  # s between index syncs, as `medmesh gateway run` (Indexer.follow)
TARGETS = {
    "first_grant": 50_000,
    "revoke": 25_000,
    "anchor": 60_000,
    "batch_per_record": 100,
    "anchor_many_per_record": 30_000,
    "grants_per_s": 300,
}


# -- small helpers ---------------------------------------------------------------------------


def new_cid() -> bytes:
    """The binary CID of a random (stand-in) record manifest."""
    return bytes(Cid.of(os.urandom(64), codec=DAG_CBOR))


def random_address() -> str:
    return "0x" + os.urandom(20).hex()


def fund(rpc: Rpc, *addresses: str) -> None:
    rpc.batch([("anvil_setBalance", [a, hex(FUNDS)]) for a in addresses])


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by ``pid``; 0 if unknown."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def chunks(items: Sequence[Call], size: int) -> list[Sequence[Call]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class TimedSigner:
    """A signer that adds up the time spent signing."""

    def __init__(self, inner: Signer) -> None:
        self._inner = inner
        self.seconds = 0.0

    @property
    def address(self) -> str:
        return self._inner.address

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        start = time.perf_counter()
        raw = self._inner.sign_transaction(tx)
        self.seconds += time.perf_counter() - start
        return raw


# -- Merkle batches (Records.anchor_batch / in_batch) ---------------------------------------


def batch_leaf(patient: str, record: bytes, kind: bytes, supersedes: bytes) -> bytes:
    """keccak256(keccak256(abi_encode(patient, record, kind, supersedes))), as Records.vy."""
    encoded = abi_encode(
        ["address", "bytes32", "bytes4", "bytes32"], [patient, record, kind, supersedes]
    )
    return keccak(keccak(encoded))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative pair hash: keccak256 of the two words, smaller first."""
    return keccak(a + b) if a < b else keccak(b + a)


def merkle_root(leaves: Sequence[bytes], index: int) -> tuple[bytes, list[bytes]]:
    """The root of a sorted-pair tree over ``leaves`` and the proof of ``leaves[index]``.

    An odd node out moves up a level unpaired (its proof simply skips that level).
    """
    if not leaves:
        raise ValueError("no leaves")
    layer, proof = list(leaves), []
    while len(layer) > 1:
        sibling = index ^ 1
        if sibling < len(layer):
            proof.append(layer[sibling])
        layer = [
            hash_pair(layer[i], layer[i + 1]) if i + 1 < len(layer) else layer[i]
            for i in range(0, len(layer), 2)
        ]
        index //= 2
    return layer[0], proof


# -- watching the chain ------------------------------------------------------------------------


class BlockWatch(threading.Thread):
    """Polls eth_blockNumber every ``period`` s: when each block appeared, how long RPCs took."""

    def __init__(self, url: str, period: float = 0.02) -> None:
        super().__init__(name="block-watch", daemon=True)
        self._rpc = Rpc(url, timeout=30.0, retries=1)
        self._period = period
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time seen, block number)
        self.latencies: list[tuple[float, float]] = []  # (monotonic time sent, seconds)

    def run(self) -> None:
        last: int | None = None
        while not self._halt.is_set():
            start = time.monotonic()
            try:
                number: int | None = int(self._rpc.call("eth_blockNumber"), 16)
            except LedgerError:
                number = None
            end = time.monotonic()
            with self._lock:
                self.latencies.append((start, end - start))
                if number is not None and number != last:
                    self.arrivals.append((end, number))
                    last = number
            self._halt.wait(self._period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5.0)
        self._rpc.close()

    def next_block(self, timeout: float = 10.0) -> None:
        """Return right after a new block appears."""
        with self._lock:
            seen = len(self.arrivals)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.arrivals) > seen:
                    return
            time.sleep(0.005)

    def window(self, start: float, end: float) -> dict[str, float | int | None]:
        """Block intervals (ms, per block) and RPC latency (ms) between ``start`` and ``end``."""
        with self._lock:
            arrivals = [a for a in self.arrivals if start <= a[0] <= end]
            lat = [s for t, s in self.latencies if start <= t <= end]
        intervals = [
            (t1 - t0) / (n1 - n0) * 1000
            for (t0, n0), (t1, n1) in itertools.pairwise(arrivals)
            if n1 > n0
        ]
        return {
            "blocks": arrivals[-1][1] - arrivals[0][1] if len(arrivals) > 1 else 0,
            "interval_ms_mean": statistics.fmean(intervals) if intervals else None,
            "interval_ms_max": max(intervals) if intervals else None,
            "rpc_ms_median": statistics.median(lat) * 1000 if lat else None,
            "rpc_ms_max": max(lat) * 1000 if lat else None,
        }


def dump_stats(chain: LocalChain) -> dict[str, Any]:
    """What Anvil's state dump holds: the last complete copy (snapshot.json) is read."""
    state_size = chain.state_file.stat().st_size if chain.state_file.exists() else 0
    raw = chain.snapshot_file.read_bytes() if chain.snapshot_file.exists() else b"{}"
    state = json.loads(raw)
    accounts = state.get("accounts") or {}
    account_bytes = len(json.dumps(accounts, separators=(",", ":")))
    return {
        "state_json_bytes": state_size,
        "snapshot_bytes": len(raw),
        "accounts": len(accounts),
        "storage_slots": sum(len(a.get("storage") or {}) for a in accounts.values()),
        "blocks": len(state.get("blocks") or []),
        "transactions": len(state.get("transactions") or []),
        "accounts_share": account_bytes / len(raw) if raw else 0.0,
    }


def block_number(rpc: Rpc) -> int:
    return int(rpc.call("eth_blockNumber"), 16)


def probe(
    chain: LocalChain, watch: BlockWatch, rpc: Rpc, label: str, seconds: float
) -> dict[str, Any]:
    """Let the chain idle for ``seconds`` (empty blocks) and measure what each block costs.

    Anvil rewrites state.json in place every second, so its size is sampled throughout and
    the largest (complete) size kept.
    """
    status = chain.status()
    watch.next_block()
    first = block_number(rpc)
    start = time.monotonic()
    anvil0, sup0 = proc_cpu(status.anvil_pid), proc_cpu(status.pid)
    state_size = 0
    while time.monotonic() - start < seconds:
        with contextlib.suppress(OSError):
            state_size = max(state_size, chain.state_file.stat().st_size)
        time.sleep(0.05)
    anvil1, sup1 = proc_cpu(status.anvil_pid), proc_cpu(status.pid)
    end = time.monotonic()
    blocks = block_number(rpc) - first
    seen = watch.window(start, end)
    if seen["interval_ms_mean"] is None and blocks:
        seen["interval_ms_mean"] = (end - start) / blocks * 1000
    durable = chain.durable_block()
    elapsed = end - start
    return {
        "label": label,
        "seconds": elapsed,
        **seen,
        "blocks": blocks,
        "anvil_cpu_ms_per_block": (anvil1 - anvil0) / blocks * 1000 if blocks else None,
        "supervisor_cpu_ms_per_block": (sup1 - sup0) / blocks * 1000 if blocks else None,
        "anvil_cpu_share": (anvil1 - anvil0) / elapsed,
        "supervisor_cpu_share": (sup1 - sup0) / elapsed,
        "anvil_rss_mb": proc_rss_mb(status.anvil_pid),
        "durable_lag_blocks": block_number(rpc) - (durable or 0),
        **dump_stats(chain),
        "state_json_bytes": state_size,
    }


def start_chain(stack: contextlib.ExitStack, root: Path) -> tuple[LocalChain, str, BlockWatch]:
    """A local chain under ``root`` and a block watch on it, both stopped when ``stack`` closes."""
    chain = LocalChain(root)
    stack.callback(chain.down)
    stack.callback(console.print, f"stopping the local chain in {root.name}/ ...")
    status = chain.up(port=0)
    if status.rpc_url is None:
        raise LedgerError("the local chain started without an RPC URL")
    watch = BlockWatch(status.rpc_url)
    watch.start()
    stack.callback(watch.stop)
    return chain, status.rpc_url, watch


def bench_slots(work: Path, slots: int, seconds: float) -> dict[str, Any]:
    """A fresh chain holding ``slots`` storage slots and no history: what does a block cost?

    The slots are written with anvil_setStorageAt (no transactions), so the state dump holds
    state only; compare with the same number of grants, which also leave their transactions.
    """
    with contextlib.ExitStack() as stack:
        chain, url, watch = start_chain(stack, work / "slots-chain")
        rpc = stack.enter_context(Rpc(url, timeout=60.0))
        target = random_address()
        for first in range(0, slots, 1000):
            rpc.batch(
                [
                    ("anvil_setStorageAt", [target, "0x" + os.urandom(32).hex(), "0x" + "01" * 32])
                    for _ in range(first, min(first + 1000, slots))
                ]
            )
        time.sleep(2.5)  # let a dump and a snapshot hold them
        return probe(chain, watch, rpc, f"{slots:,} slots, no txs", seconds) | {"grants_total": 0}


# -- 1. gas --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GasRow:
    call: str
    gas: float
    target: int | None = None

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.gas <= self.target


def send_stage(stage: Sequence[tuple[Ledger, list[tuple[str, Call]]]]) -> dict[str, Receipt]:
    """Send each ledger's calls (in order, one batch per sender), then wait for all of them."""
    sent = []
    for ledger, labelled in stage:
        assert ledger.sender is not None
        calls = [c for _, c in labelled]
        sent.append((ledger.sender, labelled, calls, ledger.sender.send_many(calls)))
    receipts: dict[str, Receipt] = {}
    for sender, labelled, calls, hashes in sent:
        for (label, _), receipt in zip(labelled, sender.wait(hashes, calls=calls), strict=True):
            receipts[label] = receipt
    return receipts


def bench_gas(ledgers: dict[str, Ledger], wallets: dict[str, Wallet]) -> dict[str, Any]:
    patient, provider, gateway = (wallets[k].address for k in ("patient", "provider", "gateway"))
    gov, pat = ledgers["governance"], ledgers["patient"]
    expiry = int(time.time()) + 365 * 86400
    cid1, cid2 = new_cid(), new_cid()
    record1 = Scope.record(patient, cid1)
    kind = Scope.kind(KIND)
    tag = kind_tag(KIND)

    # 1000 records anchored under one root by the patient
    batch_records = [keccak(new_cid()) for _ in range(1000)]
    leaves = [batch_leaf(patient, r, tag, ZERO) for r in batch_records]
    probe_index = 617
    root, proof = merkle_root(leaves, probe_index)

    def fixed(call: Call) -> Call:
        return dataclasses.replace(call, gas=STAGE_GAS)

    # Stage 1: everything that depends only on calls before it from the same sender.
    stage1 = [
        (
            gov,
            [
                ("admit", gov.registry.tx("admit", provider, int(Role.PROVIDER))),
                ("admit_gateway", gov.registry.tx("admit", gateway, int(Role.GATEWAY))),
            ],
        ),
        (
            pat,
            [
                (
                    "register",
                    fixed(
                        pat.registry.tx(
                            "register", wallets["patient"].encryption_public_key.to_bytes(), ""
                        )
                    ),
                ),
                ("anchor", fixed(pat.records.anchor_call(cid1, KIND))),
                (
                    "first_grant",
                    fixed(
                        pat.consent.grant_call(
                            provider, record1, Purpose.TREATMENT, expiry, os.urandom(32)
                        )
                    ),
                ),
                (
                    "grant_kind",
                    fixed(pat.consent.grant_call(provider, kind, Purpose.TREATMENT, expiry)),
                ),
                (
                    "grant_all",
                    fixed(pat.consent.grant_call(provider, Scope.all(), Purpose.RESEARCH, expiry)),
                ),
                (
                    "regrant",
                    fixed(
                        pat.consent.grant_call(
                            provider,
                            record1,
                            Purpose.TREATMENT | Purpose.PAYMENT,
                            expiry + 86400,
                            os.urandom(32),
                        )
                    ),
                ),
                ("revoke", fixed(pat.consent.tx("revoke", provider, kind.word))),
                ("supersede", fixed(pat.records.anchor_call(cid2, KIND, record1.word))),
                ("erase", fixed(pat.records.tx("erase", record_id(patient, cid2)))),
                ("anchor_batch", fixed(pat.records.tx("anchor_batch", root, len(leaves)))),
            ],
        ),
    ]
    receipts = send_stage(stage1)

    # Stage 2: calls that need the roles admitted in stage 1.
    now = int(time.time())
    contribute = Purpose.CONTRIBUTE

    def entries(n: int) -> list[tuple[str, str, bytes, Purpose, int]]:
        return [(patient, provider, keccak(new_cid()), Purpose.TREATMENT, now) for _ in range(n)]

    prov, gw = ledgers["provider"], ledgers["gateway"]
    stage2 = [
        (prov, [("break_glass", prov.consent.tx("break_glass", patient, os.urandom(32)))]),
        (
            gw,
            [
                ("log_access_1", gw.consent.log_access_call(entries(1))),
                ("log_access_100", gw.consent.log_access_call(entries(100))),
            ],
        ),
    ]
    receipts.update(send_stage(stage2))

    # the batch is real: the proof of one record verifies on chain, a wrong one does not
    proof_ok = pat.records.in_batch(root, patient, batch_records[probe_index], KIND, ZERO, proof)
    wrong_ok = pat.records.in_batch(
        root, patient, batch_records[probe_index + 1], KIND, ZERO, proof
    )
    author, _, count = pat.records.call("batch_of", root)
    if not proof_ok or wrong_ok or int(count) != len(leaves):
        raise AssertionError(f"batch check failed: proof {proof_ok}, wrong {wrong_ok}, {count}")

    # Stage 3: the provider may contribute the patient's records of each import kind
    stage3 = [
        (
            pat,
            [
                (
                    f"contribute_{k}",
                    pat.consent.grant_call(provider, Scope.kind(k), contribute, expiry),
                )
                for k in IMPORT_KINDS
            ],
        )
    ]
    send_stage(stage3)

    # Stage 4: anchor_many, the patient's own records and the provider's for the patient
    def import_entries(n: int) -> list[tuple[str, bytes, str, bytes]]:
        return [(patient, new_cid(), IMPORT_KINDS[i % len(IMPORT_KINDS)], ZERO) for i in range(n)]

    stage4 = [
        (
            ledger,
            [
                (f"many_{who}_{n}", ledger.records.anchor_many_call(import_entries(n))[0])
                for n in ANCHOR_MANY_SIZES
            ],
        )
        for who, ledger in (("own", pat), ("for", prov))
    ]
    receipts.update(send_stage(stage4))
    for who, ledger in (("own", pat), ("for", prov)):
        for n in ANCHOR_MANY_SIZES:
            anchored = ledger.records.events(receipts[f"many_{who}_{n}"], "Anchored")
            if len(anchored) != n or {a["patient"] for a in anchored} != {patient}:
                raise AssertionError(f"anchor_many {who} {n}: {len(anchored)} Anchored events")

    g = {k: r.gas_used for k, r in receipts.items()}
    rows = [
        GasRow("register (patient, x25519 key, no URI)", g["register"]),
        GasRow("admit (provider role)", g["admit"]),
        GasRow(
            "grant, record scope, first (capsule ref)", g["first_grant"], TARGETS["first_grant"]
        ),
        GasRow("grant, kind scope", g["grant_kind"]),
        GasRow("grant, all scope (zero capsule)", g["grant_all"]),
        GasRow("re-grant, same key (capsule ref)", g["regrant"]),
        GasRow("revoke", g["revoke"], TARGETS["revoke"]),
        GasRow("anchor one record", g["anchor"], TARGETS["anchor"]),
        GasRow("anchor, superseding a version", g["supersede"]),
        GasRow("erase", g["erase"]),
        GasRow("break_glass", g["break_glass"]),
        GasRow("log_access, 1 entry", g["log_access_1"]),
        GasRow("log_access, 100 entries (total)", g["log_access_100"]),
        GasRow("log_access, 100 entries (per entry)", g["log_access_100"] / 100),
        GasRow("anchor_batch of 1,000 (total)", g["anchor_batch"]),
        GasRow(
            "anchor_batch of 1,000 (per record)",
            g["anchor_batch"] / len(leaves),
            TARGETS["batch_per_record"],
        ),
    ]
    for who, label in (("own", "own records"), ("for", "for a patient (anchor_for rules)")):
        for n in ANCHOR_MANY_SIZES:
            target = TARGETS["anchor_many_per_record"] if n == ANCHOR_MANY_SIZES[-1] else None
            rows.append(
                GasRow(
                    f"anchor_many of {n}, {label} (per record)", g[f"many_{who}_{n}"] / n, target
                )
            )
    return {
        "rows": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows],
        "batch": {
            "records": len(leaves),
            "root": "0x" + root.hex(),
            "proof_length": len(proof),
            "proof_verified_on_chain": proof_ok,
            "wrong_leaf_rejected": not wrong_ok,
            "author": author,
        },
    }


# -- 2. throughput -------------------------------------------------------------------------------


def grant_calls(consent: ConsentContract, n: int, gas: int) -> list[Call]:
    """n first grants, each to a new random grantee for one record (a fresh slot each)."""
    expiry = int(time.time()) + 365 * 86400
    return [
        dataclasses.replace(
            consent.grant_call(
                random_address(),
                Scope(os.urandom(32), "record"),
                Purpose.TREATMENT,
                expiry,
                os.urandom(32),
            ),
            gas=gas,
        )
        for _ in range(n)
    ]


def pipelined(
    sender: TxSender,
    signer: TimedSigner,
    consent: ConsentContract,
    chain: LocalChain,
    watch: BlockWatch,
    n: int,
    *,
    batch: int,
    gas: int,
    window: int = 0,
) -> dict[str, Any]:
    """Grants from one client: encode, sign and send in batches, then wait for every receipt.

    ``window`` > 0 caps the grants in flight (the oldest batch is awaited first).
    """
    rpc = sender.rpc
    status = chain.status()
    signer.seconds = 0.0
    anvil0 = proc_cpu(status.anvil_pid)
    t0 = time.perf_counter()
    m0 = time.monotonic()
    calls = grant_calls(consent, n, gas)
    encoded = time.perf_counter() - t0
    inflight: list[list[str]] = []
    receipts: list[Receipt] = []
    rpc_send = 0.0
    for part in chunks(calls, batch):
        while window and inflight and sum(map(len, inflight)) + len(part) > window:
            receipts += sender.wait(inflight.pop(0), timeout=120.0)
        s = time.perf_counter()
        hashes = sender.send_many(part)
        rpc_send += time.perf_counter() - s
        inflight.append(hashes)
    submitted = time.perf_counter() - t0
    for hashes in inflight:
        receipts += sender.wait(hashes, timeout=max(120.0, n / 50))
    confirmed = time.perf_counter() - t0
    m1 = time.monotonic()
    anvil1 = proc_cpu(status.anvil_pid)
    failed = sum(r.status != 1 for r in receipts)
    if len(receipts) != n or failed:
        raise AssertionError(f"{failed} of {len(receipts)} grants failed (expected {n})")
    last_block = max(r.block_number for r in receipts)
    chain.wait_durable(last_block, timeout=120.0)
    durable = time.perf_counter() - t0

    per_block = Counter(r.block_number for r in receipts)
    blocks = sorted(per_block)
    info = rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in blocks])
    gas_used = [r.gas_used for r in receipts]
    gas_limit = int(info[0]["gasLimit"], 16)
    mean_gas = statistics.fmean(gas_used)
    return {
        "grants": n,
        "batch": batch,
        "window": window,
        "gas_limit_per_tx": gas,
        "encode_s": encoded,
        "sign_s": signer.seconds,
        "send_rpc_s": rpc_send - signer.seconds,
        "submitted_s": submitted,
        "confirmed_s": confirmed,
        "durable_s": durable,
        "durable_wait_s": durable - confirmed,
        "submitted_per_s": n / submitted,
        "confirmed_per_s": n / confirmed,
        "durable_per_s": n / durable,
        "blocks": len(blocks),
        "first_block": blocks[0],
        "last_block": blocks[-1],
        "grants_per_block": [per_block[b] for b in blocks],
        "block_gas_used": [int(b["gasUsed"], 16) for b in info],
        "base_fee_gwei": [int(b.get("baseFeePerGas") or "0x0", 16) / 1e9 for b in info],
        "block_gas_limit": gas_limit,
        "gas_per_grant": mean_gas,
        "ceiling_per_block": int(gas_limit // mean_gas),
        "ceiling_per_s": int(gas_limit // mean_gas) / BLOCK_TIME,
        "anvil_cpu_s": anvil1 - anvil0,
        "during": watch.window(m0, m1),
    }


def one_at_a_time(sender: TxSender, consent: ConsentContract, n: int, gas: int) -> dict[str, Any]:
    """Grants sent one by one, each waited for before the next."""
    calls = grant_calls(consent, n, gas)
    latencies = []
    t0 = time.perf_counter()
    for call in calls:
        s = time.perf_counter()
        receipt = sender.transact(call)
        if receipt.status != 1:
            raise AssertionError("a sequential grant failed")
        latencies.append(time.perf_counter() - s)
    elapsed = time.perf_counter() - t0
    return {
        "grants": n,
        "seconds": elapsed,
        "confirmed_per_s": n / elapsed,
        "latency_s_median": statistics.median(latencies),
        "latency_s_max": max(latencies),
    }


# -- 4. gateway -----------------------------------------------------------------------------------


class Stopwatch:
    """Per-call durations of wrapped callables, by name: where the gateway spends a request."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def reset(self) -> None:
        self.times = {name: [] for name in self.times}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.times.setdefault(name, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[name].append(time.perf_counter() - start)

        return timed

    def wrap_async(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.times.setdefault(name, [])

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.times[name].append(time.perf_counter() - start)

        return timed

    def asgi(self, name: str, app: Any) -> Any:
        """``app`` behind an ASGI wrapper timing each HTTP request to its last byte."""
        self.times.setdefault(name, [])

        async def timed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            try:
                await app(scope, receive, send)
            finally:
                self.times[name].append(time.perf_counter() - start)

        return timed

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: percentiles(values) for name, values in self.times.items() if values}


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p95, p99 and max of ``seconds``, the latter five in milliseconds."""
    ordered = sorted(seconds)
    n = len(ordered)

    def rank(q: float) -> float:  # nearest rank
        return ordered[max(0, math.ceil(q * n) - 1)] * 1000

    return {
        "count": n,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "p50_ms": rank(0.50),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": ordered[-1] * 1000,
    }


def hammer(
    port: int, token: str, paths: list[str], capsules: list[bool], n: int, conn: Any
) -> None:
    """The load client, in its own process: ``n`` GETs over one keep-alive connection.

    ``capsules[i]``: whether ``paths[i]`` should come with a capsule (False: the record's
    header holds it). Sends its latencies (client-observed, request written to body read)
    back over ``conn``. Waits for a "go" after a short warm-up, so the server's counters can
    be reset.
    """
    headers = {"Authorization": f"Bearer {token}"}
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(i: int) -> tuple[int, bool]:
        client.request("GET", paths[i], headers=headers)
        response = client.getresponse()
        body = response.read()
        ok = response.status == 200 and (json.loads(body)["capsule"] is not None) == capsules[i]
        return response.status, ok

    for i in range(WARM_UP):
        get(i % len(paths))
    conn.send("warm")
    conn.recv()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    as_expected = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        start = time.perf_counter()
        status, ok = get(i % len(paths))
        latencies.append(time.perf_counter() - start)
        statuses[status] += 1
        as_expected += ok
    elapsed = time.perf_counter() - t0
    client.close()
    conn.send(
        {
            "latencies": latencies,
            "statuses": dict(statuses),
            "capsule_as_expected": as_expected,
            "seconds": elapsed,
            "cpu_s": time.process_time() - cpu0,
        }
    )


@dataclasses.dataclass
class GatewayWorld:
    """A local chain, three storage nodes, a patient's records and a gateway serving them."""

    chain: LocalChain
    rpc_url: str
    rpc: Rpc
    patient: Ledger
    provider: Wallet
    gateway: Gateway
    log: AccessLog
    port: int
    records: list[tuple[bytes, bool]]  # (record id, capsule from a block?), in request order
    revocable: tuple[bytes, Scope]  # a record reached only by a record-scope grant
    stopwatch: Stopwatch

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def follow_index(rpc_url: str, book: AddressBook, db_url: str, halt: Any) -> None:
    """Keep the index at ``db_url`` following the chain until ``halt`` is set (own process)."""
    with Ledger(rpc_url, book) as ledger:
        Indexer(ledger, db_url).follow(halt, interval=FOLLOW_INTERVAL)


def start_gateway_world(
    stack: contextlib.ExitStack, work: Path, stopwatch: Stopwatch, follower: str = "thread"
) -> GatewayWorld:
    """Chain, nodes, records, grants and a gateway on 127.0.0.1: all stopped by ``stack``.

    The index follows the chain in a thread of the gateway's process, as ``medmesh gateway
    run`` has it, or (``follower="process"``) in a process of its own.
    """
    nodes = Devnet(work / "gateway-nodes")
    gov, patient, provider = (Wallet.create() for _ in range(3))
    stack.callback(nodes.down)
    node_urls = [s.url for s in nodes.up(3, trusted=[gov.address, patient.address], base_port=0)]
    chain, url, watch = start_chain(stack, work / "gateway-chain")
    watch.stop()  # its polling thread would share the gateway's interpreter
    rpc = stack.enter_context(Rpc(url, timeout=60.0))
    fund(rpc, gov.address, patient.address, provider.address)
    book = deploy(TxSender(rpc, gov))
    ledgers = {
        w.address: stack.enter_context(
            Ledger(url, book, signer=w, durable=chain.wait_durable, timeout=60.0)
        )
        for w in (gov, patient, provider)
    }
    g, pat, prov = (ledgers[w.address] for w in (gov, patient, provider))
    assert g.sender and pat.sender and prov.sender
    hashes = [
        pat.sender.send(pat.registry.tx("register", patient.encryption_public_key.to_bytes(), "")),
        prov.sender.send(
            prov.registry.tx("register", provider.encryption_public_key.to_bytes(), "")
        ),
        *g.sender.send_many(
            [
                g.registry.tx("admit", gov.address, int(Role.GATEWAY)),
                g.registry.tx("admit", provider.address, int(Role.PROVIDER)),
            ]
        ),
    ]
    receipts = g.sender.wait(hashes)
    chain.wait_durable(max(r.block_number for r in receipts))

    params = StoreParams(k=2, n=3)
    keeper = RecordKeeper(
        patient,
        pat,
        Indexer(pat, f"sqlite:///{work}/gateway-patient.db"),
        Client(NetworkStore(node_urls, signer=patient, params=params), patient),
    )

    def put(kind: str) -> bytes:
        return keeper.put(f"record: {os.urandom(8).hex()}".encode() * 64, kind).record

    observations = [put(KIND) for _ in range(4)]
    conditions = [put("fhir:Condition") for _ in range(2)]
    expiry = int(time.time()) + 86400
    keeper.grant(provider.address, Scope.kind(KIND), Purpose.TREATMENT, expiry)
    record_scopes = [Scope(r, f"record:0x{r.hex()}") for r in conditions]
    for scope in record_scopes:
        keeper.grant(provider.address, scope, Purpose.TREATMENT, expiry)
    later = put(KIND)  # sealed for the provider too: its capsule is in its own header
    records = [(r, True) for r in observations + conditions] + [(later, False)]

    index_url = f"sqlite:///{work}/gateway-index.db"
    indexer = Indexer(g, index_url)
    indexer.sync()
    log = AccessLog(g, f"sqlite:///{work}/gateway.db")
    port = free_port(socket.SOCK_STREAM)
    gateway = Gateway(g, indexer, NetworkStore(node_urls, signer=gov, params=params), log,
                      domain=f"127.0.0.1:{port}", uri=f"http://127.0.0.1:{port}")  # fmt: skip
    if follower == "process":
        ctx = multiprocessing.get_context("spawn")
        stop_following = ctx.Event()
        process = ctx.Process(
            target=follow_index, args=(url, book, index_url, stop_following), daemon=True
        )
        process.start()
        stack.callback(process.join, 10.0)
        stack.callback(stop_following.set)
    else:
        halt = threading.Event()
        thread = threading.Thread(
            target=indexer.follow,
            args=(halt,),
            kwargs={"interval": FOLLOW_INTERVAL},
            daemon=True,
            name="medmesh-indexer",
        )
        thread.start()
        stack.callback(thread.join, 5.0)
        stack.callback(halt.set)
    log.start()
    stack.callback(log.stop, flush=False)

    # where the server spends a request (each wrapper costs well under a microsecond)
    gateway.sessions.resolve = stopwatch.wrap("session", gateway.sessions.resolve)  # type: ignore[method-assign]
    gateway._locate = stopwatch.wrap("locate (index)", gateway._locate)  # type: ignore[method-assign]
    if hasattr(gateway, "_decide"):  # since the gateway encodes the call itself
        gateway._decide = stopwatch.wrap("consent (eth_call)", gateway._decide)  # type: ignore[method-assign]
    else:
        g.consent.has_access = stopwatch.wrap("consent (eth_call)", g.consent.has_access)  # type: ignore[method-assign]
    log.allowed = stopwatch.wrap("access log (enqueue)", log.allowed)  # type: ignore[method-assign]
    gateway.capsule_for = stopwatch.wrap_async("capsule lookup", gateway.capsule_for)  # type: ignore[method-assign]
    app = stopwatch.asgi("server total (ASGI)", create_app(gateway))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    serving = threading.Thread(target=server.run, daemon=True, name="gateway-http")
    serving.start()
    stack.callback(serving.join, 10.0)
    stack.callback(setattr, server, "should_exit", True)
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise LedgerError("the gateway did not start")
    return GatewayWorld(
        chain, url, rpc, pat, provider, gateway, log, port, records,
        (record_scopes[0].word, record_scopes[0]), stopwatch,
    )  # fmt: skip


def siwe_login(http: httpx.Client, wallet: Wallet) -> str:
    info = http.get("/v1/auth/nonce").json()
    message = new_message(
        info["domain"], wallet.address, info["uri"], info["chain_id"], nonce=info["nonce"]
    ).to_text()
    signature = "0x" + wallet.sign_message(message.encode()).hex()
    answer = http.post("/v1/auth/login", json={"message": message, "signature": signature})
    answer.raise_for_status()
    return str(answer.json()["token"])


def capsule_path(record: bytes) -> str:
    return f"/v1/records/0x{record.hex()}/capsule?purpose=treatment"


def timed_run(world: GatewayWorld, token: str, n: int) -> dict[str, Any]:
    """``n`` capsule requests from a client process, round-robin over the records."""
    paths = [capsule_path(r) for r, _ in world.records]
    capsules = [c for _, c in world.records]
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    client = ctx.Process(
        target=hammer, args=(world.port, token, paths, capsules, n, theirs), daemon=True
    )
    client.start()
    try:
        if not ours.poll(60):
            raise LedgerError("the load client did not start")
        ours.recv()  # warmed up
        status = world.chain.status()
        anvil0, own0 = proc_cpu(status.anvil_pid), time.process_time()
        sent0 = world.log.sent
        block0 = block_number(world.rpc)
        world.stopwatch.reset()
        m0 = time.monotonic()
        ours.send("go")
        if not ours.poll(max(120.0, n / 20)):
            raise LedgerError("the load client did not finish")
        got: dict[str, Any] = ours.recv()
        m1 = time.monotonic()
        anvil1, own1 = proc_cpu(status.anvil_pid), time.process_time()
    finally:
        client.join(10)
        if client.is_alive():
            client.terminate()
    latencies = got.pop("latencies")
    return {
        "requests": n,
        "records": len(paths),
        **got,
        "requests_per_s": n / got["seconds"],
        "latency": percentiles(latencies),
        "server": world.stopwatch.summary(),
        "gateway_cpu_s": own1 - own0,
        "anvil_cpu_s": anvil1 - anvil0,
        "log_sent_during": world.log.sent - sent0,
        "log_pending_after": world.log.pending(),
        "blocks": block_number(world.rpc) - block0,
        "seconds_wall": m1 - m0,
    }


def revocation(world: GatewayWorld, http: httpx.Client, token: str) -> dict[str, Any]:
    """Revoke a grant while asking for its record: from which block, how soon, is it refused?

    Each request is bracketed by two eth_blockNumber probes, so every answer is placed between
    two known chain heads; the revoke is sent without waiting, in the middle of the stream.
    """
    record, scope = world.revocable
    path = capsule_path(record)
    headers = {"Authorization": f"Bearer {token}"}
    refusals_before = len(world.log.refusals(limit=1_000_000))
    assert world.patient.sender is not None
    samples: list[dict[str, Any]] = []
    probes: list[tuple[float, int]] = []

    def head() -> int:
        number = block_number(world.rpc)
        probes.append((time.perf_counter(), number))
        return number

    tx_hash: str | None = None
    sent_at = 0.0
    mined: int | None = None
    refused_since_mined = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and refused_since_mined < 50:
        before = head()
        start = time.perf_counter()
        status = http.get(path, headers=headers).status_code
        end = time.perf_counter()
        after = head()
        samples.append({"start": start, "end": end, "before": before, "after": after,
                        "status": status})  # fmt: skip
        if tx_hash is None and len(samples) >= 20:
            tx_hash = world.patient.sender.send(
                world.patient.consent.tx("revoke", world.provider.address, scope.word)
            )
            sent_at = time.perf_counter()
        elif tx_hash is not None and mined is None:
            receipt = world.rpc.call("eth_getTransactionReceipt", tx_hash)
            if receipt:
                if int(receipt["status"], 16) != 1:
                    raise AssertionError("the revoke failed")
                mined = int(receipt["blockNumber"], 16)
        if mined is not None and status == 403:
            refused_since_mined += 1
    if mined is None:
        raise AssertionError("the revoke was not mined within 30 s")
    seen = min(t for t, number in probes if number >= mined)
    allowed_after = [s for s in samples if s["before"] >= mined and s["status"] == 200]
    refused = [s for s in samples if s["status"] == 403]
    refused_before = [s for s in refused if s["after"] < mined]
    first = refused[0] if refused else None
    after_all = world.log.refusals(limit=1_000_000)
    logged = [
        r
        for r in after_all[: len(after_all) - refusals_before]  # newest first
        if r["record"] == "0x" + record.hex() and r["reason"] == "no_consent"
    ]
    return {
        "requests": len(samples),
        "revoke_block": mined,
        "revoke_sent_to_seen_ms": (seen - sent_at) * 1000,
        "allowed_after_revoke_block": len(allowed_after),
        "refused_before_revoke_block": len(refused_before),
        "first_refusal_head_before": first["before"] if first else None,
        "first_refusal_head_after": first["after"] if first else None,
        "first_refusal_blocks_after": max(0, first["before"] - mined) if first else None,
        "first_refusal_ms_after_seen": max(0.0, (first["end"] - seen) * 1000) if first else None,
        "last_allowed_head_before": max(
            (s["before"] for s in samples if s["status"] == 200), default=None
        ),
        "refused": len(refused),
        "refusals_logged": len(logged),
        "statuses": dict(Counter(s["status"] for s in samples)),
    }


def bench_gateway(work: Path, n: int, follower: str = "thread") -> dict[str, Any]:
    """The consent gateway under load, its revocation latency, and its log on chain."""
    stopwatch = Stopwatch()
    with contextlib.ExitStack() as stack:
        console.print("gateway: 3 storage nodes, a local chain, 7 records, 3 grants ...")
        t0 = time.perf_counter()
        world = start_gateway_world(stack, work, stopwatch, follower)
        http = stack.enter_context(httpx.Client(base_url=world.base, timeout=30.0))
        token = siwe_login(http, world.provider)
        setup_s = time.perf_counter() - t0
        console.print(f"gateway: {n:,} capsule requests over one keep-alive connection ...")
        load = timed_run(world, token, n)
        console.print("gateway: revoking a grant mid-stream ...")
        revoked = revocation(world, http, token)
        allowed = WARM_UP + load["statuses"].get(200, 0) + revoked["statuses"].get(200, 0)
        console.print("gateway: flushing the access log to the chain ...")
        f0 = time.perf_counter()
        pending = world.log.pending()
        world.log.flush()
        flush_s = time.perf_counter() - f0
        world.gateway.indexer.sync()
        on_chain = len(world.gateway.indexer.accesses(accessor=world.provider.address, limit=10**7))
        return {
            "follower": follower,
            "setup_s": setup_s,
            "load": load,
            "revocation": revoked,
            "access_log": {
                "allowed_requests": allowed,
                "pending_after_run": pending,
                "flush_s": flush_s,
                "on_chain": on_chain,
                "all_on_chain": on_chain == allowed,
                "refusals_logged_locally": revoked["refusals_logged"],
            },
        }


# -- machine --------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        anvil = subprocess.run(
            [str(anvil_binary()), "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError, LedgerError):
        anvil = "unknown"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "anvil": anvil,
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "command": shlex.join([sys.executable, *sys.argv]),
    }


# -- output ----------------------------------------------------------------------------------------


def ok_mark(ok: bool | None) -> str:
    return "" if ok is None else ("[green]yes[/green]" if ok else "[red]NO[/red]")


def fmt(value: float | int | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_ledger_tables(results: dict[str, Any], title: str) -> None:
    t = Table(title=f"medmesh ledger: gas from Anvil receipts {title}")
    t.add_column("call")
    t.add_column("gas", justify="right")
    t.add_column("target", justify="right")
    t.add_column("ok", justify="center")
    for row in results["gas"]["rows"]:
        spec = ",.1f" if "per " in row["call"] else ",.0f"
        target = f"<= {row['target']:,}" if row["target"] is not None else ""
        t.add_row(row["call"], fmt(row["gas"], spec), target, ok_mark(row["ok"]))
    console.print(t)
    b = results["gas"]["batch"]
    console.print(
        f"batch check: root {b['root'][:18]}..., proof of {b['proof_length']} hashes "
        f"verified by Records.in_batch: {b['proof_verified_on_chain']}, "
        f"wrong leaf rejected: {b['wrong_leaf_rejected']}"
    )

    p, s = results["throughput"], results["sequential"]
    rate_target = TARGETS["grants_per_s"]
    t = Table(title=f"medmesh ledger: consent grants from one client {title}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_column("ok", justify="center")
    t.add_row(
        f"pipelined: {p['grants']:,} grants, {p['batch']} per JSON-RPC batch, gas limit "
        f"{p['gas_limit_per_tx']:,}",
        "",
        "",
        "",
    )
    t.add_row(
        "  submitted (encode + sign + send all)",
        f"{p['submitted_per_s']:,.0f} /s  ({p['submitted_s']:.2f} s)",
        "",
        "",
    )
    t.add_row(
        "    of which encode / sign / JSON-RPC",
        f"{p['encode_s']:.2f} / {p['sign_s']:.2f} / {p['send_rpc_s']:.2f} s",
        "",
        "",
    )
    t.add_row(
        "  confirmed (last receipt, all status 1)",
        f"{p['confirmed_per_s']:,.0f} /s  ({p['confirmed_s']:.2f} s)",
        f">= {rate_target}",
        ok_mark(p["confirmed_per_s"] >= rate_target),
    )
    t.add_row(
        "  durable (last block in the snapshot)",
        f"{p['durable_per_s']:,.0f} /s  ({p['durable_s']:.2f} s)",
        "",
        "",
    )
    t.add_row("  last receipt -> durable", f"{p['durable_wait_s']:.2f} s", "", "")
    t.add_row(
        "  blocks used / grants per block",
        f"{p['blocks']} / {', '.join(str(x) for x in p['grants_per_block'])}",
        "",
        "",
    )
    t.add_row("  gas per grant (mean)", f"{p['gas_per_grant']:,.0f}", "", "")
    t.add_row(
        f"  block gas ceiling ({p['block_gas_limit'] / 1e6:.0f}M gas, {BLOCK_TIME:g} s blocks)",
        f"{p['ceiling_per_block']} /block = {p['ceiling_per_s']:,.0f} /s",
        "",
        "",
    )
    t.add_row(
        "  base fee, first -> last block",
        f"{p['base_fee_gwei'][0]:.2f} -> {p['base_fee_gwei'][-1]:.2f} gwei",
        "",
        "",
    )
    d = p["during"]
    t.add_row(
        "  block interval / RPC latency, during",
        f"{fmt(d['interval_ms_mean'])} ms (max {fmt(d['interval_ms_max'])}) / "
        f"max {fmt(d['rpc_ms_max'])} ms",
        "",
        "",
    )
    t.add_row(
        "  Anvil CPU, whole run",
        f"{p['anvil_cpu_s']:.2f} s ({p['anvil_cpu_s'] / p['grants'] * 1e3:.2f} ms/grant)",
        "",
        "",
    )
    t.add_row(
        f"one at a time: {s['grants']} grants, send + wait each",
        f"{s['confirmed_per_s']:.2f} /s  ({s['seconds']:.1f} s)",
        "",
        "",
    )
    t.add_row(
        "  latency per grant, median / max",
        f"{s['latency_s_median']:.2f} / {s['latency_s_max']:.2f} s",
        "",
        "",
    )
    t.add_row(
        "  pipelined / one at a time",
        f"{p['confirmed_per_s'] / s['confirmed_per_s']:,.0f}x",
        "",
        "",
    )
    console.print(t)

    growth = results["growth"] + ([results["slots"]] if results.get("slots") else [])
    t = Table(title=f"medmesh ledger: what an idle block costs as the chain grows {title}")
    t.add_column("measure (idle chain)", no_wrap=True)
    for g in growth:
        t.add_column(g["label"], justify="right", no_wrap=True)

    def cpu(g: dict[str, Any], who: str) -> str:
        per_block = fmt(g[f"{who}_cpu_ms_per_block"])
        return f"{per_block} ms ({g[f'{who}_cpu_share'] * 100:.0f} %)"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("grants sent so far", lambda g: f"{g['grants_total']:,}"),
        ("transactions in the dump", lambda g: f"{g['transactions']:,}"),
        ("storage slots in the dump", lambda g: f"{g['storage_slots']:,}"),
        ("state.json size", lambda g: f"{g['state_json_bytes'] / 1e6:.1f} MB"),
        ("  accounts + storage", lambda g: f"{g['accounts_share'] * 100:.0f} %"),
        ("Anvil CPU /block (% core)", lambda g: cpu(g, "anvil")),
        ("supervisor CPU /block (% core)", lambda g: cpu(g, "supervisor")),
        (
            "block interval mean / max",
            lambda g: f"{fmt(g['interval_ms_mean'])} / {fmt(g['interval_ms_max'])} ms",
        ),
        ("RPC latency max", lambda g: f"{fmt(g['rpc_ms_max'])} ms"),
        ("durable lag", lambda g: f"{g['durable_lag_blocks']} blocks"),
        ("Anvil RSS", lambda g: f"{g['anvil_rss_mb']:.0f} MB"),
        ("grants/s confirmed (run before)", lambda g: fmt(g.get("confirmed_per_s"))),
        ("grants/s durable (run before)", lambda g: fmt(g.get("durable_per_s"))),
        (
            "last receipt -> durable",
            lambda g: fmt(g.get("durable_wait_s"), ".1f") + (" s" if "durable_wait_s" in g else ""),
        ),
    ]
    for name, cell in rows:
        t.add_row(name, *(cell(g) for g in growth))
    wide = Console(width=None if sys.stdout.isatty() else max(132, 40 + 19 * len(growth)))
    wide.print(t)
    if results.get("grow_error"):
        console.print(f"[red]growth stopped:[/red] {results['grow_error']}")


def print_gateway_table(g: dict[str, Any], title: str) -> None:
    load, rev, log = g["load"], g["revocation"], g["access_log"]
    lat = load["latency"]
    t = Table(
        title=f"medmesh ledger: consent gateway, capsule requests, index follower in a "
        f"{g['follower']} {title}"
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_column("ok", justify="center")
    t.add_row(
        f"{load['requests']:,} GET /v1/records/{{id}}/capsule over one keep-alive connection, "
        f"{load['records']} records ({load['records'] - 1} with a capsule block)",
        "",
        "",
        "",
    )
    t.add_row(
        "  answers (status: count) / capsule as expected",
        f"{', '.join(f'{k}: {v:,}' for k, v in sorted(load['statuses'].items()))} / "
        f"{load['capsule_as_expected']:,}",
        "",
        ok_mark(load["capsule_as_expected"] == load["requests"]),
    )
    t.add_row(
        "  latency p50",
        f"{lat['p50_ms']:.2f} ms",
        f"<= {GATEWAY_TARGETS['p50_ms']:g} ms",
        ok_mark(lat["p50_ms"] <= GATEWAY_TARGETS["p50_ms"]),
    )
    t.add_row("  latency p95", f"{lat['p95_ms']:.2f} ms", "", "")
    t.add_row(
        "  latency p99",
        f"{lat['p99_ms']:.2f} ms",
        f"<= {GATEWAY_TARGETS['p99_ms']:g} ms",
        ok_mark(lat["p99_ms"] <= GATEWAY_TARGETS["p99_ms"]),
    )
    t.add_row("  latency max / mean", f"{lat['max_ms']:.1f} / {lat['mean_ms']:.2f} ms", "", "")
    t.add_row("  requests/s (one client, sequential)", f"{load['requests_per_s']:,.0f}", "", "")
    t.add_row(
        "  CPU: gateway process / Anvil / client, per request",
        " / ".join(
            f"{load[k] / load['requests'] * 1e3:.2f}"
            for k in ("gateway_cpu_s", "anvil_cpu_s", "cpu_s")
        )
        + " ms",
        "",
        "",
    )
    t.add_row("server side, per request: mean / p50 / p99", "", "", "")
    for name, s in load["server"].items():
        t.add_row(
            f"  {name}",
            f"{s['mean_ms']:.3f} / {s['p50_ms']:.3f} / {s['p99_ms']:.2f} ms",
            "",
            "",
        )
    t.add_row("revocation, the grant revoked mid-stream", "", "", "")
    t.add_row(
        "  revoke mined in block / first refusal, heads around it",
        f"{rev['revoke_block']} / {rev['first_refusal_head_before']}"
        f"-{rev['first_refusal_head_after']}",
        "",
        "",
    )
    t.add_row(
        "  blocks after the revoke's block until refused",
        f"{rev['first_refusal_blocks_after']}",
        "<= 1",
        ok_mark(
            rev["first_refusal_blocks_after"] is not None and rev["first_refusal_blocks_after"] <= 1
        ),
    )
    t.add_row(
        "  first refusal, after the block was seen",
        f"{fmt(rev['first_refusal_ms_after_seen'], '.1f')} ms",
        "",
        "",
    )
    t.add_row(
        "  allowed once the revoke's block was the head",
        f"{rev['allowed_after_revoke_block']}",
        "0",
        ok_mark(rev["allowed_after_revoke_block"] == 0),
    )
    t.add_row(
        "  refusals answered / logged locally",
        f"{rev['refused']} / {rev['refusals_logged']}",
        "",
        ok_mark(rev["refused"] == rev["refusals_logged"]),
    )
    t.add_row("access log on chain (AccessLogged, indexed)", "", "", "")
    t.add_row(
        "  allowed requests / on chain",
        f"{log['allowed_requests']:,} / {log['on_chain']:,}",
        "",
        ok_mark(log["all_on_chain"]),
    )
    t.add_row(
        "  written during the run / pending at its end",
        f"{load['log_sent_during']:,} / {log['pending_after_run']:,}",
        "",
        "",
    )
    t.add_row("  final flush (send + mined + durable)", f"{log['flush_s']:.2f} s", "", "")
    t.add_row("set-up (nodes, chain, 7 records, 3 grants)", f"{g['setup_s']:.1f} s", "", "")
    console.print(t)


def print_tables(results: dict[str, Any]) -> None:
    m = results["machine"]
    title = f"({m['host']}, {m['cores']} cores)"
    if "gas" in results:
        print_ledger_tables(results, title)
    if "gateway" in results:
        print_gateway_table(results["gateway"], title)
    console.print(
        f"{m['date']}  {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, "
        f"Python {m['python']}, {m['anvil']}, commit {m['commit']}, load average "
        f"{m['load_average_at_start'][0]:.1f} at start, {m['load_average_at_end'][0]:.1f} at end"
    )
    console.print(f"command: {m['command']}")


# -- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    with contextlib.ExitStack() as stack:
        console.print("starting the local chain and deploying ...")
        chain, url, watch = start_chain(stack, work / "chain")
        rpc = stack.enter_context(Rpc(url, timeout=60.0))
        names = ("governance", "patient", "provider", "gateway", "client")
        wallets = {n: Wallet.create() for n in names}
        fund(rpc, *(w.address for w in wallets.values()))
        book = deploy(TxSender(rpc, wallets["governance"]))
        ledgers = {
            n: stack.enter_context(Ledger(url, book, signer=wallets[n], timeout=60.0))
            for n in names[:4]
        }

        growth: list[dict[str, Any]] = []
        results["growth"] = growth
        growth.append(probe(chain, watch, rpc, "fresh", args.probe) | {"grants_total": 0})

        console.print("gas table ...")
        results["gas"] = bench_gas(ledgers, wallets)

        console.print(f"{args.grants:,} grants, pipelined ...")
        signer = TimedSigner(wallets["client"])
        sender = TxSender(stack.enter_context(Rpc(url, timeout=60.0)), signer)
        consent = ledgers["patient"].consent

        def grants(n: int, window: int) -> dict[str, Any]:
            return pipelined(
                sender, signer, consent, chain, watch, n, batch=args.batch, gas=args.gas,
                window=window,
            )  # fmt: skip

        def after(label: str, total: int, run: dict[str, Any]) -> dict[str, Any]:
            row = probe(chain, watch, rpc, label, args.probe)
            growth.append(
                row
                | {
                    "grants_total": total,
                    "confirmed_per_s": run["confirmed_per_s"],
                    "durable_per_s": run["durable_per_s"],
                    "durable_wait_s": run["durable_wait_s"],
                }
            )
            return row

        results["throughput"] = tp = grants(args.grants, args.window)
        total = args.grants
        after(f"{args.grants:,} grants", total, tp)

        console.print(f"{args.sequential} grants, one at a time ...")
        results["sequential"] = one_at_a_time(sender, consent, args.sequential, args.gas)
        total += args.sequential

        grown = 0
        while grown < args.grow:
            n = min(max(1, args.grow_step), args.grow - grown)
            console.print(f"growing: {n:,} more grants (total {total + n:,}) ...")
            try:
                r = grants(n, GROW_WINDOW)
            except (LedgerError, AssertionError) as exc:
                results["grow_error"] = f"after {total:,} grants: {type(exc).__name__}: {exc}"
                break
            grown += n
            total += n
            row = after(f"{total:,} grants", total, r)
            console.print(
                f"  {r['confirmed_per_s']:,.0f} grants/s, state.json "
                f"{row['state_json_bytes'] / 1e6:.0f} MB, Anvil "
                f"{fmt(row['anvil_cpu_ms_per_block'])} ms CPU per idle block, durable lag "
                f"{row['durable_lag_blocks']} blocks"
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grants", type=int, default=3000, help="grants in the throughput run")
    p.add_argument("--batch", type=int, default=250, help="signed transactions per JSON-RPC batch")
    p.add_argument("--gas", type=int, default=80_000, help="fixed gas limit per grant")
    p.add_argument(
        "--window", type=int, default=0, help="max grants in flight (0: send all, then wait)"
    )
    p.add_argument("--sequential", type=int, default=30, help="grants sent one at a time")
    p.add_argument("--probe", type=float, default=5.0, help="seconds of idle chain per probe")
    p.add_argument("--grow", type=int, default=0, help="push this many more grants (growth)")
    p.add_argument(
        "--slots",
        type=int,
        default=50_000,
        help="also probe a fresh chain holding this many slots and no transactions (0: skip)",
    )
    p.add_argument("--grow-step", type=int, default=10_000, help="grants between growth probes")
    p.add_argument(
        "--gateway",
        type=int,
        default=10_000,
        help="capsule requests through the consent gateway (0: skip the gateway section)",
    )
    p.add_argument("--gateway-only", action="store_true", help="run only the gateway section")
    p.add_argument(
        "--gateway-follower",
        choices=("thread", "process"),
        default="thread",
        help="where the gateway's index follows the chain: a thread of the gateway process "
        "(as `medmesh gateway run`) or a process of its own",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="write results here")
    args = p.parse_args()
    if args.grants < 1 or args.sequential < 1 or args.batch < 1:
        p.error("--grants, --sequential and --batch must be at least 1")
    if args.gateway_only and args.gateway < 1:
        p.error("--gateway-only needs --gateway of at least 1")

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # run the finally blocks: stop the chain

    signal.signal(signal.SIGTERM, _terminate)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "args": vars(args) | {"json": str(args.json)},
    }
    try:
        with tempfile.TemporaryDirectory(
            prefix="medmesh-bench-ledger-", dir=os.environ.get("MEDMESH_BENCH_DIR")
        ) as tmp:
            if not args.gateway_only:
                run(args, Path(tmp), results)
                if args.slots:
                    console.print(f"a fresh chain with {args.slots:,} slots and no history ...")
                    results["slots"] = bench_slots(Path(tmp), args.slots, args.probe)
            if args.gateway:
                results["gateway"] = bench_gateway(Path(tmp), args.gateway, args.gateway_follower)
    except KeyboardInterrupt:
        console.print("interrupted; the local chain is stopped")
        sys.exit(130)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_tables(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
