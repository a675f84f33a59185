"""The FHIR importer's sequence, ids, chunks, report and resumption, against an in-process
gateway stand-in (the real gateway is exercised in tests/integration/interop)."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from medmesh.errors import InvalidInputError
from medmesh.interop.fhir.importer import Importer, read_items
from medmesh.interop.fhir.repository import ACCOUNT_SYSTEM


class Gateway:
    """Answers batch Bundles: 422 for Observations whose status is 'bad', 201 otherwise;
    can be told to fail (as an unreachable gateway) on its n-th call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.bundles: list[dict[str, Any]] = []
        self.fail_on = fail_on

    def __call__(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if self.fail_on is not None and len(self.bundles) == self.fail_on:
            raise InvalidInputError("gateway away")
        self.bundles.append(bundle)
        out = []
        for e in bundle["entry"]:
            assert e["request"]["method"] == "PUT"
            r = e["resource"]
            assert e["request"]["url"] == f"{r['resourceType']}/{r['id']}"
            if r.get("status") == "bad":
                issue = {"severity": "error", "code": "code-invalid",
                         "diagnostics": "not a valid code", "expression": ["Observation.status"]}  # fmt: skip
                out.append({"response": {"status": "422 Unprocessable Entity",
                                         "outcome": {"resourceType": "OperationOutcome", "issue": [issue]}}})  # fmt: skip
            else:
                out.append({"response": {"status": "201 Created"}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}

    def sent(self) -> list[dict[str, Any]]:
        return [e["resource"] for b in self.bundles for e in b["entry"]]


def _obs(pid: str, status: str = "final", id_: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Observation", "status": status,
                         "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    if id_:
        r["id"] = id_
    return r


def _ndjson(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_compartments_fixed_ids_and_failures_reported(tmp_path: Path) -> None:
    src = _ndjson(tmp_path / "export.ndjson", [
        _obs("p1", id_="o1"), "{not json", _obs("p1"), {"resourceType": "Patient", "id": "p1"},
        "", _obs("p1", status="bad", id_="o3"), [1, 2],
    ])  # fmt: skip
    gw = Gateway()
    imp = Importer([src], gw, state_dir=tmp_path / "state", chunk=2)
    assert imp.count() == 6  # blank lines are not resources
    s = imp.run()
    sent = gw.sent()
    assert [r["resourceType"] for r in sent] == [
        "Patient",
        "Observation",
        "Observation",
        "Observation",
    ]
    # one compartment of four, cut into chunks of 2: the Patient first, then its
    # Observations in file order; the unreadable lines are reported before anything is sent
    assert [[r.get("id") for r in (e["resource"] for e in b["entry"])][:1] for b in gw.bundles] == [
        ["p1"],
        [sent[2]["id"]],
    ]
    assert [len(b["entry"]) for b in gw.bundles] == [2, 2]
    assert sent[1]["id"] == "o1" and sent[3]["id"] == "o3"
    no_id = sent[2]["id"]
    assert str(uuid.UUID(no_id)) == no_id
    assert (s.imported, s.failed, s.done) == (3, 3, 6)
    assert s.by_type == {"Patient": 1, "Observation": 2}
    report = [json.loads(x) for x in Path(s.report).read_text().splitlines()]
    assert [(r["place"], r["status"]) for r in report] == [(2, "400"), (7, "400"), (6, "422")]
    bad = next(r for r in report if r["status"] == "422")
    assert bad["id"] == "o3" and bad["issues"][0]["expression"] == ["Observation.status"]
    # the same input gives the same ids: a re-run updates, it does not duplicate
    gw2 = Gateway()
    Importer([src], gw2, state_dir=tmp_path / "other", chunk=2).run()
    assert [r["id"] for r in gw2.sent()] == [r["id"] for r in sent]


def test_resumes_where_it_stopped(tmp_path: Path) -> None:
    src = _ndjson(tmp_path / "a.ndjson", [_obs("p1", id_=f"o{i}") for i in range(10)])
    state = tmp_path / "state"
    gw = Gateway(fail_on=2)
    imp = Importer([src], gw, state_dir=state, chunk=3)
    with pytest.raises(InvalidInputError):
        imp.run()
    assert imp.summary.done == 6
    gw2 = Gateway()
    again = Importer([src], gw2, state_dir=state, chunk=3)
    assert again.summary.resumed_at == 6
    seen: list[int] = []
    s = again.run(seen.append)
    assert [r["id"] for r in gw2.sent()] == ["o6", "o7", "o8", "o9"]
    assert (s.imported, s.done, seen) == (10, 10, [6, 3, 1])
    # --restart starts over; a changed file is another import
    gw3 = Gateway()
    Importer([src], gw3, state_dir=state, chunk=3, restart=True).run()
    assert len(gw3.sent()) == 10
    _ndjson(src, [_obs("p1", id_="o0")])
    assert Importer([src], Gateway(), state_dir=state).summary.resumed_at == 0


def test_transaction_bundle_links_become_fixed_references(tmp_path: Path) -> None:
    pat, enc = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    obs = _obs("x")
    obs["subject"] = {"reference": pat}
    obs["encounter"] = {"reference": enc}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": enc, "resource": {"resourceType": "Encounter", "status": "finished",
                                      "class": {"code": "AMB"}, "subject": {"reference": pat}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": obs, "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": pat, "resource": {"resourceType": "Patient", "meta": {"versionId": "7"}},
         "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/old"}},
    ]}  # fmt: skip
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(bundle))
    gw = Gateway()
    s = Importer([path], gw, state_dir=tmp_path / "s", accounts={}).run()
    p, e, o = gw.sent()
    assert p["resourceType"] == "Patient" and "_fullUrl" not in p
    assert e["subject"]["reference"] == f"Patient/{p['id']}"
    assert o["subject"]["reference"] == f"Patient/{p['id']}"
    assert o["encounter"]["reference"] == f"Encounter/{e['id']}"
    assert (s.imported, s.failed) == (3, 1)  # the DELETE entry is reported, not imported


def test_accounts_add_the_owner_identifier(tmp_path: Path) -> None:
    address = "0x" + "ab" * 20
    src = _ndjson(tmp_path / "p.ndjson", [
        {"resourceType": "Patient", "id": "p1",
         "identifier": [{"system": ACCOUNT_SYSTEM, "value": "stale"}, {"system": "mrn", "value": "1"}]},
        {"resourceType": "Patient", "id": "p2"},
    ])  # fmt: skip
    gw = Gateway()
    Importer([src], gw, state_dir=tmp_path / "s", accounts={"p1": address}, chain_id=31337).run()
    p1, p2 = gw.sent()
    assert p1["identifier"] == [
        {"system": "mrn", "value": "1"},
        {"system": ACCOUNT_SYSTEM, "value": f"did:pkh:eip155:31337:{address}"},
    ]
    assert "identifier" not in p2
    with pytest.raises(InvalidInputError):
        Importer([src], gw, state_dir=tmp_path / "s", accounts={"p1": address})  # no chain id


def test_inputs_gzip_single_resources_and_refusals(tmp_path: Path) -> None:
    gz = tmp_path / "obs.ndjson.gz"
    gz.write_bytes(gzip.compress(json.dumps(_obs("p1", id_="g1")).encode() + b"\n"))
    assert [i.resource["id"] for i in read_items(gz) if i.resource] == ["g1"]
    one = tmp_path / "one.json"
    one.write_text(json.dumps(_obs("p1", id_="s1")))
    assert [i.place for i in read_items(one)] == [0]
    junk = tmp_path / "junk.json"
    junk.write_text("not json at all")
    with pytest.raises(InvalidInputError, match="neither NDJSON nor a JSON Bundle"):
        list(read_items(junk))
    with pytest.raises(InvalidInputError, match="chunk"):
        Importer([one], Gateway(), state_dir=tmp_path / "s", chunk=0)
    state = tmp_path / "s2"
    Importer([one], Gateway(), state_dir=state).run()
    next(state.glob("*[0-9a-f].json")).write_text("{broken")
    with pytest.raises(InvalidInputError, match="--restart"):
        Importer([one], Gateway(), state_dir=state)


class SlowGateway(Gateway):
    """A :class:`Gateway` whose calls take ``delay(n)`` seconds (n: the call's number), and
    which records which calls overlapped."""

    def __init__(self, delay: Any, fail_on: int | None = None) -> None:
        super().__init__(fail_on)
        self.delay = delay
        self.lock = threading.Lock()
        self.calls = 0
        self.running: set[int] = set()
        self.most = 0  # calls running at once, at most
        self.overlaps: set[frozenset[int]] = set()
        self.firsts: list[str] = []  # the first resource id of each call, in call order

    def __call__(self, bundle: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            n = self.calls
            self.calls += 1
            self.firsts.append(bundle["entry"][0]["resource"]["id"])
            for other in self.running:
                self.overlaps.add(frozenset((n, other)))
            self.running.add(n)
            self.most = max(self.most, len(self.running))
        try:
            time.sleep(self.delay(n))
            if self.fail_on == n:
                raise InvalidInputError("gateway away")
            with self.lock:
                self.bundles.append(bundle)
            return Gateway.__call__(Gateway(), bundle)
        finally:
            with self.lock:
                self.running.discard(n)


def test_independent_chunks_are_in_flight_together_and_settled_in_order(tmp_path: Path) -> None:
    lines: list[Any] = [{"resourceType": "Patient", "id": "p1"}]
    lines += [_obs("p1", id_=f"o{i}", status="bad" if i == 1 else "final") for i in range(8)]
    src = _ndjson(tmp_path / "a.ndjson", lines)
    # one compartment cut in chunks: [p1, o0] [o1, o2] [o3, o4] [o5, o6] [o7]; chunk 1 is
    # slow, chunk 2 fast
    gw = SlowGateway(lambda n: {1: 0.3}.get(n, 0.05))
    seen: list[int] = []
    s = Importer([src], gw, state_dir=tmp_path / "s", chunk=2, parallel=2).run(seen.append)
    assert (s.imported, s.failed, s.done) == (8, 1, 9)
    assert seen == [2, 2, 2, 2, 1]
    # chunk 0 holds the Patient the others name: nothing overlaps it; the rest pair up
    assert not any(0 in pair for pair in gw.overlaps)
    assert frozenset((1, 2)) in gw.overlaps
    # chunk 2 answered first: chunk 3 went out while the slow chunk 1 was still working,
    # but never more than two at once
    assert frozenset((1, 3)) in gw.overlaps
    assert gw.most == 2
    report = [json.loads(x) for x in Path(s.report).read_text().splitlines()]
    assert [r["id"] for r in report] == ["o1"]


def test_compartments_travel_whole_and_their_chunks_do_not_wait_for_each_other(
    tmp_path: Path,
) -> None:
    """A bulk-data export: Patients in one file, Observations of all of them interleaved in
    another, gzipped. Each chunk holds whole compartments, so all are in flight at once."""
    patients = _ndjson(tmp_path / "Patient.ndjson", [
        {"resourceType": "Patient", "id": f"p{i}"} for i in range(3)])  # fmt: skip
    obs = tmp_path / "Observation.ndjson.gz"
    obs.write_bytes(gzip.compress("".join(
        json.dumps(_obs(f"p{i % 3}", id_=f"o{i}")) + "\n" for i in range(6)).encode()))  # fmt: skip
    gw = SlowGateway(lambda n: 0.2)
    state = tmp_path / "s"
    imp = Importer([obs, patients], gw, state_dir=state, chunk=3, parallel=3)
    assert imp.count() == 9
    assert len(list(state.glob("*.unpacked.ndjson"))) == 1  # read back from an unpacked copy
    s = imp.run()
    assert (s.imported, s.failed) == (9, 0)
    chunks = sorted([e["resource"]["id"] for e in b["entry"]] for b in gw.bundles)
    assert chunks == [["p0", "o0", "o3"], ["p1", "o1", "o4"], ["p2", "o2", "o5"]]
    assert gw.most == 3  # none waited for another
    assert not list(state.glob("*.unpacked.ndjson"))  # removed at the end

    # a compartment larger than a chunk is cut; the one after it starts a chunk of its own
    # when it fits in one, and the rest of the large one waits for the part with its
    # Patient while the next compartment goes ahead
    big = _ndjson(tmp_path / "big.ndjson", [
        {"resourceType": "Patient", "id": "a"}, *[_obs("a", id_=f"a{i}") for i in range(4)],
        {"resourceType": "Patient", "id": "b"}, _obs("b", id_="b0"), _obs("b", id_="b1"),
    ])  # fmt: skip
    gw = SlowGateway(lambda n: 0.1)
    Importer([big], gw, state_dir=tmp_path / "s2", chunk=3, parallel=3).run()
    sent = [[e["resource"]["id"] for e in b["entry"]] for b in gw.bundles]
    assert sorted(sent) == [["a", "a0", "a1"], ["a2", "a3"], ["b", "b0", "b1"]]
    assert gw.firsts == ["a", "b", "a2"] and frozenset((0, 1)) in gw.overlaps
    assert not any(0 in pair and 2 in pair for pair in gw.overlaps)


def test_a_later_version_of_a_resource_waits_for_the_earlier_one(tmp_path: Path) -> None:
    """The same id twice in the input (two versions, no Patient named): the chunk with the
    second waits until the one with the first is answered, so they are written in order."""
    first = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "preliminary",
        "code": {"text": "x"},
    }
    src = _ndjson(tmp_path / "a.ndjson", [
        first, {**first, "id": "o2"}, {**first, "status": "final"}])  # fmt: skip
    gw = SlowGateway(lambda n: 0.1)
    s = Importer([src], gw, state_dir=tmp_path / "s", chunk=2, parallel=2).run()
    assert s.imported == 3 and gw.firsts == ["o1", "o1"]
    assert gw.overlaps == set()
    assert [r["status"] for r in gw.sent()] == ["preliminary", "preliminary", "final"]


def test_an_input_changed_after_it_was_read_is_refused(tmp_path: Path) -> None:
    src = _ndjson(tmp_path / "a.ndjson", [_obs("p1", id_=f"o{i}") for i in range(4)])
    imp = Importer([src], Gateway(), state_dir=tmp_path / "s", chunk=2)
    assert imp.count() == 4
    _ndjson(src, [_obs("p1", id_="o0")])
    with pytest.raises(InvalidInputError, match="changed during the import"):
        imp.run()


def test_a_chunk_answered_early_is_not_counted_before_the_one_before_it(tmp_path: Path) -> None:
    src = _ndjson(tmp_path / "a.ndjson", [_obs("p1", id_=f"o{i}") for i in range(6)])
    state = tmp_path / "state"
    # chunk 0 is slow and then fails; chunk 1 is answered meanwhile
    gw = SlowGateway(lambda n: 0.3 if n == 0 else 0.0, fail_on=0)
    imp = Importer([src], gw, state_dir=state, chunk=2, parallel=2)
    with pytest.raises(InvalidInputError):
        imp.run()
    assert frozenset((0, 1)) in gw.overlaps
    assert imp.summary.done == 0  # chunk 1's answer came, but chunk 0 had none
    again = Importer([src], Gateway(), state_dir=state, chunk=2)
    assert again.summary.resumed_at == 0
    assert again.run().imported == 6


def test_one_chunk_at_a_time_when_asked(tmp_path: Path) -> None:
    src = _ndjson(tmp_path / "a.ndjson", [_obs("p1", id_=f"o{i}") for i in range(6)])
    gw = SlowGateway(lambda n: 0.05)
    s = Importer([src], gw, state_dir=tmp_path / "s", chunk=2, parallel=1).run()
    assert s.imported == 6 and gw.calls == 3
    assert gw.overlaps == set()
    with pytest.raises(InvalidInputError, match="in flight"):
        Importer([src], gw, state_dir=tmp_path / "s", parallel=0)


def test_the_cli_defaults_are_the_importers() -> None:
    """`medmesh fhir import` spells its defaults out (importing the importer would load the
    FHIR models at every CLI start): they must stay the importer's."""
    import inspect

    from medmesh.cli.fhir import import_
    from medmesh.interop.fhir.importer import DEFAULT_CHUNK, DEFAULT_PARALLEL

    params = inspect.signature(import_).parameters
    assert params["parallel"].default == DEFAULT_PARALLEL
    assert params["chunk"].default == DEFAULT_CHUNK
