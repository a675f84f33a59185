"""The FHIR R4 API end to end: a real Anvil, real storage nodes, the gateway on uvicorn.

A hospital runs a FHIR gateway acting for its own wallet. A patient grants it treatment and
contribute consent; its backend service gets a SMART token with a JWT signed by the
hospital's key and creates, reads, updates, versions and searches resources; bad input is
refused with an OperationOutcome and stores nothing; a revocation between a search and a
read refuses the read.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from medmesh.consent.access_log import AccessLog
from medmesh.consent.gateway import Gateway
from medmesh.consent.sharing import RecordKeeper
from medmesh.daemons import free_port
from medmesh.identity import Wallet
from medmesh.interop.fhir.repository import ACCOUNT_SYSTEM
from medmesh.interop.fhir.server import FhirService, create_fhir_app
from medmesh.interop.smart import client_assertion
from medmesh.ledger.chains import LocalChain
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Role, Scope
from medmesh.ledger.deploy import ensure_deployed
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import TxSender
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.client import Client
from medmesh.storage.uploader import StoreParams
from tests.harness import LocalCluster

FHIR_JSON = "application/fhir+json"
FOREVER = 2**63


@dataclass
class World:
    root: Path
    rpc_url: str
    book: object
    chain: LocalChain
    cluster: LocalCluster
    hospital: Wallet
    patient: Wallet
    other: Wallet
    spare: Wallet  # trusted by the nodes, otherwise unused until a test enrols it
    url: str  # .../fhir
    service: FhirService

    def keeper(self, wallet: Wallet) -> RecordKeeper:
        ledger = Ledger(self.rpc_url, self.book, signer=wallet, durable=self.chain.wait_durable)  # type: ignore[arg-type]
        store = NetworkStore(self.cluster.urls, signer=wallet, params=StoreParams(k=2, n=3))
        return RecordKeeper(
            wallet,
            ledger,
            Indexer(ledger, f"sqlite:///{self.root}/{wallet.address}.db"),
            Client(store, wallet),
        )

    def token(self, scope: str = "system/*.cruds") -> str:
        assertion = client_assertion(self.hospital, f"{self.url}/auth/token")
        r = requests.post(
            f"{self.url}/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
                "scope": scope,
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fhir")
    # each part is stopped even when a later one fails to start (no stray chain or node)
    with contextlib.ExitStack() as running:
        chain = LocalChain(root / "chain")
        st = chain.up(port=0)
        running.callback(chain.down)
        assert st.rpc_url
        yield from _world(root, chain, st.rpc_url, running)


def _world(
    root: Path, chain: LocalChain, rpc_url: str, running: contextlib.ExitStack[bool | None]
) -> Iterator[World]:
    gov, hospital, patient, other, spare = (Wallet.create() for _ in range(5))
    with Rpc(rpc_url) as rpc:
        for w in (gov, hospital, patient, other, spare):
            rpc.call("anvil_setBalance", w.address, hex(10**21))
        book, _ = ensure_deployed(TxSender(rpc, gov), root / "addresses.json")
    cluster = LocalCluster(
        root / "nodes", 3, trusted=[w.address for w in (gov, hospital, patient, other, spare)]
    )
    running.callback(cluster.close)
    g = Ledger(rpc_url, book, signer=gov, durable=chain.wait_durable)
    for w in (hospital, patient, other):
        Ledger(rpc_url, book, signer=w).registry.register(w.encryption_public_key.to_bytes(), "")
    g.registry.admit(hospital.address, Role.PROVIDER | Role.GATEWAY)
    h = Ledger(rpc_url, book, signer=hospital, durable=chain.wait_durable)
    indexer = Indexer(h, f"sqlite:///{root}/hospital-index.db")
    log = AccessLog(h, f"sqlite:///{root}/hospital-gateway.db", interval=0.5)
    port = free_port(socket.SOCK_STREAM)
    store = NetworkStore(cluster.urls, signer=hospital, params=StoreParams(k=2, n=3))
    gateway = Gateway(
        h, indexer, store, log, domain=f"127.0.0.1:{port}", uri=f"http://127.0.0.1:{port}"
    )
    keeper = RecordKeeper(
        hospital, h, indexer,
        Client(NetworkStore(cluster.urls, signer=hospital, params=StoreParams(k=2, n=3)), hospital),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/fhir"
    service = FhirService(gateway, keeper, root / "fhir.db", base_url=url, sync_interval=0.2)
    log.start()
    running.callback(log.stop, flush=False)
    server = uvicorn.Server(
        uvicorn.Config(create_fhir_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def stop_server() -> None:
        server.should_exit = True
        thread.join(10)

    running.callback(stop_server)
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    w = World(root, rpc_url, book, chain, cluster, hospital, patient, other, spare, url, service)
    # the patient lets the hospital treat and write records for them
    w.keeper(patient).grant(
        hospital.address, Scope.all(), Purpose.TREATMENT | Purpose.CONTRIBUTE, FOREVER
    )
    yield w


def _h(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, **extra}


def _patient(world: World, wallet: Wallet, family: str = "Example") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": ACCOUNT_SYSTEM, "value": wallet.did(int(world.service.repo.ledger.chain_id))}
        ],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1984-03-07",
    }


def _glucose(patient_id: str, value: float, when: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


@pytest.fixture(scope="module")
def token(world: World) -> str:
    return world.token()


@pytest.fixture(scope="module")
def patient_id(world: World, token: str) -> str:
    r = requests.post(
        f"{world.url}/Patient", json=_patient(world, world.patient), headers=_h(token), timeout=30
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_metadata_lists_what_is_supported(world: World) -> None:
    r = requests.get(f"{world.url}/metadata", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    types = {res["type"] for res in cs["rest"][0]["resource"]}
    assert "Observation" in types and "Practitioner" not in types
    ext = cs["rest"][0]["security"]["extension"][0]
    token_url = next(e["valueUri"] for e in ext["extension"] if e["url"] == "token")
    assert token_url == f"{world.url}/auth/token"


def test_create_read_update_history_vread(world: World, token: str, patient_id: str) -> None:
    r = requests.post(f"{world.url}/Observation", json=_glucose(patient_id, 98, "2026-03-01T08:00:00Z"),
                      headers=_h(token), timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    obs = r.json()
    assert obs["meta"]["versionId"] == "1" and r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/Observation/{obs['id']}/_history/1")

    read = requests.get(f"{world.url}/Observation/{obs['id']}", headers=_h(token), timeout=10)
    assert read.status_code == 200, read.text
    assert read.json()["valueQuantity"]["value"] == 98
    assert read.json()["subject"] == {"reference": f"Patient/{patient_id}"}

    changed = {**read.json(), "valueQuantity": {**read.json()["valueQuantity"], "value": 101}}
    stale = requests.put(f"{world.url}/Observation/{obs['id']}", json=changed,
                         headers=_h(token, **{"If-Match": 'W/"7"'}), timeout=30)  # fmt: skip
    assert stale.status_code == 412, stale.text
    assert stale.json()["resourceType"] == "OperationOutcome"
    up = requests.put(f"{world.url}/Observation/{obs['id']}", json=changed,
                      headers=_h(token, **{"If-Match": 'W/"1"'}), timeout=30)  # fmt: skip
    assert up.status_code == 200, up.text
    assert up.json()["meta"]["versionId"] == "2"

    hist = requests.get(
        f"{world.url}/Observation/{obs['id']}/_history", headers=_h(token), timeout=10
    ).json()
    assert hist["type"] == "history"
    assert [e["resource"]["valueQuantity"]["value"] for e in hist["entry"]] == [101, 98]
    v1 = requests.get(
        f"{world.url}/Observation/{obs['id']}/_history/1", headers=_h(token), timeout=10
    )
    assert v1.status_code == 200 and v1.json()["valueQuantity"]["value"] == 98
    assert (
        requests.get(f"{world.url}/Observation/{obs['id']}", headers=_h(token), timeout=10).json()[
            "valueQuantity"
        ]["value"]
        == 101
    )


def test_concurrent_updates_of_one_resource_each_get_their_own_version(
    world: World, token: str, patient_id: str
) -> None:
    """Updates of one resource arriving together are written one after the other: each
    plans its version against the one before (no two versions 2), and of two conditional
    updates naming the same version exactly one wins."""
    r = requests.post(f"{world.url}/Observation", json=_glucose(patient_id, 90, "2026-03-02T08:00:00Z"),
                      headers=_h(token), timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    first = r.json()
    url = f"{world.url}/Observation/{first['id']}"

    def put(value: float, if_match: str | None = None) -> requests.Response:
        body = {**first, "valueQuantity": {**first["valueQuantity"], "value": value}}
        extra = {"If-Match": if_match} if if_match else {}
        return requests.put(url, json=body, headers=_h(token, **extra), timeout=60)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(put, [91, 92, 93]))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert sorted(a.json()["meta"]["versionId"] for a in answers) == ["2", "3", "4"]
    hist = requests.get(f"{url}/_history", headers=_h(token), timeout=10).json()
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["4", "3", "2", "1"]
    last = next(a for a in answers if a.json()["meta"]["versionId"] == "4")
    now = requests.get(url, headers=_h(token), timeout=10).json()
    assert now["valueQuantity"]["value"] == last.json()["valueQuantity"]["value"]

    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda v: put(v, 'W/"4"'), [94, 95]))
    assert sorted(a.status_code for a in both) == [200, 412], [a.text for a in both]
    won = next(a for a in both if a.status_code == 200)
    assert won.json()["meta"]["versionId"] == "5"


def test_search_patient_code_date_and_paging(world: World, token: str, patient_id: str) -> None:
    for day, value in (("05", 90), ("06", 95), ("07", 99)):
        r = requests.post(f"{world.url}/Observation", json=_glucose(patient_id, value, f"2025-06-{day}T09:00:00Z"),
                          headers=_h(token), timeout=30)  # fmt: skip
        assert r.status_code == 201, r.text
    q = [
        ("patient", patient_id),
        ("code", "http://loinc.org|2339-0"),
        ("date", "ge2025-06-06"),
        ("date", "lt2025-07"),
    ]
    r = requests.get(f"{world.url}/Observation", params=q, headers=_h(token), timeout=10)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    assert sorted(e["resource"]["valueQuantity"]["value"] for e in bundle["entry"]) == [95, 99]
    # month precision, bare code, and paging
    r = requests.get(f"{world.url}/Observation", params={"subject": f"Patient/{patient_id}", "code": "2339-0",
                     "date": "2025-06", "_count": "2"}, headers=_h(token), timeout=10)  # fmt: skip
    page = r.json()
    assert page["total"] == 3 and len(page["entry"]) == 2
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = requests.get(nxt, headers=_h(token), timeout=10).json()
    assert len(rest["entry"]) == 1
    # nothing before June 2025 for this code
    none = requests.get(
        f"{world.url}/Observation",
        params=[*q[:2], ("date", "lt2025-06")],
        headers=_h(token),
        timeout=10,
    )
    assert none.json()["total"] == 0


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda o: o.update(status="bogus"), 422, None),
        (lambda o: o.update(subject={"reference": "Patient/does-not-exist"}), 422, "not-found"),
        (lambda o: o.update(resourceType="Condition"), 400, None),
        (lambda o: o.pop("code"), 400, None),
    ],
    ids=["bad-status-code", "absent-patient", "wrong-resource-type", "missing-code"],
)
def test_invalid_resources_store_nothing(world: World, token: str, patient_id: str, mutate: Any, status: int,
                                         code: str | None) -> None:  # fmt: skip
    before = world.service.index.count()
    world.service.repo.keeper.indexer.sync()
    anchored = len(
        world.service.repo.keeper.indexer.records(world.patient.address, include_history=True)
    )
    body = _glucose(patient_id, 120, "2026-01-01")
    mutate(body)
    r = requests.post(f"{world.url}/Observation", json=body, headers=_h(token), timeout=30)
    assert r.status_code in (status, 400, 422), r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if code:
        assert outcome["issue"][0]["code"] == code
    assert world.service.index.count() == before
    world.service.repo.keeper.indexer.sync()
    assert (
        len(world.service.repo.keeper.indexer.records(world.patient.address, include_history=True))
        == anchored
    )


def test_malformed_and_unauthorized_requests(world: World, token: str, patient_id: str) -> None:
    r = requests.post(
        f"{world.url}/Observation", data=b'{"resourceType": "Observ', headers=_h(token), timeout=10
    )
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert (
        requests.get(f"{world.url}/Practitioner/x", headers=_h(token), timeout=10).status_code
        == 404
    )
    assert (
        requests.get(f"{world.url}/Observation/nope", headers=_h(token), timeout=10).status_code
        == 404
    )
    assert requests.get(f"{world.url}/Patient/{patient_id}", timeout=10).status_code == 401
    assert (
        requests.get(
            f"{world.url}/Patient/{patient_id}", headers=_h("forged"), timeout=10
        ).status_code
        == 401
    )
    bad = requests.get(
        f"{world.url}/Observation", params={"color": "red"}, headers=_h(token), timeout=10
    )
    assert bad.status_code == 400
    # a token whose scopes do not cover Observation
    narrow = world.token("system/Patient.read")
    r = requests.get(
        f"{world.url}/Observation", params={"patient": patient_id}, headers=_h(narrow), timeout=10
    )
    assert r.status_code == 403
    assert (
        requests.get(
            f"{world.url}/Patient/{patient_id}", headers=_h(narrow), timeout=10
        ).status_code
        == 200
    )


def test_revocation_between_search_and_read(world: World, token: str) -> None:
    """The other patient grants, the hospital writes and finds the record, the patient
    revokes: the read that follows the search is refused, and so is the next search."""
    other = world.keeper(world.other)
    other.grant(
        world.hospital.address, Scope.all(), Purpose.TREATMENT | Purpose.CONTRIBUTE, FOREVER
    )
    r = requests.post(
        f"{world.url}/Patient",
        json=_patient(world, world.other, "Other"),
        headers=_h(token),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = requests.post(
        f"{world.url}/Observation",
        json=_glucose(pid, 130, "2026-02-02"),
        headers=_h(token),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    found = requests.get(
        f"{world.url}/Observation", params={"patient": pid}, headers=_h(token), timeout=10
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [oid]

    other.revoke(world.hospital.address, Scope.all())
    logged = len(world.service.gateway.log.refusals())
    refused = requests.get(f"{world.url}/Observation/{oid}", headers=_h(token), timeout=10)
    assert refused.status_code == 403, refused.text
    assert refused.json()["issue"][0]["code"] == "forbidden"
    assert len(world.service.gateway.log.refusals()) == logged + 1
    # still refused once the index has dropped the resource (it remembers the id, not the body)
    deadline = time.monotonic() + 10
    while world.service.index.current("Observation", oid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (
        world.service.index.body(world.service.index.forgotten("Observation", oid).record) is None
    )  # type: ignore[union-attr]
    again_read = requests.get(f"{world.url}/Observation/{oid}", headers=_h(token), timeout=10)
    assert again_read.status_code == 403
    again = requests.get(
        f"{world.url}/Observation", params={"patient": pid}, headers=_h(token), timeout=10
    ).json()
    assert again.get("entry", []) == []
    # the index forgets the revoked patient's resources once it catches up
    deadline = time.monotonic() + 10
    while world.service.index.records_of(world.other.address) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert world.service.index.records_of(world.other.address) == []


def test_fhirclient_reads_searches_and_writes(world: World, patient_id: str) -> None:
    """The SMART on FHIR Python client (``fhirclient``, written elsewhere) against the API:
    it parses our CapabilityStatement with its own R4 models, gets a token through the
    endpoint it advertises, then writes, reads, updates and searches."""
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.server import FHIRServer

    server = FHIRServer(None, base_uri=world.url)
    server.get_capability()
    assert server.capabilityStatement.fhirVersion == "4.0.1"
    security = server.capabilityStatement.rest[0].security
    oauth = next(e for e in security.extension if e.url.endswith("oauth-uris"))
    token_url = next(e.valueUri for e in oauth.extension if e.url == "token")
    answer = server.post_as_form(
        token_url,
        {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(world.hospital, token_url),
            "scope": "system/Patient.rs system/Observation.cruds",
        },
    ).json()
    server.session.headers["Authorization"] = f"Bearer {answer['access_token']}"

    patient = Patient.read(patient_id, server)
    assert patient.gender == "female" and patient.birthDate.isostring == "1984-03-07"

    obs = Observation(_glucose(patient_id, 88, "2026-04-04T07:30:00Z"))
    created = obs.create(server)
    assert created is not None and created["meta"]["versionId"] == "1"
    read = Observation.read(created["id"], server)
    assert read.valueQuantity.value == 88 and read.subject.reference == f"Patient/{patient_id}"
    read.valueQuantity.value = 89
    updated = read.update(server)
    assert updated is not None and updated["meta"]["versionId"] == "2"

    search = Observation.where(
        struct={"patient": patient_id, "code": "http://loinc.org|2339-0", "date": "2026-04-04"}
    )
    found = list(search.perform_resources_iter(server))
    assert [(o.id, o.valueQuantity.value) for o in found] == [(created["id"], 89)]


def test_save_many_stores_the_good_and_reports_the_bad(world: World, token: str) -> None:
    """An import batch: resources refer to one another within the batch, a bad one is
    reported in its place and stores nothing, the rest is anchored together."""
    from medmesh.interop.fhir.outcome import FhirError

    third = Wallet.create()
    with Rpc(world.rpc_url) as rpc:
        rpc.call("anvil_setBalance", third.address, hex(10**21))
    Ledger(world.rpc_url, world.book, signer=third).registry.register(
        third.encryption_public_key.to_bytes(), ""
    )  # type: ignore[arg-type]
    world.keeper(third).grant(
        world.hospital.address, Scope.all(), Purpose.TREATMENT | Purpose.CONTRIBUTE, FOREVER
    )
    world.service.repo.keeper.indexer.sync()
    batch = [
        {**_patient(world, third, "Batch"), "id": "batch-patient"},
        {**_glucose("batch-patient", 70, "2024-01-01"), "id": "batch-obs-1"},
        {**_glucose("batch-patient", 71, "2024-01-02"), "id": "batch-obs-2"},
        {**_glucose("batch-patient", 72, "2024-01-03", status="guessed"), "id": "batch-bad"},
        {**_glucose("nobody", 73, "2024-01-04"), "id": "batch-orphan"},
    ]
    results = world.service.repo.save_many(batch)
    assert [type(r).__name__ for r in results] == [
        "Saved",
        "Saved",
        "Saved",
        "FhirError",
        "FhirError",
    ]
    bad, orphan = results[3], results[4]
    assert isinstance(bad, FhirError) and isinstance(orphan, FhirError)
    assert orphan.to_outcome()["issue"][0]["code"] == "not-found"
    anchored = {r.record for r in results if not isinstance(r, FhirError) for r in [r.row]}
    assert len(anchored) == 3
    assert world.service.index.current("Observation", "batch-bad") is None
    r = requests.get(
        f"{world.url}/Observation",
        params={"patient": "batch-patient"},
        headers=_h(token),
        timeout=10,
    )
    assert sorted(e["resource"]["valueQuantity"]["value"] for e in r.json()["entry"]) == [70, 71]
    read = requests.get(f"{world.url}/Observation/batch-obs-2", headers=_h(token), timeout=10)
    assert read.status_code == 200 and read.json()["effectiveDateTime"] == "2024-01-02"

    # conditional updates are checked as they are written: a stale ETag is a 412 in its
    # place in a batch, and refuses a whole transaction with 412
    newer = {**batch[1], "status": "amended"}
    repo = world.service.repo
    stale, fresh = repo.save_many(
        [newer, {**batch[2], "status": "amended"}],
        if_match={"Observation/batch-obs-1": 'W/"7"', "Observation/batch-obs-2": 'W/"1"'},
    )
    assert isinstance(stale, FhirError) and stale.status == 412
    assert not isinstance(fresh, FhirError) and fresh.row.version == 2
    with pytest.raises(FhirError) as refused:
        repo.save_all([newer, {**batch[2], "status": "corrected"}], paths=["a", "b"],
                      if_match={"Observation/batch-obs-2": 'W/"1"'})  # fmt: skip
    assert refused.value.status == 412
    assert refused.value.issues[0].expression == ["b"]
    assert world.service.index.current("Observation", "batch-obs-1").version == 1  # type: ignore[union-attr]


def test_a_grant_brings_the_patients_own_records_into_the_index(world: World, token: str) -> None:
    """A patient's records written before any grant (sealed for the patient alone) reach the
    hospital's index when the patient grants access: their keys come in the grant's capsule
    block, and reads open them with it."""
    import json as _json

    own = world.spare
    Ledger(world.rpc_url, world.book, signer=own).registry.register(
        own.encryption_public_key.to_bytes(), ""
    )  # type: ignore[arg-type]
    keeper = world.keeper(own)
    pat = {**_patient(world, own, "Own"), "id": "own-patient"}
    obs = {**_glucose("own-patient", 111, "2023-05-05"), "id": "own-obs"}
    for resource in (pat, obs):
        keeper.put(_json.dumps(resource).encode(), f"fhir:{resource['resourceType']}")
    assert world.service.index.current("Observation", "own-obs") is None
    keeper.grant(world.hospital.address, Scope.kind("fhir:Observation"), Purpose.TREATMENT, FOREVER)
    keeper.grant(world.hospital.address, Scope.kind("fhir:Patient"), Purpose.TREATMENT, FOREVER)
    deadline = time.monotonic() + 15
    while (
        world.service.index.current("Observation", "own-obs") is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    r = requests.get(f"{world.url}/Observation/own-obs", headers=_h(token), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["valueQuantity"]["value"] == 111 and r.json()["meta"]["versionId"] == "1"
    found = requests.get(
        f"{world.url}/Observation", params={"patient": "own-patient"}, headers=_h(token), timeout=10
    )
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["own-obs"]


def test_an_expired_grant_leaves_the_index_within_seconds(world: World, token: str) -> None:
    """An expiry emits no event: the index follows grants whose time ran out at each sync,
    not only at the (rare) full sweep, which is pushed out of reach here."""
    # Prepare: a patient who lets the hospital treat and write for ~8 s
    brief = Wallet.create()
    with Rpc(world.rpc_url) as rpc:
        rpc.call("anvil_setBalance", brief.address, hex(10**21))
        now = int(rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    ledger = Ledger(world.rpc_url, world.book, signer=brief)  # type: ignore[arg-type]
    ledger.registry.register(brief.encryption_public_key.to_bytes(), "")
    expiry = max(now, int(time.time())) + 8
    ledger.consent.grant(
        world.hospital.address, Scope.all(), Purpose.TREATMENT | Purpose.CONTRIBUTE, expiry
    )
    repo = world.service.repo
    sweep = repo.full_reconcile_s
    repo.full_reconcile_s = 3600.0
    try:
        r = requests.post(
            f"{world.url}/Patient", json=_patient(world, brief, "Brief"), headers=_h(token),
            timeout=30,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        assert world.service.index.records_of(brief.address) != []

        # Execute: the grant's time runs out, on the chain too (its blocks carry the time)
        with Rpc(world.rpc_url) as rpc:
            while (
                time.time() < expiry + 0.5
                or int(rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16) <= expiry
            ):
                time.sleep(0.2)

        # Assert: the index lets go of the patient within a few syncs
        deadline = time.monotonic() + 5
        while world.service.index.records_of(brief.address) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert world.service.index.records_of(brief.address) == []
        read = requests.get(f"{world.url}/Patient/{r.json()['id']}", headers=_h(token), timeout=10)
        assert read.status_code == 403
    finally:
        repo.full_reconcile_s = sweep


def test_records_a_granting_patient_anchors_reach_the_index_without_a_sweep(
    world: World, token: str, patient_id: str
) -> None:
    """A patient who already grants the hospital writes a resource and a new version of it
    themselves: each sync indexes what was anchored since the last (versions numbered from
    the index), without re-reading all the patient's records or a full sweep."""
    import json as _json

    repo = world.service.repo
    sweep = repo.full_reconcile_s
    repo.full_reconcile_s, repo._last_full = 3600.0, time.time()
    whole: list[str] = []
    reconcile = repo._reconcile

    async def spy(patient: str, now: float) -> int:
        whole.append(patient)
        return await reconcile(patient, now)

    repo._reconcile = spy  # type: ignore[method-assign]
    try:
        keeper = world.keeper(world.patient)
        obs = {**_glucose(patient_id, 101, "2022-02-02"), "id": "self-obs"}
        first = keeper.put(_json.dumps(obs).encode(), "fhir:Observation")
        obs["valueQuantity"] = {**obs["valueQuantity"], "value": 102}
        keeper.put(_json.dumps(obs).encode(), "fhir:Observation", supersedes=first.cid)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            current = world.service.index.current("Observation", "self-obs")
            if current is not None and current.version == 2:
                break
            time.sleep(0.2)
        assert [v.version for v in world.service.index.versions("Observation", "self-obs")] == [
            2,
            1,
        ]
        r = requests.get(f"{world.url}/Observation/self-obs", headers=_h(token), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["valueQuantity"]["value"] == 102 and r.json()["meta"]["versionId"] == "2"
        assert world.patient.address not in whole  # followed incrementally, not swept
    finally:
        repo._reconcile = reconcile  # type: ignore[method-assign]
        repo.full_reconcile_s = sweep
