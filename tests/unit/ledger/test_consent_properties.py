"""Property tests for Consent: ``has_access`` always agrees with a plain-Python model of the rules.

The spec's property: grant, revoke and expiry in any order never yield access that the last
valid grant does not allow (and, conversely, never withhold access that it does allow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import boa
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.unit.ledger.world import (
    ALL,
    IMAGING,
    OBSERVATION,
    ZERO32,
    Purpose,
    Role,
    World,
    kind_scope,
)

T, R = Purpose.TREATMENT, Purpose.RESEARCH
KINDS = (OBSERVATION, IMAGING)  # record i is of kind i
GRANTEES = st.integers(0, 2)
SCOPE_NAMES = st.sampled_from(("record0", "record1", "kind0", "kind1", "all"))
# Purposes a valid grant carries: the non-empty subsets of {T, R}. The flag arithmetic over
# all seven purposes is covered by test_purpose_flags_are_a_subset_check; two flags keep
# every check below cheap (each has_access call runs ~700 EVM opcodes).
PURPOSES = st.sampled_from([T, R, T | R])
SECONDS = st.sampled_from([1, 2, 30, 600])
# Requests checked after every step: with grants drawn from {T, R} these three answers are
# everything has_access can say about a (grantee, record) pair.
CHECKED_PURPOSES = (T, R, T | R)
# No explain phase: it traces every line py-evm runs, which turns a failure report into minutes.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)


@dataclass
class AccessModel:
    """The access rules as the spec states them, for one patient."""

    grants: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    registered: list[bool] = field(default_factory=lambda: [True, True, True])
    erased: list[bool] = field(default_factory=lambda: [False, False])

    def allows(self, grantee: int, record: int, purpose: int, now: int) -> bool:
        if self.erased[record] or not self.registered[grantee]:
            return False
        for scope in (f"record{record}", f"kind{record}", "all"):
            purposes, expiry = self.grants.get((grantee, scope), (0, 0))
            if expiry > now and purpose != 0 and purposes & purpose == purpose:
                return True
        return False


class ConsentMachine(RuleBasedStateMachine):
    """One patient, three grantees, two records of two kinds."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self._snapshot = boa.env.anchor()
        self._snapshot.__enter__()
        self.world = world
        self.patient = world.patient
        self.grantees = (world.provider, world.researcher, world.other_patient)
        self.roles = (Role.PROVIDER, Role.RESEARCHER, Role.PATIENT)
        self.records = tuple(
            world.anchor(world.patient, b"property-record-%d" % i, tag)
            for i, tag in enumerate(KINDS)
        )
        self.scopes = {
            "record0": self.records[0],
            "record1": self.records[1],
            "kind0": kind_scope(KINDS[0]),
            "kind1": kind_scope(KINDS[1]),
            "all": ALL,
        }
        self.model = AccessModel()

    def teardown(self) -> None:
        self._snapshot.__exit__(None, None, None)

    def _grant(self, grantee: int, scope: str, purposes: int, seconds: int) -> None:
        expiry = boa.env.timestamp + seconds
        args = (self.grantees[grantee], self.scopes[scope], purposes, expiry, ZERO32)
        with boa.env.prank(self.patient):
            if purposes == 0:
                with boa.reverts("consent: no purpose"):
                    self.world.consent.grant(*args)
            elif seconds <= 0:
                with boa.reverts("consent: expiry must be in the future"):
                    self.world.consent.grant(*args)
            else:
                self.world.consent.grant(*args)
                self.model.grants[grantee, scope] = (purposes, expiry)

    def _revoke(self, grantee: int, scope: str) -> None:
        with boa.env.prank(self.patient):
            if (grantee, scope) in self.model.grants:
                self.world.consent.revoke(self.grantees[grantee], self.scopes[scope])
                del self.model.grants[grantee, scope]
            else:
                with boa.reverts("consent: no such grant"):
                    self.world.consent.revoke(self.grantees[grantee], self.scopes[scope])

    def _stored(self, pick: int) -> tuple[int, str]:
        keys = sorted(self.model.grants)
        return keys[pick % len(keys)]

    @initialize(grants=st.lists(st.tuples(GRANTEES, SCOPE_NAMES, PURPOSES, SECONDS), max_size=4))
    def seed_grants(self, grants: list[tuple[int, str, int, int]]) -> None:
        """Start most runs with a few live grants, so revoke, expiry and expulsion bite."""
        for grant in grants:
            self._grant(*grant)

    @rule(grantee=GRANTEES, scope=SCOPE_NAMES, purposes=PURPOSES, seconds=SECONDS)
    def grant(self, grantee: int, scope: str, purposes: int, seconds: int) -> None:
        self._grant(grantee, scope, purposes, seconds)

    @rule(
        grantee=GRANTEES,
        scope=SCOPE_NAMES,
        bad=st.sampled_from([(0, 30), (T, 0), (R, -1), (0, 0)]),
    )
    def refused_grant(self, grantee: int, scope: str, bad: tuple[int, int]) -> None:
        """No purpose or an expiry not in the future: refused, and the old grant stands."""
        self._grant(grantee, scope, *bad)

    @precondition(lambda self: bool(self.model.grants))
    @rule(pick=st.integers(0, 14), purposes=PURPOSES, seconds=SECONDS)
    def regrant(self, pick: int, purposes: int, seconds: int) -> None:
        """Grant again under a key that holds a grant (live or expired): it must replace it."""
        self._grant(*self._stored(pick), purposes, seconds)

    @rule(grantee=GRANTEES, scope=SCOPE_NAMES)
    def revoke(self, grantee: int, scope: str) -> None:
        self._revoke(grantee, scope)

    @precondition(lambda self: bool(self.model.grants))
    @rule(pick=st.integers(0, 14))
    def revoke_a_grant(self, pick: int) -> None:
        self._revoke(*self._stored(pick))

    @rule(seconds=st.sampled_from([1, 2, 29, 30, 599, 600]))
    def wait(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    @precondition(lambda self: self._next_expiry() is not None)
    @rule(delta=st.sampled_from([-1, 0]))
    def wait_until_an_expiry(self, delta: int) -> None:
        """Jump to the next expiry of a stored grant (or one second before): the boundary."""
        expiry = self._next_expiry()
        assert expiry is not None
        if expiry + delta > boa.env.timestamp:
            boa.env.time_travel(seconds=expiry + delta - boa.env.timestamp)

    def _next_expiry(self) -> int | None:
        now = boa.env.timestamp
        return min((e for _, e in self.model.grants.values() if e > now), default=None)

    @rule(grantee=GRANTEES)
    def expel_or_readmit(self, grantee: int) -> None:
        if self.model.registered[grantee]:
            self.world.registry.expel(self.grantees[grantee], self.roles[grantee])
        else:
            self.world.registry.admit(self.grantees[grantee], self.roles[grantee])
        self.model.registered[grantee] = not self.model.registered[grantee]

    @precondition(lambda self: not any(self.model.erased))
    @rule(record=st.integers(0, 1))
    def erase(self, record: int) -> None:
        with boa.env.prank(self.patient):
            self.world.records.erase(self.records[record])
        self.model.erased[record] = True

    @invariant()
    def has_access_matches_the_model(self) -> None:
        now = boa.env.timestamp
        for g, grantee in enumerate(self.grantees):
            for r, record in enumerate(self.records):
                for purpose in CHECKED_PURPOSES:
                    expected = self.model.allows(g, r, purpose, now)
                    got = self.world.consent.has_access(grantee, record, purpose)
                    assert got is expected, (g, r, purpose, now)


def test_has_access_matches_the_model_for_any_sequence(world: World) -> None:
    """Random grant / revoke / wait / expel / erase sequences, checked after every step."""
    run_state_machine_as_test(
        lambda: ConsentMachine(world),
        settings=settings(max_examples=50, stateful_step_count=10, deadline=None, phases=PHASES),
    )


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(granted=st.integers(1, 127), wanted=st.integers(0, 127))
def test_purpose_flags_are_a_subset_check(world: World, granted: int, wanted: int) -> None:
    """Over all seven purpose flags: access iff the request is non-empty and fully granted."""
    with boa.env.anchor():
        rid = world.anchor(world.patient, b"subset", OBSERVATION)
        world.grant(world.patient, world.provider, ALL, granted)
        expected = wanted != 0 and wanted & granted == wanted
        assert world.consent.has_access(world.provider, rid, wanted) is expected
        kind_access = world.consent.has_kind_access(world.patient, world.provider, IMAGING, wanted)
        assert kind_access is expected
