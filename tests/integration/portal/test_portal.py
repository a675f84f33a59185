"""The web portal end to end, on a real local network: Anvil and storage node processes
started by the ``medmesh`` CLI, a synthetic population (``medmesh synth``), the consent
gateway with the portal mounted, on uvicorn on 127.0.0.1, driven over HTTP with httpx.

Sign-in (keystore, browser-wallet signatures, tampering, stale sessions), a patient's
records, a grant that a provider then reads exactly, a revocation that the provider then
meets as a 403 page, the audit trail with both outcomes, uploads (invalid FHIR stores
nothing), the export, and a stopped node shown as down.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydicom.data import get_testdata_file

from medmesh.config import Home
from medmesh.consent.access_log import AccessLog
from medmesh.consent.gateway import Gateway, create_app
from medmesh.consent.sessions import SESSION_TTL
from medmesh.daemons import free_port
from medmesh.devnet import Devnet
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.local import open_indexer, open_ledger
from medmesh.portal import Portal, mount_portal
from medmesh.portal.auth import COOKIE
from medmesh.portal.labels import kind_label, kind_name
from medmesh.storage.backends import open_store
from medmesh.storage.cid import Cid
from medmesh.storage.uploader import StoreParams
from tests.integration.test_cli import PASS, medmesh

pytestmark = pytest.mark.slow

OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "valueQuantity": {"value": 72, "unit": "/min"},
}


@dataclass
class World:
    home: Path
    url: str
    people: dict[str, dict[str, str]]
    passphrase: str
    indexer: Indexer
    skew: list[float]  # added to the portal's clock
    gateway: Gateway

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def sign_in(self, name: str) -> httpx.Client:
        c = self.client()
        r = c.post("/portal/signin", data={"user": name, "passphrase": self.passphrase})
        assert r.status_code == 303, r.text
        return c

    def address(self, name: str) -> str:
        return self.people[name]["address"]

    def wallet(self, name: str) -> Wallet:
        return load_wallet(Path(self.people[name]["home"]) / "wallet.json", self.passphrase)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def rows(page: str, testid: str) -> list[str]:
    return re.findall(rf'<[a-z]+ data-testid="{testid}"[^>]*>', page)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("portal-home")
    save_wallet(Wallet.create(), home / "wallet.json", PASS, scrypt_n=2**10)
    (home / "config.json").write_text(json.dumps({"k": 2, "n": 3}))
    stop = threading.Event()
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    log: AccessLog | None = None
    try:
        medmesh(home, "chain", "up", "--port", "0")
        medmesh(home, "devnet", "up", "--nodes", "3", "--base-port", "0")
        medmesh(home, "synth", "--patients", "4", "--hospitals", "2", "--labs", "1")
        population = json.loads((home / "synth" / "population.json").read_text())
        people = {p["name"]: p for p in population["participants"]}
        # the gateway as `medmesh gateway run` builds it, in this process
        h = Home(home)
        wallet = load_wallet(home / "wallet.json", PASS)
        ledger = open_ledger(h, wallet)
        indexer = open_indexer(h, ledger)
        log = AccessLog(ledger, f"sqlite:///{home / 'gateway.db'}", interval=0.3)
        cfg = h.load_config()
        store = open_store(
            cfg.backend, nodes=h.node_urls(), signer=wallet, params=StoreParams(k=cfg.k, n=cfg.n)
        )
        port = free_port(socket.SOCK_STREAM)
        domain = f"127.0.0.1:{port}"
        gateway = Gateway(ledger, indexer, store, log, domain=domain, uri=f"http://{domain}")
        skew = [0.0]
        app = create_app(gateway)
        mount_portal(app, Portal(gateway, h, clock=lambda: time.time() + skew[0]))
        follower = threading.Thread(target=indexer.follow, args=(stop,), kwargs={"interval": 0.2}, daemon=True)  # fmt: skip
        follower.start()
        log.start()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # fmt: skip
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield World(
            home, f"http://{domain}", people, population["passphrase"], indexer, skew, gateway
        )
    finally:
        stop.set()
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(10)
        if log is not None:
            log.stop(flush=False)
        medmesh(home, "devnet", "down", check=False)
        medmesh(home, "chain", "down", check=False)


def test_root_redirects_and_sign_in_lists_demo_users(world: World) -> None:
    with world.client() as c:
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/portal/"
        assert c.get("/portal/").headers["location"] == "/portal/signin"
        page = c.get("/portal/signin")
    assert page.status_code == 200
    assert '<label for="user">' in page.text and '<label for="passphrase">' in page.text
    assert "patient-001 (patient)" in page.text and "hospital-1 (hospital)" in page.text
    assert world.passphrase not in page.text
    assert re.fullmatch(r"app;dur=[0-9.]+", page.headers["server-timing"])


def test_keystore_sign_in_starts_a_strict_http_only_session(world: World) -> None:
    with world.client() as c:
        r = c.post("/portal/signin", data={"user": "patient-002", "passphrase": world.passphrase})
        assert r.status_code == 303 and r.headers["location"] == "/portal/"
        cookie = r.headers["set-cookie"].lower()
        assert f"{COOKIE}=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert "path=/portal" in cookie and "max-age=" in cookie
        assert c.get("/portal/").headers["location"] == "/portal/patient"
        page = c.get("/portal/patient")
        assert page.status_code == 200 and "Signed in as <strong>patient-002</strong>" in page.text
        # a hospital lands on its patients
        h = world.sign_in("hospital-1")
        assert h.get("/portal/").headers["location"] == "/portal/provider"
        h.close()
        # sign out ends the session: the old cookie no longer works
        token = c.cookies[COOKIE]
        out = c.post("/portal/signout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        stale = httpx.get(f"{world.url}/portal/patient", cookies={COOKIE: token})
        assert stale.status_code == 401 and "Please sign in" in stale.text


def test_wrong_passphrase_is_a_clear_page(world: World) -> None:
    with world.client() as c:
        r = c.post("/portal/signin", data={"user": "patient-001", "passphrase": "guess-123"})
    assert r.status_code == 401
    assert "does not unlock this keystore" in r.text and "guess-123" not in r.text
    assert "Traceback" not in r.text and COOKIE not in r.headers.get("set-cookie", "")


def test_browser_wallet_signature_tampering_and_replay(world: World) -> None:
    wallet = world.wallet("patient-003")
    with world.client() as c:
        text = c.get("/portal/signin/wallet/message", params={"address": wallet.address.lower()}).json()["message"]  # fmt: skip
        assert world.url.removeprefix("http://") in text and wallet.address in text
        signature = "0x" + wallet.sign_message(text.encode()).hex()
        nonce_line = next(line for line in text.split("\n") if line.startswith("Nonce: "))
        fresh = c.get("/portal/signin/wallet/message", params={"address": wallet.address}).json()["message"]  # fmt: skip
        fresh_nonce = next(line for line in fresh.split("\n") if line.startswith("Nonce: "))
        other = Wallet.create().address
        for forged in (
            text.replace(world.url.removeprefix("http://"), "evil.example", 1),  # domain
            text.replace(nonce_line, fresh_nonce),  # another (issued) nonce
            text.replace(wallet.address, other),  # address
        ):
            r = c.post("/portal/signin/wallet", data={"message": forged, "signature": signature})
            assert r.status_code == 401 and "Sign-in refused" in r.text, r.text
            assert signature not in r.text
        ok = c.post("/portal/signin/wallet", data={"message": text, "signature": signature})
        assert ok.status_code == 303
        page = c.get("/portal/patient/consents")
        assert page.status_code == 200 and "Who can see my records" in page.text
        # no key on the server in such a session: granting needs the keystore (still signed in)
        grant = c.post("/portal/patient/consents", data={
            "csrf": csrf_of(page.text), "grantee": world.address("hospital-1"), "scope": "all",
            "purpose": "treatment", "duration": "1d"})  # fmt: skip
        assert grant.status_code == 403 and "keystore" in grant.text
        assert c.get("/portal/patient/consents").status_code == 200
        again = c.post("/portal/signin/wallet", data={"message": text, "signature": signature})
        assert again.status_code == 401 and "nonce" in again.text


def test_stale_and_unknown_sessions_are_refused(world: World) -> None:
    c = world.sign_in("patient-001")
    try:
        world.skew[0] = SESSION_TTL + 5
        r = c.get("/portal/patient")
        assert r.status_code == 401 and "Please sign in" in r.text
        assert 'href="/portal/signin"' in r.text
    finally:
        world.skew[0] = 0.0
        c.close()
    r = httpx.get(f"{world.url}/portal/patient", cookies={COOKIE: "made-up"})
    assert r.status_code == 401 and "Traceback" not in r.text


def test_patient_sees_their_own_records_readably(world: World) -> None:
    with closing(world.sign_in("patient-001")) as c:
        page = c.get("/portal/patient")
        assert page.status_code == 200
        records = world.indexer.records(world.address("patient-001"))
        assert len(rows(page.text, "record-row")) == len(records) > 10
        assert 'data-testid="record-value"' in page.text  # values with units
        first = re.search(r'data-record="(0x[0-9a-f]{64})"', page.text)
        assert first
        detail = c.get(f"/portal/patient/records/{first.group(1)}")
        assert detail.status_code == 200 and "FHIR JSON" in detail.text
        # someone else's record is not theirs to open here
        theirs = world.indexer.records(world.address("patient-002"))[0].record
        assert c.get(f"/portal/patient/records/0x{theirs.hex()}").status_code == 404
        bundle = c.get("/portal/patient/export")
        assert bundle.status_code == 200 and "attachment" in bundle.headers["content-disposition"]
        doc = bundle.json()
        assert doc["resourceType"] == "Bundle" and len(doc["entry"]) == len(records)


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_grant_read_exactly_revoke_refused_and_audited(world: World) -> None:
    patient, hospital = world.address("patient-002"), world.address("hospital-1")
    mine = world.indexer.records(patient)
    tags = sorted({r.kind for r in mine}, key=lambda t: sum(r.kind == t for r in mine))
    kind = kind_name(tags[0])  # the patient's rarest kind of record
    conditions = [r for r in mine if r.kind == tags[0]]
    assert conditions and len(conditions) < len(mine)
    p = world.sign_in("patient-002")
    h = world.sign_in("hospital-1")
    try:
        # hospital-1 has no consent of patient-002's yet: refused, as a page
        before = h.get(f"/portal/provider/patients/{patient}?purpose=treatment")
        assert before.status_code == 403 and "Access refused" in before.text
        page = p.get("/portal/patient/consents")
        assert '<label for="grantee">' in page.text and ">Grant access</button>" in page.text
        form = {"csrf": csrf_of(page.text), "grantee": hospital, "scope": f"kind:{kind}",
                "purpose": "treatment", "duration": "30d"}  # fmt: skip
        assert (
            p.post("/portal/patient/consents", data={**form, "csrf": "forged"}).status_code == 403
        )
        r = p.post("/portal/patient/consents", data=form)
        assert r.status_code == 303 and r.headers["location"].endswith("done=granted")
        page = p.get("/portal/patient/consents")
        consent = [row for row in rows(page.text, "consent-row") if hospital in row]
        assert len(consent) == 1 and f"{kind_label(tags[0])} records" in page.text
        # the provider sees exactly the Condition records, each read checked and logged
        listing = h.get("/portal/provider")
        assert any(patient in row for row in rows(listing.text, "patient-row"))
        seen = h.get(f"/portal/provider/patients/{patient}?purpose=treatment")
        assert seen.status_code == 200, seen.text
        kinds = re.findall(r'data-testid="record-row" data-kind="([^"]+)"', seen.text)
        assert kinds == [kind] * len(conditions)
        record = f"0x{conditions[0].record.hex()}"
        one = h.get(f"/portal/provider/patients/{patient}/records/{record}?purpose=treatment")
        assert one.status_code == 200 and 'data-testid="record-detail"' in one.text
        # a record of another kind of the same patient's is not covered: refused (and logged)
        other = next(r for r in mine if r.kind != tags[0])
        no = h.get(f"/portal/provider/patients/{patient}/records/0x{other.record.hex()}?purpose=treatment")  # fmt: skip
        assert no.status_code == 403
        # the patient revokes: a confirmation, then the button
        page = p.get("/portal/patient/consents")
        scope = re.search(rf'data-grantee="{hospital}" data-scope="(0x[0-9a-f]+)"', page.text)
        assert scope
        confirm = p.get("/portal/patient/consents/revoke", params={"grantee": hospital, "scope": scope.group(1)})  # fmt: skip
        assert confirm.status_code == 200 and ">Revoke access</button>" in confirm.text
        done = p.post("/portal/patient/consents/revoke",
                      data={"csrf": csrf_of(confirm.text), "grantee": hospital, "scope": scope.group(1)})  # fmt: skip
        assert done.status_code == 303 and done.headers["location"].endswith("done=revoked")
        refused = h.get(f"/portal/provider/patients/{patient}/records/{record}?purpose=treatment")
        assert refused.status_code == 403 and "Access refused" in refused.text
        assert "Traceback" not in refused.text
        assert h.get(f"/portal/provider/patients/{patient}?purpose=treatment").status_code == 403
        # the audit trail shows the allowed reads (from the chain) and the refused ones

        def audit() -> tuple[list[str], list[str]] | None:
            text = p.get("/portal/patient/audit").text
            outcomes = re.findall(r'data-testid="audit-row" data-outcome="([a-z]+)" data-record="([^"]*)"', text)  # fmt: skip
            allowed = [rec for o, rec in outcomes if o == "allowed"]
            denied = [rec for o, rec in outcomes if o == "refused"]
            return (allowed, denied) if record in allowed and record in denied else None

        found = _wait(audit)
        assert found, "the audit trail lacks the allowed or the refused read"
        _allowed, denied = found
        assert f"0x{other.record.hex()}" in denied
        # the two refused visits to the patient's whole list (before the grant, after the
        # revoke) are in their trail too, and in nobody else's
        assert denied.count("") == 2
        assert "your records (the list)" in p.get("/portal/patient/audit").text
        with closing(world.sign_in("patient-001")) as someone_else:
            assert "your records (the list)" not in someone_else.get("/portal/patient/audit").text
    finally:
        p.close()
        h.close()


def test_uploads_store_valid_fhir_and_refuse_invalid(world: World) -> None:
    patient = world.address("patient-004")
    with closing(world.sign_in("patient-004")) as c:
        before = len(world.indexer.records(patient))
        page = c.get("/portal/patient/upload")
        csrf = csrf_of(page.text)
        bad = {**OBSERVATION, "status": "bogus"}
        r = c.post("/portal/patient/upload", data={"csrf": csrf},
                   files={"file": ("bad.json", json.dumps(bad).encode(), "application/json")})  # fmt: skip
        assert r.status_code == 422 and "Nothing was stored" in r.text
        assert 'data-testid="upload-issues"' in r.text and "Observation.status" in r.text
        world.indexer.sync()
        assert len(world.indexer.records(patient)) == before
        ok = c.post("/portal/patient/upload", data={"csrf": csrf},
                    files={"file": ("hr.json", json.dumps(OBSERVATION).encode(), "application/json")})  # fmt: skip
        assert ok.status_code == 200 and 'data-testid="upload-stored"' in ok.text
        assert len(world.indexer.records(patient)) == before + 1
        page = c.get("/portal/patient")
        assert "Heart rate" in page.text and "72 /min" in page.text
        # DICOM: a truncated instance is refused and stores nothing; a whole one is an image
        whole = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        cut = c.post("/portal/patient/upload", data={"csrf": csrf},
                     files={"file": ("ct.dcm", whole[: len(whole) // 2], "application/dicom")})  # fmt: skip
        assert cut.status_code == 400 and "Nothing was stored" in cut.text
        world.indexer.sync()
        assert len(world.indexer.records(patient)) == before + 1
        image = c.post("/portal/patient/upload", data={"csrf": csrf},
                       files={"file": ("ct.dcm", whole, "application/dicom")})  # fmt: skip
        assert image.status_code == 200 and 'data-testid="upload-stored"' in image.text
        assert len(world.indexer.records(patient)) == before + 2
        page = c.get("/portal/patient")
        assert page.status_code == 200 and 'data-kind="dicom:instance"' in page.text


def test_provider_adds_a_record_only_with_contribute_consent(world: World) -> None:
    # patient-001 lets hospital-1 treat and contribute; patient-004 lets it read Observations only
    mine, theirs = world.address("patient-001"), world.address("patient-004")
    with closing(world.sign_in("hospital-1")) as h:
        page = h.get(f"/portal/provider/patients/{mine}?purpose=treatment")
        assert page.status_code == 200 and '<label for="resource">' in page.text
        csrf = csrf_of(page.text)
        before = len(world.indexer.records(mine))
        bad = h.post(f"/portal/provider/patients/{mine}/records",
                     data={"csrf": csrf, "resource": json.dumps({**OBSERVATION, "status": "bogus"})})  # fmt: skip
        assert bad.status_code == 422 and "Nothing was stored" in bad.text
        ok = h.post(f"/portal/provider/patients/{mine}/records",
                    data={"csrf": csrf, "resource": json.dumps(OBSERVATION)})  # fmt: skip
        assert ok.status_code == 200 and 'data-testid="upload-stored"' in ok.text, ok.text
        assert len(world.indexer.records(mine)) == before + 1
        refused = h.post(f"/portal/provider/patients/{theirs}/records",
                         data={"csrf": csrf, "resource": json.dumps(OBSERVATION)})  # fmt: skip
        assert refused.status_code == 403 and "contribute" in refused.text
    with closing(world.sign_in("patient-001")) as p:  # sealed for the patient too
        assert "72 /min" in p.get("/portal/patient").text


def test_network_page_shows_nodes_chain_events_and_a_stopped_node(world: World) -> None:
    devnet = Devnet(world.home / "devnet")
    nodes = devnet.status()
    with world.client() as c:  # readable without signing in
        page = c.get("/portal/network")
        assert page.status_code == 200
        assert len(re.findall(r'data-state="up"', page.text)) == len(nodes)
        assert "<svg" in page.text and rows(page.text, "consent-event")
        assert re.search(r'data-testid="chain-height">[0-9]+<', page.text)
        # stored volume in bytes, from the sample this very page took of the nodes
        assert re.search(r'data-testid="stored">[0-9.]+ (KB|MB)<', page.text), page.text
        assert "stored on nodes" in page.text
        assert re.search(r'class="tick"[^>]*>[0-9.]+ (KB|MB)</text>', page.text)
        live = c.get("/portal/network/status").json()
        assert live["gateway"] == "up" and live["height"] >= 1
        assert [n["state"] for n in live["nodes"]] == ["up"] * len(nodes)
        assert c.get("/portal/status").json() == {"gateway": "up"}
        assert devnet.stop_node(nodes[-1].index)
        page = c.get("/portal/network")
        live = c.get("/portal/network/status").json()
    down = re.findall(r'data-url="([^"]+)" data-state="down"', page.text)
    assert down == [nodes[-1].url]
    assert [n["url"] for n in live["nodes"] if n["state"] == "down"] == [nodes[-1].url]
    # records still open from the k shares left (nothing served from the gateway's cache)
    patient = world.address("patient-001")
    for row in world.indexer.records(patient):
        world.gateway.cache.discard(Cid.from_bytes(row.cid))
    with closing(world.sign_in("patient-001")) as c:
        timeline = c.get("/portal/patient")
    assert timeline.status_code == 200
    assert len(rows(timeline.text, "record-row")) == len(world.indexer.records(patient)) > 0
    assert "could not be opened" not in timeline.text
