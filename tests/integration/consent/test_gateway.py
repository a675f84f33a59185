"""The consent gateway end to end: a real Anvil, real storage nodes, a real HTTP server.

A patient stores a record, grants a provider, the provider signs in with Ethereum and gets
the ciphertext plus its capsule and opens it; every refusal case of the issue is refused and
logged; revocation takes effect at once.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import uvicorn

from medmesh.consent.access_log import AccessLog
from medmesh.consent.gateway import Gateway, create_app
from medmesh.consent.sharing import RecordKeeper
from medmesh.crypto.capsule import KeyCapsule
from medmesh.crypto.envelope import RecordOpener
from medmesh.daemons import free_port
from medmesh.errors import ConsentError
from medmesh.identity import Wallet
from medmesh.identity.siwe import new_message
from medmesh.ledger.chains import LocalChain
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Role, Scope, record_id
from medmesh.ledger.deploy import ensure_deployed
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import TxSender
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.client import Client
from medmesh.storage.uploader import StoreParams
from tests.harness import LocalCluster


@dataclass
class World:
    root: Path
    chain: LocalChain
    rpc_url: str
    book: object
    cluster: LocalCluster
    governance: Wallet
    patient: Wallet
    provider: Wallet
    stranger: Wallet
    gateway_url: str
    gateway: Gateway
    log: AccessLog

    def ledger(self, wallet: Wallet | None) -> Ledger:
        return Ledger(self.rpc_url, self.book, signer=wallet, durable=self.chain.wait_durable)  # type: ignore[arg-type]

    def client(self, wallet: Wallet) -> Client:
        return Client(
            NetworkStore(self.cluster.urls, signer=wallet, params=StoreParams(k=2, n=3)), wallet
        )

    def keeper(self, wallet: Wallet) -> RecordKeeper:
        ledger = self.ledger(wallet)
        return RecordKeeper(
            wallet,
            ledger,
            Indexer(ledger, f"sqlite:///{self.root}/{wallet.address}.db"),
            self.client(wallet),
        )

    def ask(
        self,
        record: bytes,
        token: str | None,
        *,
        purpose: str = "treatment",
        what: str = "/capsule",
    ) -> requests.Response:
        """GET a record (``what=""``) or its capsule, with the session ``token`` if any."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(
            f"{self.gateway_url}/v1/records/0x{record.hex()}{what}",
            params={"purpose": purpose},
            headers=headers,
            timeout=10,
        )

    def signed(self, signer: Wallet, *, address: str, domain: str | None = None) -> dict[str, str]:
        """A login body: a fresh gateway nonce in a message for ``address``, signed by ``signer``."""
        info = requests.get(f"{self.gateway_url}/v1/auth/nonce", timeout=5).json()
        msg = new_message(
            domain or info["domain"], address, info["uri"], info["chain_id"], nonce=info["nonce"]
        ).to_text()
        return {"message": msg, "signature": "0x" + signer.sign_message(msg.encode()).hex()}

    def login(self, wallet: Wallet, **overrides: object) -> str:
        return siwe_login(self.gateway_url, wallet, **overrides)


def siwe_login(url: str, wallet: Wallet, **overrides: object) -> str:
    """Sign in to the gateway at ``url`` with Ethereum; the session's bearer token."""
    info = requests.get(f"{url}/v1/auth/nonce", timeout=5).json()
    fields = {"domain": info["domain"], "address": wallet.address, "uri": info["uri"], "chain_id": info["chain_id"],
              "nonce": info["nonce"], **overrides}  # fmt: skip
    msg = new_message(**fields).to_text()  # type: ignore[arg-type]
    sig = wallet.sign_message(msg.encode())
    r = requests.post(
        f"{url}/v1/auth/login", json={"message": msg, "signature": "0x" + sig.hex()}, timeout=5
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gw")
    # each part is stopped even when a later one fails to start (no stray chain or node)
    with contextlib.ExitStack() as running:
        chain = LocalChain(root / "chain")
        st = chain.up(port=0)
        running.callback(chain.down)
        assert st.rpc_url
        gov, patient, provider, stranger = (Wallet.create() for _ in range(4))
        with Rpc(st.rpc_url) as rpc:
            for w in (gov, patient, provider, stranger):
                rpc.call("anvil_setBalance", w.address, hex(10**21))
            book, _ = ensure_deployed(TxSender(rpc, gov), root / "addresses.json")
        cluster = LocalCluster(
            root / "nodes", 3, trusted=[w.address for w in (gov, patient, provider, stranger)]
        )
        running.callback(cluster.close)
        g = Ledger(st.rpc_url, book, signer=gov, durable=chain.wait_durable)
        for w in (gov, patient, provider, stranger):
            Ledger(st.rpc_url, book, signer=w).registry.register(
                w.encryption_public_key.to_bytes(), ""
            )
        g.registry.admit(gov.address, Role.GATEWAY)
        g.registry.admit(provider.address, Role.PROVIDER)
        indexer = Indexer(g, f"sqlite:///{root}/gateway-index.db")
        log = AccessLog(g, f"sqlite:///{root}/gateway.db", interval=0.5)
        port = free_port(socket.SOCK_STREAM)
        gateway = Gateway(g, indexer, NetworkStore(cluster.urls, signer=gov, params=StoreParams(k=2, n=3)), log,
                          domain=f"127.0.0.1:{port}", uri=f"http://127.0.0.1:{port}")  # fmt: skip
        stop = threading.Event()
        follower = threading.Thread(
            target=indexer.follow, args=(stop,), kwargs={"interval": 0.2}, daemon=True
        )
        follower.start()
        log.start()
        server = uvicorn.Server(
            uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield World(root, chain, st.rpc_url, book, cluster, gov, patient, provider, stranger,
                        f"http://127.0.0.1:{port}", gateway, log)  # fmt: skip
        finally:
            server.should_exit = True
            thread.join(10)
            stop.set()
            log.stop(flush=False)


def _wait_indexed(world: World, record: bytes) -> None:
    deadline = time.monotonic() + 10
    while world.gateway.indexer.record(record) is None and time.monotonic() < deadline:
        time.sleep(0.1)


def test_grant_sign_in_fetch_and_open(world: World) -> None:
    keeper = world.keeper(world.patient)
    put = keeper.put(b"patient lab result: glucose 5.4 mmol/L", "fhir:Observation")
    keeper.grant(
        world.provider.address,
        Scope.record(world.patient.address, put.cid),
        Purpose.TREATMENT,
        int(time.time()) + 3600,
    )
    _wait_indexed(world, put.record)
    token = world.login(world.provider)
    r = world.ask(put.record, token, what="")
    assert r.status_code == 200, r.text
    assert r.headers["X-Medmesh-Cid"] == str(put.cid)
    capsule = KeyCapsule.from_bytes(base64.b64decode(r.headers["X-Medmesh-Capsule"]))
    opener = RecordOpener(world.provider.encryption_keys, extra=[capsule])
    plain = opener.update(r.content) + opener.finalize()
    assert plain == b"patient lab result: glucose 5.4 mmol/L"
    assert b"glucose" not in r.content  # the gateway only ever handled ciphertext


def test_refusals_are_refused_and_logged(world: World) -> None:
    keeper = world.keeper(world.patient)
    put = keeper.put(b"another record", "fhir:Condition")
    other = keeper.put(b"a third record", "fhir:Condition")
    keeper.grant(
        world.provider.address,
        Scope.record(world.patient.address, put.cid),
        Purpose.TREATMENT,
        int(time.time()) + 3600,
    )
    _wait_indexed(world, other.record)
    token = world.login(world.provider)
    stranger = world.login(world.stranger)

    def ask(record: bytes, purpose: str, tok: str | None) -> int:
        return world.ask(record, tok, purpose=purpose).status_code

    before = len(world.log.refusals())
    assert ask(put.record, "treatment", token) == 200
    assert ask(put.record, "research", token) == 403  # another purpose
    assert ask(other.record, "treatment", token) == 403  # another record
    assert ask(put.record, "treatment", stranger) == 403  # no grant
    assert ask(put.record, "treatment", None) == 401  # no session
    assert ask(put.record, "treatment", "forged-token") == 401
    assert ask(b"\x11" * 32, "treatment", token) == 404
    assert len(world.log.refusals()) == before + 6
    # revocation: refused as soon as the revoke is mined
    keeper.revoke(world.provider.address, Scope.record(world.patient.address, put.cid))
    assert ask(put.record, "treatment", token) == 403


def test_expired_grant_is_refused(world: World) -> None:
    keeper = world.keeper(world.patient)
    put = keeper.put(b"short-lived", "fhir:Observation")
    keeper.grant(
        world.provider.address,
        Scope.record(world.patient.address, put.cid),
        Purpose.TREATMENT,
        int(time.time()) + 3,
    )
    _wait_indexed(world, put.record)
    token = world.login(world.provider)
    assert world.ask(put.record, token).status_code == 200
    time.sleep(5)
    assert world.ask(put.record, token).status_code == 403


def test_siwe_replay_and_forgery_are_refused(world: World) -> None:
    login = f"{world.gateway_url}/v1/auth/login"
    provider = world.provider
    body = world.signed(provider, address=provider.address)
    assert requests.post(login, json=body, timeout=5).status_code == 200
    assert requests.post(login, json=body, timeout=5).status_code == 401  # replay
    forged = world.signed(world.stranger, address=provider.address)  # signed by someone else
    assert requests.post(login, json=forged, timeout=5).status_code == 401
    other_domain = world.signed(provider, address=provider.address, domain="evil.example")
    assert requests.post(login, json=other_domain, timeout=5).status_code == 401


def test_allowed_accesses_reach_the_chain(world: World) -> None:
    keeper = world.keeper(world.patient)
    put = keeper.put(b"audited", "fhir:Observation")
    keeper.grant(world.provider.address, Scope.all(), Purpose.TREATMENT, int(time.time()) + 3600)
    _wait_indexed(world, put.record)
    token = world.login(world.provider)
    for _ in range(3):
        assert world.ask(put.record, token).status_code == 200
    world.log.flush()
    keeper.indexer.sync()
    rows = [
        a for a in keeper.indexer.accesses(patient=world.patient.address) if a.record == put.record
    ]
    assert len(rows) == 3
    assert {a.accessor for a in rows} == {world.provider.address}
    assert all(a.purpose == Purpose.TREATMENT for a in rows)
    assert record_id(world.patient.address, put.cid) == put.record


def test_cached_ciphertext_is_still_consent_checked(world: World) -> None:
    keeper = world.keeper(world.patient)
    put = keeper.put(b"a record read twice", "fhir:Observation")
    scope = Scope.record(world.patient.address, put.cid)
    keeper.grant(world.provider.address, scope, Purpose.TREATMENT, int(time.time()) + 3600)
    _wait_indexed(world, put.record)
    token = world.login(world.provider)
    first = world.ask(put.record, token, what="")
    hits = world.gateway.cache.hits
    second = world.ask(put.record, token, what="")
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert world.gateway.cache.hits == hits + 1  # served from the verified cache
    keeper.revoke(world.provider.address, scope)
    for g in keeper.indexer.grants(patient=world.patient.address, grantee=world.provider.address):
        keeper.revoke(world.provider.address, Scope.from_word(g.scope))  # earlier tests' grants
    refused = world.ask(put.record, token, what="")
    assert refused.status_code == 403  # a cached object is no permission
    assert b"record read twice" not in refused.content


def test_a_remembered_location_needs_no_lookup_and_consent_is_still_asked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper = world.keeper(world.patient)
    put = keeper.put(b"patient note: remembered", "fhir:Observation")
    _wait_indexed(world, put.record)
    gateway = world.gateway
    located = gateway._find_record(put.record)
    lookups: list[bytes] = []
    real = gateway._find_record
    monkeypatch.setattr(gateway, "_find_record", lambda r: lookups.append(r) or real(r))
    gateway.remember_location(put.record, *located)
    assert gateway._locate(put.record) == located
    assert lookups == []  # known: no lookup
    # the provider has no grant: remembering where the record is grants nothing
    with pytest.raises(ConsentError):
        gateway.authorize(world.provider.address, put.record, Purpose.TREATMENT)
