"""The FHIR service of a gateway: repository, index, token service and background sync, wired
onto the consent gateway's FastAPI application.

``medmesh gateway run --fhir`` builds one for the gateway's own wallet, which is then the
institution the FHIR API acts for (it needs the PROVIDER role to be granted records, and the
GATEWAY role to log accesses on chain, like any gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from fastapi import FastAPI

from medmesh import workers
from medmesh.consent.gateway import Gateway, create_app
from medmesh.consent.sharing import RecordKeeper
from medmesh.errors import MedmeshError
from medmesh.interop.fhir.api import mount_fhir
from medmesh.interop.fhir.index import FhirIndex
from medmesh.interop.fhir.repository import FhirRepository
from medmesh.interop.smart import TokenService
from medmesh.ledger.contracts import Role

__all__ = ["SYNC_INTERVAL_S", "FhirService", "create_fhir_app"]

SYNC_INTERVAL_S: Final = 1.0
log = logging.getLogger(__name__)


class FhirService:
    """The FHIR API of ``gateway``, acting for the wallet of ``keeper``."""

    def __init__(
        self,
        gateway: Gateway,
        keeper: RecordKeeper,
        index_path: Path | str,
        *,
        base_url: str,
        sync_interval: float = SYNC_INTERVAL_S,
    ) -> None:
        secret = keeper.wallet.encryption_keys[0].secret_bytes()
        self.gateway = gateway
        self.index = FhirIndex(index_path, secret)
        self.repo = FhirRepository(keeper, gateway, self.index)
        self.base_url = base_url.rstrip("/")
        self.sync_interval = sync_interval
        me = keeper.wallet.address
        registry = keeper.ledger.registry

        def authorized(address: str) -> bool:
            return bool(registry.roles(address) & (Role.PROVIDER | Role.RESEARCHER | Role.PATIENT))

        self.tokens = TokenService(
            f"{self.base_url}/auth/token", is_authorized=authorized, allowed_clients=[me]
        )

    def session_address(self, token: str) -> str | None:
        try:
            return self.gateway.sessions.resolve(token).address
        except MedmeshError:
            return None

    async def _follow(self) -> None:
        while True:
            try:
                await self.repo.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the ledger or storage is away: try again later
                log.warning("FHIR index sync failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(self.sync_interval)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(self._follow(), name="medmesh-fhir-sync")
        workers.warm()  # batches (imports) seal records in worker processes
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.index.close()

    def mount(self, app: FastAPI) -> None:
        from medmesh.interop.dicom.web import mount_dicomweb

        mount_fhir(
            app,
            self.repo,
            self.tokens,
            base_url=self.base_url,
            session_address=self.session_address,
        )
        mount_dicomweb(
            app,
            self.repo,
            self.tokens,
            fhir_base_url=self.base_url,
            session_address=self.session_address,
        )


def create_fhir_app(service: FhirService) -> FastAPI:
    """The gateway's application with the FHIR API mounted and its index following the ledger."""
    app = create_app(service.gateway, lifespan=service.lifespan)
    service.mount(app)
    return app
