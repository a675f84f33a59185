"""FHIR transaction and batch Bundles (POST /fhir) end to end, on the same real network as
test_fhir_api: a transaction stores all its entries or none, a batch each on its own, and
``urn:uuid:`` links between entries land as ``Type/id`` references."""

from __future__ import annotations

import uuid
from typing import Any

import requests

from tests.integration.interop import test_fhir_api as api
from tests.integration.interop.test_fhir_api import World, _glucose, _h, _patient

# the same network and patient as test_fhir_api (module-scoped: one world per module)
world, token, patient_id = api.world, api.token, api.patient_id


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _post(world: World, token: str, entries: list[dict[str, Any]], kind: str) -> requests.Response:
    bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
    return requests.post(world.url, json=bundle, headers=_h(token), timeout=60)


def _stored(world: World) -> tuple[int, int]:
    """(versions in the gateway's index, records of the patient on the ledger)."""
    indexer = world.service.repo.keeper.indexer
    indexer.sync()
    on_chain = indexer.records(world.patient.address, include_history=True)
    return world.service.index.count(), len(on_chain)


def _create(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def test_transaction_links_entries_and_stores_all(world: World, token: str) -> None:
    pat = _urn()
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": pat},
    }
    enc = _urn()
    obs = _glucose("x", 97.0, "2026-02-01T08:00:00Z")
    obs["subject"] = {"reference": pat}
    obs["encounter"] = {"reference": enc}
    # the Observation comes first and names entries after it: order does not matter
    entries = [
        _create(obs),
        _create(encounter, enc),
        _create(_patient(world, world.patient, "Transaction"), pat),
    ]
    r = _post(world, token, entries, "transaction")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created"] * 3
    o, e, p = (x["resource"] for x in out["entry"])
    assert o["subject"]["reference"] == f"Patient/{p['id']}"
    assert o["encounter"]["reference"] == f"Encounter/{e['id']}"
    assert out["entry"][0]["response"]["location"] == f"Observation/{o['id']}/_history/1"
    # each is readable through the API, with the links resolved
    got = requests.get(f"{world.url}/Observation/{o['id']}", headers=_h(token), timeout=30)
    assert got.status_code == 200, got.text
    assert got.json()["subject"]["reference"] == f"Patient/{p['id']}"


def test_transaction_with_one_bad_entry_stores_nothing(
    world: World, token: str, patient_id: str
) -> None:
    before = _stored(world)
    good = _glucose(patient_id, 90.0, "2026-02-02T08:00:00Z")
    bad = _glucose(patient_id, 91.0, "2026-02-02T09:00:00Z", status="bogus")
    r = _post(world, token, [_create(good), _create(good), _create(bad)], "transaction")
    assert r.status_code in (400, 422), r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    paths = [p for i in outcome["issue"] for p in i.get("expression", [])]
    assert any(p.startswith("Bundle.entry[2].resource.status") for p in paths), paths
    assert "bogus" not in r.text  # no values echoed
    assert _stored(world) == before


def test_transaction_refused_whole_for_unsupported_or_conflicting_entries(
    world: World, token: str, patient_id: str
) -> None:
    before = _stored(world)
    good = _create(_glucose(patient_id, 92.0, "2026-02-03T08:00:00Z"))
    delete = {"request": {"method": "DELETE", "url": f"Patient/{patient_id}"}}
    r = _post(world, token, [good, delete], "transaction")
    assert r.status_code == 405, r.text
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].request.method"]
    # a stale If-Match on an update: 412, nothing stored
    current = requests.get(f"{world.url}/Patient/{patient_id}", headers=_h(token), timeout=30)
    body = current.json()
    body.pop("meta")
    put = {
        "resource": body,
        "request": {"method": "PUT", "url": f"Patient/{patient_id}", "ifMatch": 'W/"999"'},
    }
    r = _post(world, token, [good, put], "transaction")
    assert r.status_code == 412, r.text
    # a read of an unknown resource refuses the transaction before any write
    read = {"request": {"method": "GET", "url": "Observation/no-such-id"}}
    r = _post(world, token, [good, read], "transaction")
    assert r.status_code == 404, r.text
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert _stored(world) == before


def test_batch_entries_succeed_or_fail_on_their_own(
    world: World, token: str, patient_id: str
) -> None:
    enc = _urn()
    broken_encounter = {"resourceType": "Encounter", "status": "nonsense",
                        "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{patient_id}"}}  # fmt: skip
    needs_encounter = _glucose(patient_id, 93.0, "2026-02-04T08:00:00Z")
    needs_encounter["encounter"] = {"reference": enc}
    entries = [
        _create(_glucose(patient_id, 94.0, "2026-02-04T09:00:00Z")),
        _create(broken_encounter, enc),
        _create(needs_encounter),  # names the failed entry: fails too, nothing dangling
        {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
        {"request": {"method": "GET", "url": "Observation/no-such-id"}},
        {"request": {"method": "GET", "url": f"Observation?patient={patient_id}&code=2339-0"}},
        {"request": {"method": "PATCH", "url": f"Patient/{patient_id}"}},
    ]
    r = _post(world, token, entries, "batch")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"].split()[0] for e in out["entry"]]
    assert statuses == ["201", "422", "422", "200", "404", "200", "405"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert out["entry"][3]["resource"]["id"] == patient_id
    found = out["entry"][5]["resource"]
    assert found["type"] == "searchset"
    assert out["entry"][0]["resource"]["id"] in {x["resource"]["id"] for x in found["entry"]}
    ok = out["entry"][0]["resource"]["id"]
    assert requests.get(f"{world.url}/Observation/{ok}", headers=_h(token), timeout=30).ok


def test_bundle_needs_the_scopes_of_every_entry(world: World, patient_id: str) -> None:
    before = _stored(world)
    narrow = world.token("system/Observation.read")
    entries = [_create(_glucose(patient_id, 95.0, "2026-02-05T08:00:00Z"))]
    r = _post(world, narrow, entries, "transaction")
    assert r.status_code == 403, r.text
    r = _post(world, narrow, entries, "batch")
    assert r.status_code == 200
    assert r.json()["entry"][0]["response"]["status"].startswith("403")
    # other bundle types and malformed bundles are refused as a whole
    r = _post(world, narrow, entries, "collection")
    assert r.status_code == 400
    r = requests.post(world.url, data=b'{"resourceType": "Bundle", "type": "batch", "entry": 5}',
                      headers=_h(narrow), timeout=30)  # fmt: skip
    assert r.status_code == 400
    assert _stored(world) == before


def test_prefer_return_minimal_answers_writes_without_their_resource(
    world: World, token: str, patient_id: str
) -> None:
    minimal = _h(token, Prefer="return=minimal")
    entries = [
        _create(_glucose(patient_id, 96.0, "2026-02-06T08:00:00Z")),
        _create({"resourceType": "Observation", "status": "nonsense"}),
        {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
    ]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    r = requests.post(world.url, json=bundle, headers=minimal, timeout=60)
    assert r.status_code == 200, r.text
    written, failed, read = r.json()["entry"]
    assert "resource" not in written  # the status, location and version only
    assert written["response"]["status"].startswith("201")
    location = written["response"]["location"]
    assert written["response"]["etag"] == 'W/"1"' and location.endswith("/_history/1")
    assert failed["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert read["resource"]["id"] == patient_id  # a read still answers with what it read
    stored = requests.get(f"{world.url}/{location}", headers=_h(token), timeout=30)
    assert stored.status_code == 200 and stored.json()["valueQuantity"]["value"] == 96.0

    created = requests.post(f"{world.url}/Observation", headers=minimal, timeout=30,
                            json=_glucose(patient_id, 97.0, "2026-02-06T09:00:00Z"))  # fmt: skip
    assert created.status_code == 201 and created.content == b""
    assert created.headers["ETag"] == 'W/"1"' and "/_history/1" in created.headers["Location"]
    obs = requests.get(created.headers["Location"], headers=_h(token), timeout=30).json()
    obs["status"] = "amended"
    updated = requests.put(f"{world.url}/Observation/{obs['id']}", json=obs, headers=minimal,
                           timeout=30)  # fmt: skip
    assert updated.status_code == 200 and updated.content == b""
    assert updated.headers["ETag"] == 'W/"2"'
