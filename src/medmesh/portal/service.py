"""What the portal works with: the gateway it is mounted on, its ledger index, the home folder
(demo users, storage nodes) and, per signed-in user, a ledger client and record keeper that
sign with that user's own wallet.

Plaintext is produced in one place, :meth:`Portal.open_record`: it fetches a record's
ciphertext through the gateway (verified against its CID) and opens it with the signed-in
user's own keys (the capsule in the record's header, or the one their grant's capsule block
holds). Callers decide *whether* it may be opened: the owner's own records, or an
:class:`~medmesh.consent.gateway.Access` the gateway allowed (and logged) just before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from medmesh.config import Home
from medmesh.consent.gateway import Access, Gateway
from medmesh.consent.sharing import RecordKeeper
from medmesh.crypto.capsule import KeyCapsule
from medmesh.crypto.envelope import NoCapsuleError, RecordOpener
from medmesh.errors import MedmeshError
from medmesh.identity import Wallet
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Role
from medmesh.ledger.indexer import Indexer, RecordRow, participants_t
from medmesh.portal.auth import DemoUser, PortalSession, PortalSessions, load_demo_users
from medmesh.portal.volume import VolumeLog
from medmesh.storage.cid import Cid

__all__ = ["KeystoreRequiredError", "Participant", "Portal", "UserTools"]


class KeystoreRequiredError(MedmeshError):
    """The action needs the user's keys, and this session holds none (a browser wallet)."""

    code = "keystore_required"


@dataclass(frozen=True)
class Participant:
    """A registered account, named when the demo population knows it."""

    address: str
    roles: Role
    name: str | None

    @property
    def label(self) -> str:
        return self.name or self.address

    @property
    def is_institution(self) -> bool:
        return bool(self.roles & (Role.PROVIDER | Role.RESEARCHER))


@dataclass
class UserTools:
    """A signed-in user's own ledger client and record keeper (their wallet signs)."""

    ledger: Ledger
    keeper: RecordKeeper


class Portal:
    """The portal's services, over ``gateway`` (and ``home``: its demo users and nodes)."""

    def __init__(
        self,
        gateway: Gateway,
        home: Home | Path | str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = gateway
        self.home = home if isinstance(home, Home) else Home(Path(home))
        self.indexer: Indexer = gateway.indexer
        self.clock = clock
        self.sessions = PortalSessions(gateway.sessions, gateway.uri, clock=clock)
        #: stored volume over time (sampled by the gateway: :mod:`medmesh.portal.volume`)
        self.volume = VolumeLog(self.home.path / "portal.db", clock=clock)
        self._users: tuple[float | None, list[DemoUser]] = (None, [])

    # -- who is who ---------------------------------------------------------------------------

    @property
    def demo_users(self) -> list[DemoUser]:
        """The local demo population (empty outside local mode), read again whenever its file
        changes: `medmesh up` seeds it after the gateway has started."""
        try:
            stamp: float | None = (self.home.path / "synth" / "population.json").stat().st_mtime
        except OSError:
            stamp = None
        if stamp != self._users[0]:
            self._users = (stamp, load_demo_users(self.home.path) if stamp is not None else [])
        return self._users[1]

    def demo_user(self, name: str) -> DemoUser | None:
        return next((u for u in self.demo_users if u.name == name), None)

    def name_of(self, address: str) -> str | None:
        lowered = address.lower()
        return next((u.name for u in self.demo_users if u.address.lower() == lowered), None)

    def roles_of(self, address: str) -> Role:
        found = self.indexer.participant(address)
        return found[0] if found is not None else Role(0)

    def institutions(self) -> list[Participant]:
        """Registered providers and labs (who a patient may grant access to)."""
        with self.indexer.engine.connect() as conn:
            rows = conn.execute(sa.select(participants_t.c.account, participants_t.c.roles)).all()
        out = []
        for account, roles in rows:
            p = Participant(str(account), Role(int(roles)), self.name_of(str(account)))
            if p.is_institution:
                out.append(p)
        return sorted(out, key=lambda p: (p.name is None, p.name or "", p.address))

    # -- a user's own tools -------------------------------------------------------------------

    def tools(self, session: PortalSession) -> UserTools:
        """The user's ledger client and keeper (made once per session; needs the wallet)."""
        if session.wallet is None:
            raise KeystoreRequiredError(
                "this session has no unlocked keystore (signed in with a browser wallet): "
                "sign in with your keystore to open records or change consents"
            )
        if session.tools is None:
            session.tools = self._make_tools(session.wallet)
        tools: UserTools = session.tools
        return tools

    def _make_tools(self, wallet: Wallet) -> UserTools:
        from medmesh.ledger.local import rpc_url_of
        from medmesh.storage.backends import open_store
        from medmesh.storage.client import Client
        from medmesh.storage.uploader import StoreParams

        cfg = self.home.load_config()
        try:
            url, durable = rpc_url_of(self.home)
        except Exception:  # the gateway's ledger is where it is: use its endpoint
            url, durable = self.gateway.ledger.rpc.url, None
        ledger = Ledger(url, self.gateway.ledger.book, signer=wallet, durable=durable)
        params = StoreParams(k=cfg.k, n=cfg.n)
        store = open_store(cfg.backend, nodes=self.home.node_urls(), signer=wallet, params=params)
        return UserTools(ledger, RecordKeeper(wallet, ledger, self.indexer, Client(store, wallet)))

    # -- opening records ----------------------------------------------------------------------

    def own_access(self, row: RecordRow) -> Access:
        """Access to the owner's own record (no grant needed: it is theirs)."""
        return Access(
            row.patient, row.record, row.patient, row.kind, Cid.from_bytes(row.cid),
            Purpose.TREATMENT,
        )  # fmt: skip

    async def open_record(self, access: Access, wallet: Wallet) -> bytes:
        """The plaintext of an allowed record, opened with ``wallet``'s keys."""
        data = b"".join([piece async for piece in self.gateway.ciphertext(access)])
        try:
            return _open(data, wallet, [])
        except NoCapsuleError:
            capsule = await self.gateway.capsule_for(access)
            if not capsule:
                raise
            return _open(data, wallet, [KeyCapsule.from_bytes(capsule)])


def _open(data: bytes, wallet: Wallet, extra: list[KeyCapsule]) -> bytes:
    opener = RecordOpener(wallet.encryption_keys, extra)
    return opener.update(data) + opener.finalize()
