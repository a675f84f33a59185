"""The ledger commands as a user runs them: ``medmesh`` subprocesses on one home folder.

``chain up``, ``devnet up`` and ``gateway up`` start the network (what ``make up`` runs); the
patient stores a record, grants a doctor (a wallet of this test, signing in to the gateway
with Ethereum like any client), the doctor reads it, the audit shows it, the revocation stops
it, the erasure shreds it; ``wallet import`` brings in an Ethereum keystore; everything stops.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from eth_account import Account

from medmesh.config import Home
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.ledger.local import open_ledger
from tests.integration.consent.test_gateway import siwe_login
from tests.integration.test_cli import PASS, medmesh


def as_json(proc: subprocess.CompletedProcess[str]) -> object:
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    save_wallet(Wallet.create(), home / "wallet.json", PASS, scrypt_n=2**10)
    try:
        medmesh(home, "chain", "up", "--port", "0")
        medmesh(home, "devnet", "up", "--nodes", "3", "--base-port", "0")
        (home / "config.json").write_text(json.dumps({"k": 2, "n": 3}))
        medmesh(home, "gateway", "up", "--port", "0")
        yield home
    finally:
        medmesh(home, "gateway", "down", check=False)
        medmesh(home, "devnet", "down", check=False)
        medmesh(home, "chain", "down", check=False)


def test_record_lifecycle_through_the_cli(home: Path, tmp_path: Path) -> None:
    status = as_json(medmesh(home, "gateway", "status", "--json"))
    assert isinstance(status, dict) and status["running"] and status["answering"]
    url = status["url"]

    # a doctor with a registered key (funded on the local chain)
    doctor = Wallet.create()
    patient_wallet = load_wallet(home / "wallet.json", PASS)
    ledger = open_ledger(Home.resolve(home), patient_wallet)
    ledger.rpc.call("anvil_setBalance", doctor.address, hex(10**20))
    from medmesh.ledger.client import Ledger

    Ledger(ledger.rpc.url, ledger.book, signer=doctor).registry.register(
        doctor.encryption_public_key.to_bytes(), ""
    )

    src = tmp_path / "lab.json"
    src.write_text('{"resourceType": "Observation", "status": "final"}')
    put = as_json(medmesh(home, "records", "put", str(src), "--kind", "fhir:Observation", "--json"))
    assert isinstance(put, dict)
    listed = as_json(medmesh(home, "records", "list", "--json"))
    assert isinstance(listed, list) and [r["cid"] for r in listed] == [put["cid"]]
    out = tmp_path / "back.json"
    medmesh(home, "records", "get", put["cid"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()

    granted = as_json(
        medmesh(
            home,
            "consent",
            "grant",
            doctor.address,
            "--scope",
            f"record:{put['cid']}",
            "--purpose",
            "treatment",
            "--expires-in",
            "1d",
            "--json",
        )
    )
    assert isinstance(granted, dict) and granted["capsules"] == 1
    grants = as_json(medmesh(home, "consent", "list", "--json"))
    assert isinstance(grants, list)
    assert [(g["grantee"], g["purposes"]) for g in grants] == [(doctor.address, "treatment")]

    token = siwe_login(url, doctor)
    headers = {"Authorization": f"Bearer {token}"}
    capsule_url = f"{url}/v1/records/{put['record']}/capsule"
    r = requests.get(capsule_url, params={"purpose": "treatment"}, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["cid"] == put["cid"] and r.json()["capsule"]

    # the access reaches the chain (gateway batches), and the audit shows it
    deadline = time.monotonic() + 30
    accesses: object = []
    while time.monotonic() < deadline:
        accesses = as_json(medmesh(home, "audit", "--json"))
        if accesses:
            break
        time.sleep(1)
    assert isinstance(accesses, list) and len(accesses) == 1
    assert (accesses[0]["accessor"], accesses[0]["record"], accesses[0]["purpose"]) == (
        doctor.address,
        put["record"],
        "treatment",
    )

    medmesh(home, "consent", "revoke", doctor.address, "--scope", f"record:{put['cid']}")
    r = requests.get(capsule_url, params={"purpose": "treatment"}, headers=headers, timeout=10)
    assert r.status_code == 403
    assert as_json(medmesh(home, "consent", "list", "--json")) == []

    # erasing asks for confirmation unless --yes; then the record is gone
    refused = medmesh(home, "records", "erase", put["cid"], check=False)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    erased = as_json(medmesh(home, "records", "erase", put["cid"], "--yes", "--json"))
    assert isinstance(erased, dict) and erased["complete"] and erased["blocks_deleted"] > 0
    failed = medmesh(home, "records", "get", put["cid"], "-o", str(tmp_path / "gone"), check=False)
    assert failed.returncode != 0 and "not found" in " ".join(failed.stderr.split())
    listed = as_json(medmesh(home, "records", "list", "--json"))
    assert isinstance(listed, list) and [r["erased"] for r in listed] == [True]


def test_wallet_import_of_an_ethereum_keystore(tmp_path: Path) -> None:
    account = Account.create()
    keystore = tmp_path / "UTC--account.json"
    keystore.write_text(json.dumps(Account.encrypt(account.key, "old secret", iterations=2**10)))
    target = tmp_path / "home"
    env = {"MEDMESH_IMPORT_PASSPHRASE": "old secret"}
    wrong = medmesh(
        target, "wallet", "import", str(keystore), check=False,
        env={"MEDMESH_IMPORT_PASSPHRASE": "wrong"},
    )  # fmt: skip
    assert wrong.returncode != 0 and "wrong passphrase" in wrong.stderr
    assert not (target / "wallet.json").exists()
    done = medmesh(target, "wallet", "import", str(keystore), env=env)
    assert account.address in done.stdout and "encryption key" in done.stdout
    wallet = load_wallet(target / "wallet.json", PASS)  # saved under the home's passphrase
    assert wallet.address == account.address
    # importing another account over it needs --force
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(Account.encrypt(Account.create().key, "old secret", iterations=2**10))
    )
    clash = medmesh(target, "wallet", "import", str(other), check=False, env=env)
    assert clash.returncode != 0 and "--force" in clash.stderr
    assert load_wallet(target / "wallet.json", PASS).address == account.address
