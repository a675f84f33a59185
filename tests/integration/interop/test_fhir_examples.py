"""HL7's official R4 examples of every supported type, through the real FHIR API and back.

Every valid example (hl7.fhir.r4.examples 4.0.1, pinned in package.json) is written with
``PUT Type/id`` in batch Bundles, then read back: what was stored is exactly what comes out
(only ``meta.versionId``/``lastUpdated`` are the ledger's). The example Patients are given the
test patient's account; Patients the examples name but do not include get a minimal stand-in.
An example that medmesh cannot hold is refused with 422 and nothing stored, for one of two
reasons an independent check below predicts: it belongs to no Patient (a Group's or a
Device's Observation, say), or it references a resource of a supported type that is not
among the examples (or is itself refused).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import requests

from medmesh.interop.fhir.repository import ACCOUNT_SYSTEM
from medmesh.interop.fhir.types import SUPPORTED_TYPES
from tests.integration.interop import test_fhir_api as api
from tests.integration.interop.test_fhir_api import World, _h
from tests.unit.interop.fhir.test_validation import EXAMPLES, KNOWN_INVALID, MISSING

world, token = api.world, api.token


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        out = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return out + [r for k, v in value.items() if k != "contained" for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _owner_ref(resource: dict[str, Any]) -> str | None:
    for field in ("subject", "patient"):
        ref = (resource.get(field) or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


def test_official_examples_round_trip(world: World, token: str) -> None:
    if not EXAMPLES.is_dir():
        pytest.skip(MISSING)
    examples = {}
    for type_ in SUPPORTED_TYPES:
        for path in sorted(EXAMPLES.glob(f"{type_}-*.json")):
            if path.name not in KNOWN_INVALID:
                r = json.loads(path.read_bytes())
                examples[f"{type_}/{r['id']}"] = r
    did = world.patient.did(int(world.service.repo.ledger.chain_id))
    account = {"system": ACCOUNT_SYSTEM, "value": did}
    for r in examples.values():
        if r["resourceType"] == "Patient":
            r.setdefault("identifier", []).append(account)
    for r in list(examples.values()):
        ref = _owner_ref(r)
        if ref and ref not in examples:  # a Patient the examples name but do not include
            examples[ref] = {"resourceType": "Patient", "id": ref.split("/")[1], "identifier": [account]}  # fmt: skip
    # the independent prediction: no Patient owner, or a dangling reference (transitively)
    refused = {
        k for k, r in examples.items() if r["resourceType"] != "Patient" and not _owner_ref(r)
    }
    while True:
        more = {
            k for k, r in examples.items() if k not in refused and any(
                ref.split("/")[0] in SUPPORTED_TYPES and (ref not in examples or ref in refused)
                for ref in _refs(r) if ref.count("/") == 1 and not ref.startswith(("http", "urn:"))
            )
        }  # fmt: skip
        if not more:
            break
        refused |= more
    entries = [{"resource": copy.deepcopy(r), "request": {"method": "PUT", "url": k}}
               for k, r in examples.items()]  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}  # one: links resolve
    r = requests.post(world.url, json=bundle, headers=_h(token), timeout=600)
    assert r.status_code == 200, r.text
    statuses = {
        sent["request"]["url"]: got["response"]["status"]
        for sent, got in zip(entries, r.json()["entry"], strict=True)
    }
    assert {k for k, s in statuses.items() if not s.startswith("201")} == refused
    assert all(statuses[k].startswith("422") for k in refused)
    kept = [k for k in examples if k not in refused]
    assert len(kept) >= 120, len(kept)  # most examples are held (the count is in the log)
    print(f"{len(kept)} of {len(examples)} examples round-trip; {len(refused)} refused")
    session = requests.Session()
    session.headers.update(_h(token))
    for key in kept:
        got = session.get(f"{world.url}/{key}", timeout=30)
        assert got.status_code == 200, (key, got.text)
        body = got.json()
        meta = body.pop("meta")
        assert meta["versionId"] == "1"
        want = copy.deepcopy(examples[key])
        kept_meta = {k: v for k, v in (want.pop("meta", None) or {}).items()
                     if k not in ("versionId", "lastUpdated")}  # fmt: skip
        assert {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")} == kept_meta
        assert body == want, key
