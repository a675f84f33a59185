"""A ledger stand-in for the consent services: the real Consent ABI, no chain."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from medmesh.ledger import artifacts
from medmesh.ledger.contracts import ConsentContract
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import Call, Receipt

CONSENT_ADDRESS = "0x" + "c0" * 20


class FakeRpc(Rpc):
    """Answers every batch with ``answer(method, params)`` and remembers the batches."""

    def __init__(self, answer: Callable[[str, list[Any]], Any]) -> None:
        super().__init__("http://127.0.0.1:9")  # never contacted
        self.answer = answer
        self.batches: list[list[tuple[str, list[Any]]]] = []

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        self.batches.append(list(calls))
        return [self.answer(method, params) for method, params in calls]


class FakeLedger:
    """``consent`` is the real wrapper; ``transact_many`` records the calls it is given."""

    chain_id = 31337

    def __init__(self, rpc: Rpc | None = None) -> None:
        self.rpc = rpc or FakeRpc(lambda method, params: None)
        self.consent = ConsentContract(artifacts.load_all()["Consent"], CONSENT_ADDRESS, self.rpc)
        self.sent: list[list[Call]] = []
        self.before_send: Callable[[], None] | None = None
        self.fail: Exception | None = None

    def transact_many(self, calls: Sequence[Call], *, timeout: float = 60.0) -> list[Receipt]:
        if self.before_send is not None:
            hook, self.before_send = self.before_send, None
            hook()
        if self.fail is not None:
            raise self.fail
        self.sent.append(list(calls))
        return []
