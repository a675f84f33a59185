"""A synthetic population on the local network: hospitals, research labs and patients with
their own wallets, typical consents, and clinically coherent records (carebundle, seeded).

``medmesh synth --patients N --hospitals H`` builds it on the home's embedded chain and
storage nodes, as those participants would themselves:

1. every participant gets a wallet and a home of its own under ``<home>/synth/<name>``
   (wallet, config pointing at the same chain and nodes, the contracts' address book), so
   ``medmesh --home <home>/synth/hospital-1 gateway run --fhir`` serves that hospital. Their
   keystores are demo keystores: the passphrase is kept beside them in
   ``<home>/synth/population.json`` (mode 0600), which is what a local demo needs and what
   no real deployment should do;
2. the local chain funds them; each registers its encryption key; the home's wallet (the
   deployer, which governs the local Registry) admits hospitals as PROVIDER and GATEWAY and
   labs as RESEARCHER;
3. each patient grants its primary hospital treatment and contribute on all records; every
   third patient also lets a second hospital read its Observations for 90 days, and every
   second one lets the lab use its Observations for research for a year;
4. each hospital writes its patients' records through its own FHIR repository (validated,
   sealed for the patient and the grantees, stored, anchored) from a bulk-data NDJSON export
   it keeps in ``<home>/synth/<hospital>/export/``: the same path as ``medmesh fhir import``,
   so the import is resumable and the hospital's FHIR index is warm when its gateway starts.

Run it again and it goes on where it stopped: participants are kept, chain steps are skipped
when already done, and the imports resume.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from medmesh.config import Home
from medmesh.errors import ConfigError, InvalidInputError, RpcUnavailableError
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Role, Scope

__all__ = ["Participant", "Population", "synthesize"]

FUNDS: Final = 1_000 * 10**18
YEAR: Final = 365 * 86400
KEYSTORE_SCRYPT_N: Final = 2**14  # demo keystores: their passphrase sits beside them anyway
# what carebundle writes that medmesh stores (Practitioners are not patients' records)
_SKIPPED_TYPES: Final = ("Practitioner", "Organization", "PractitionerRole", "Location")

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class Participant:
    name: str
    role: str  # hospital | lab | patient
    address: str
    home: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "address": self.address, "home": self.home}


@dataclass
class Population:
    participants: list[Participant]
    passphrase: str
    seed: int
    grants: int = 0
    records: int = 0
    failed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def of(self, role: str) -> list[Participant]:
        return [p for p in self.participants if p.role == role]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "participants": [p.to_json() for p in self.participants],
            "grants": self.grants, "records": self.records, "failed": self.failed,
            "by_type": self.by_type,
        }  # fmt: skip


def _population_file(home: Home) -> Path:
    return home.path / "synth" / "population.json"


def _load_or_create(home: Home, patients: int, hospitals: int, labs: int, seed: int) -> Population:
    path = _population_file(home)
    if path.exists():
        saved = json.loads(path.read_text())
        counts = {r: sum(p["role"] == r for p in saved["participants"]) for r in ("patient", "hospital", "lab")}  # fmt: skip
        if (
            counts != {"patient": patients, "hospital": hospitals, "lab": labs}
            or saved["seed"] != seed
        ):
            raise InvalidInputError(
                f"{home.path / 'synth'} already holds another population ({counts['patient']} "
                f"patients, {counts['hospital']} hospitals, {counts['lab']} labs, seed "
                f"{saved['seed']}): run with the same numbers to finish it, or use another home"
            )  # fmt: skip
        return Population(
            [Participant(**p) for p in saved["participants"]], saved["passphrase"], seed
        )
    passphrase = secrets.token_urlsafe(18)
    names = [(f"hospital-{i + 1}", "hospital") for i in range(hospitals)]
    names += [(f"lab-{i + 1}", "lab") for i in range(labs)]
    names += [(f"patient-{i + 1:03d}", "patient") for i in range(patients)]
    participants = []
    for name, role in names:
        where = home.path / "synth" / name
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        wallet = Wallet.create()
        save_wallet(wallet, where / "wallet.json", passphrase, scrypt_n=KEYSTORE_SCRYPT_N)
        participants.append(Participant(name, role, wallet.address, str(where)))
    population = Population(participants, passphrase, seed)
    body = {"seed": seed, "passphrase": passphrase, "participants": [p.to_json() for p in participants]}  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return population


def _point_homes(home: Home, population: Population) -> None:
    """Each participant's home at this home's chain, contracts and storage nodes (again on
    every run: their ports may have changed)."""
    from medmesh.ledger.local import rpc_url_of

    nodes = home.node_urls()
    if not nodes:
        raise ConfigError("no storage nodes: start them with `medmesh devnet up` (or `make up`)")
    rpc_url, _ = rpc_url_of(home)
    config = home.load_config()
    for p in population.participants:
        where = Path(p.home)
        (where / "config.json").write_text(json.dumps({
            "nodes": list(nodes), "k": config.k, "n": config.n, "rpc_url": rpc_url,
            "chain_id": config.chain_id,
        }, indent=2) + "\n")  # fmt: skip
        shutil.copy(home.address_book, where / "addresses.json")


def synthesize(
    home: Home,
    governor: Wallet,
    *,
    patients: int,
    hospitals: int,
    labs: int = 1,
    seed: int = 0,
    chunk: int = 500,
    progress: Progress | None = None,
) -> Population:
    """Build (or finish building) the population on ``home``'s local network, with
    ``governor`` (the home's wallet, which deployed the contracts) admitting the institutions."""
    if patients < 1 or hospitals < 1 or labs < 0:
        raise InvalidInputError("give at least one patient and one hospital")
    from medmesh.ledger.local import open_ledger

    population = _load_or_create(home, patients, hospitals, labs, seed)
    _point_homes(home, population)
    report = progress or (lambda step, done, total: None)
    gov = open_ledger(home, governor)
    try:
        wallets = {p.name: load_wallet(Path(p.home) / "wallet.json", population.passphrase)
                   for p in population.participants}  # fmt: skip
        _enrol(gov, population, wallets, report)
        population.grants = _consents(home, population, wallets, report)
        _records(home, population, wallets, seed=seed, chunk=chunk, progress=report)
    finally:
        gov.close()
    return population


def _enrol(
    gov: Ledger, population: Population, wallets: dict[str, Wallet], report: Progress
) -> None:
    """Fund, register and admit everyone who is not yet."""
    from medmesh.ledger.local import open_ledger

    try:
        for p in population.participants:
            balance = int(gov.rpc.call("eth_getBalance", p.address, "latest"), 16)
            if balance < FUNDS // 2:
                gov.rpc.call("anvil_setBalance", p.address, hex(FUNDS))
    except RpcUnavailableError:
        raise
    except Exception as exc:  # not Anvil: funds come from the operator, not from synth
        raise ConfigError(
            "medmesh synth funds its participants on the embedded local chain "
            f"(anvil_setBalance); this chain refused ({type(exc).__name__})"
        ) from exc
    todo = [p for p in population.participants
            if gov.registry.encryption_key(p.address) != wallets[p.name].encryption_public_key.to_bytes()]  # fmt: skip

    def register(p: Participant) -> None:
        own = open_ledger(Home(Path(p.home)), wallets[p.name])
        try:
            own.registry.register(wallets[p.name].encryption_public_key.to_bytes(), "")
        finally:
            own.close()

    with ThreadPoolExecutor(8) as pool:  # each is its own sender: in parallel
        for i, _ in enumerate(pool.map(register, todo), start=1):
            report("registering", i, len(todo))
    wanted = {"hospital": Role.PROVIDER | Role.GATEWAY, "lab": Role.RESEARCHER}
    for p in population.participants:
        role = wanted.get(p.role)
        if role is not None and gov.registry.roles(p.address) & role != role:
            gov.registry.admit(p.address, role)


def _grants_of(population: Population) -> dict[str, list[tuple[str, Scope, Purpose, int]]]:
    """patient name -> (grantee address, scope, purposes, seconds) of its typical consents."""
    hospitals, labs = population.of("hospital"), population.of("lab")
    out: dict[str, list[tuple[str, Scope, Purpose, int]]] = {}
    for i, p in enumerate(population.of("patient")):
        grants = [(hospitals[i % len(hospitals)].address, Scope.all(),
                   Purpose.TREATMENT | Purpose.CONTRIBUTE, 5 * YEAR)]  # fmt: skip
        if len(hospitals) > 1 and i % 3 == 0:
            grants.append((hospitals[(i + 1) % len(hospitals)].address,
                           Scope.kind("fhir:Observation"), Purpose.TREATMENT, 90 * 86400))  # fmt: skip
        if labs and i % 2 == 0:
            grants.append((labs[i % len(labs)].address, Scope.kind("fhir:Observation"),
                           Purpose.RESEARCH, YEAR))  # fmt: skip
        out[p.name] = grants
    return out


def _consents(
    home: Home, population: Population, wallets: dict[str, Wallet], report: Progress
) -> int:
    """Each patient's typical grants (before any record exists: none needs a capsule block;
    records written later are sealed for their grantees)."""
    from medmesh.ledger.local import open_indexer, open_ledger

    plan = _grants_of(population)
    total = sum(len(g) for g in plan.values())
    done = 0

    def grant(p: Participant) -> int:
        ledger = open_ledger(Home(Path(p.home)), wallets[p.name])
        try:
            indexer = open_indexer(Home(Path(p.home)), ledger)
            indexer.sync()
            have = {
                (g.grantee, g.scope)
                for g in indexer.grants(patient=p.address, active_at=time.time())
            }
            calls = [ledger.consent.grant_call(grantee, scope, purposes, int(time.time()) + secs, bytes(32))
                     for grantee, scope, purposes, secs in plan[p.name]
                     if (grantee, scope.word) not in have]  # fmt: skip
            ledger.transact_many(calls)
            return len(plan[p.name])
        finally:
            ledger.close()

    with ThreadPoolExecutor(8) as pool:
        for n in pool.map(grant, population.of("patient")):
            done += n
            report("granting", done, total)
    return total


def _records(
    home: Home,
    population: Population,
    wallets: dict[str, Wallet],
    *,
    seed: int,
    chunk: int,
    progress: Progress,
) -> None:
    """Each hospital imports its patients' records from an NDJSON export of its own."""
    import carebundle

    from medmesh.interop.fhir.importer import Importer

    patients, hospitals = population.of("patient"), population.of("hospital")
    cohort = carebundle.generate_cohort(count=len(patients), seed=seed)
    chain_id = home.load_config().chain_id
    for h_index, hospital in enumerate(hospitals):
        mine = [i for i in range(len(patients)) if i % len(hospitals) == h_index]
        export = Path(hospital.home) / "export"
        export.mkdir(exist_ok=True)
        texts: dict[str, list[str]] = {}
        accounts: dict[str, str] = {}
        for i in mine:
            for type_, text in carebundle.to_ndjson(cohort[i]).items():
                if type_ in _SKIPPED_TYPES:
                    continue
                texts.setdefault(type_, []).append(text.rstrip("\n"))
                if type_ == "Patient":
                    accounts[json.loads(text.splitlines()[0])["id"]] = patients[i].address
        paths = []
        for type_, parts in sorted(texts.items()):
            path = export / f"{type_}.ndjson"
            body = "\n".join(parts) + "\n"
            if not path.exists() or path.read_text() != body:
                path.write_text(body)
            paths.append(path)
        if not paths:
            continue
        send, close = _in_process_gateway(Home(Path(hospital.home)), wallets[hospital.name])
        try:
            importer = Importer(paths, send, state_dir=Path(hospital.home) / "imports",
                                chunk=chunk, accounts=accounts, chain_id=chain_id)  # fmt: skip
            total = importer.count()
            step = f"records of {hospital.name}"
            done = 0

            def advance(n: int, total: int = total, step: str = step) -> None:
                nonlocal done
                done += n
                progress(step, done, total)

            summary = importer.run(advance)
        finally:
            close()
        population.records += summary.imported
        population.failed += summary.failed
        for t, n in summary.by_type.items():
            population.by_type[t] = population.by_type.get(t, 0) + n


def _in_process_gateway(
    home: Home, wallet: Wallet
) -> tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[], None]]:
    """A hospital's FHIR repository, in this process, as a batch-Bundle sender (the
    hospital's own writes: its index is the one its gateway will serve from)."""
    from medmesh.consent.access_log import AccessLog
    from medmesh.consent.gateway import Gateway
    from medmesh.consent.sharing import RecordKeeper
    from medmesh.interop.fhir.bundles import process_bundle
    from medmesh.interop.fhir.index import FhirIndex
    from medmesh.interop.fhir.repository import FhirRepository
    from medmesh.ledger.local import open_indexer, open_ledger
    from medmesh.storage.backends import open_store
    from medmesh.storage.client import Client
    from medmesh.storage.uploader import StoreParams

    cfg = home.load_config()
    ledger = open_ledger(home, wallet)
    indexer = open_indexer(home, ledger)
    params = StoreParams(k=cfg.k, n=cfg.n)
    store = open_store(cfg.backend, nodes=home.node_urls(), signer=wallet, params=params)
    keeper = RecordKeeper(wallet, ledger, indexer, Client(store, wallet))
    log = AccessLog(ledger, f"sqlite:///{home.path / 'gateway.db'}")
    gateway = Gateway(ledger, indexer, None, log, domain="127.0.0.1", uri="http://127.0.0.1")
    index = FhirIndex(home.path / "fhir.db", wallet.encryption_keys[0].secret_bytes())
    repo = FhirRepository(keeper, gateway, index)

    class Institution:
        def require(self, type_: str, action: str) -> None:
            return None  # the hospital itself

    def send(bundle: dict[str, Any]) -> dict[str, Any]:
        return asyncio.run(process_bundle(repo, bundle, caller=Institution(),
                                          purpose=Purpose.TREATMENT, base_url="urn:medmesh:fhir"))  # fmt: skip

    def close() -> None:
        index.close()
        ledger.close()

    return send, close
