"""The portal's routes, mounted on the consent gateway's application under ``/portal/``.

    GET  /                                         → 303 /portal/
    GET  /portal/                                  → the signed-in user's home, else sign-in
    GET  /portal/signin                            sign-in page (demo users in local mode)
    GET  /portal/signin/wallet/message?address=    a SIWE message to sign (browser wallet)
    POST /portal/signin                            user + passphrase: keystore SIWE sign-in
    POST /portal/signin/wallet                     message + signature from a browser wallet
    POST /portal/signout
    GET  /portal/patient                           the user's records, newest first
    GET  /portal/patient/records/{record}          one record
    GET  /portal/patient/consents                  who can see what; the grant form
    POST /portal/patient/consents                  grant
    GET  /portal/patient/consents/revoke           confirm a revocation
    POST /portal/patient/consents/revoke           revoke
    GET  /portal/patient/audit                     who accessed what, allowed or refused
    GET  /portal/patient/upload                    upload form
    POST /portal/patient/upload                    store a FHIR resource / Bundle or a file
    GET  /portal/patient/export                    a FHIR Bundle of the user's resources
    GET  /portal/provider                          patients who granted the user access
    GET  /portal/provider/patients/{patient}       their records (consent-checked, logged)
    GET  /portal/provider/patients/{patient}/records/{record}
    POST /portal/provider/patients/{patient}/records   add a record for the patient
    GET  /portal/network                           nodes, chain, consent events, chart
    GET  /portal/network/status                    nodes and chain as JSON (the page's script)
    GET  /portal/status                            {"gateway": "up"} while the gateway runs
    GET  /portal/static/…                          stylesheet and scripts (wallet sign-in, live)

Pages are rendered on the server with Jinja2 (autoescaped). Every response under
``/portal`` has a ``Server-Timing`` header (``app;dur=<ms>``). Errors are pages with a fixed,
PHI-free text and the right status (400, 401, 403, 404, 502); a bug answers 500 and logs the
exception's type only. State-changing forms carry the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from html import escape
from pathlib import Path
from typing import Annotated, Any, Final

import jinja2
from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medmesh.consent.gateway import parse_purpose, parse_record_id
from medmesh.errors import (
    AuthError,
    ConsentError,
    InvalidInputError,
    KeystoreError,
    MedmeshError,
    NotFoundError,
)
from medmesh.identity import WrongPassphraseError
from medmesh.interop.fhir.outcome import FhirError
from medmesh.ledger.contracts import Purpose, Role
from medmesh.ledger.events import checksum
from medmesh.portal import network as network_page
from medmesh.portal import patient as patient_page
from medmesh.portal import provider as provider_page
from medmesh.portal.auth import COOKIE, PortalSession, message_for
from medmesh.portal.labels import DURATIONS, PURPOSES, short_address
from medmesh.portal.service import KeystoreRequiredError, Portal

__all__ = ["PORTAL_PATH", "ServerTiming", "mount_portal"]

log = logging.getLogger(__name__)

PORTAL_PATH: Final = "/portal"
_HERE = Path(__file__).parent
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_DONE: Final = {
    "granted": "Access granted.",
    "revoked": "Access revoked. The gateway refuses it from the next block on.",
    "signed_out": "You are signed out.",
}


class CsrfError(MedmeshError):
    """A state-changing form without this session's token."""

    code = "csrf"


class ServerTiming:
    """ASGI middleware: a ``Server-Timing: app;dur=<ms>`` header on every portal response
    (time from the request to the response's start: the page is rendered by then)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PORTAL_PATH):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000
                headers = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={ms:.1f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = short_address
    env.filters["size"] = network_page.size_text
    return env


Handler = Callable[..., Awaitable[Response]]


def mount_portal(app: FastAPI, portal: Portal) -> None:
    """Serve the portal on ``app`` (the gateway's application) under ``/portal/``."""
    env = _environment()
    router = APIRouter(prefix=PORTAL_PATH)

    def render(
        request: Request,
        template: str,
        *,
        session: PortalSession | None = None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        institution = bool(
            session is not None
            and portal.roles_of(session.address) & (Role.PROVIDER | Role.RESEARCHER)
        )
        context.setdefault("active", "")
        html = env.get_template(template).render(
            user=session,
            user_label=(session.name or short_address(session.address)) if session else "",
            institution=institution,
            csrf=session.csrf if session else "",
            done=_DONE.get(request.query_params.get("done", ""), ""),
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def problem(
        request: Request,
        status: int,
        title: str,
        message: str,
        session: PortalSession | None = None,
        *,
        sign_in: bool = False,
    ) -> HTMLResponse:
        try:
            response = render(
                request, "error.html", session=session, status=status,
                title=title, message=message, sign_in=sign_in,
            )  # fmt: skip
        except Exception as exc:  # the error page itself failed: plain text, no details
            log.error("portal error page failed: %s", type(exc).__name__)
            response = HTMLResponse(
                f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1>",
                status_code=status,
                headers=_HEADERS,
            )
        if sign_in:
            response.delete_cookie(COOKIE, path=PORTAL_PATH)
        return response

    def handled(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await fn(request, *args, **kwargs)
            except CsrfError as exc:
                return problem(request, 403, "This form has expired", exc.message)
            except AuthError as exc:
                return problem(request, 401, "Please sign in", exc.message, sign_in=True)
            except KeystoreRequiredError as exc:
                return problem(
                    request, 403, "Your keystore is needed", exc.message, _maybe(request)
                )
            except ConsentError as exc:
                return problem(request, 403, "Access refused", exc.message, _maybe(request))
            except NotFoundError as exc:
                return problem(request, 404, "Not found", exc.message, _maybe(request))
            except (InvalidInputError, FhirError) as exc:
                return problem(request, 400, "That did not work", exc.message, _maybe(request))
            except MedmeshError as exc:  # the ledger or storage: messages are PHI-free
                log.warning("portal %s failed: %s", fn.__name__, exc.code)
                return problem(
                    request, 502, "The network did not answer", exc.message, _maybe(request)
                )
            except Exception as exc:  # a bug: log its type only (no PHI in logs)
                log.error("portal %s failed: %s", fn.__name__, type(exc).__name__)
                return problem(
                    request, 500, "Something went wrong", "The portal could not show this page."
                )

        return wrapper

    def _maybe(request: Request) -> PortalSession | None:
        try:
            return portal.sessions.resolve(request.cookies.get(COOKIE))
        except AuthError:
            return None

    def current(request: Request) -> PortalSession:
        return portal.sessions.resolve(request.cookies.get(COOKIE))

    def checked(request: Request, csrf: str) -> PortalSession:
        session = current(request)
        try:
            portal.sessions.check_csrf(session, csrf)
        except AuthError as exc:
            raise CsrfError(exc.message) from None
        return session

    def see_other(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})

    def start(request: Request, token: str, session: PortalSession) -> RedirectResponse:
        response = see_other(f"{PORTAL_PATH}/")
        response.set_cookie(
            COOKIE,
            token,
            max_age=max(int(session.expires_at - portal.clock()), 1),
            path=PORTAL_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # -- sign-in ---------------------------------------------------------------------------

    def signin_page(
        request: Request, *, status: int = 200, error: str = "", chosen: str = ""
    ) -> HTMLResponse:
        return render(
            request, "signin.html", status=status, title="Sign in",
            users=portal.demo_users, error=error, chosen=chosen,
            domain=portal.gateway.domain, uri=portal.gateway.uri,
            chain_id=portal.gateway.ledger.chain_id,
        )  # fmt: skip

    @router.get("/", response_class=HTMLResponse)
    @handled
    async def home(request: Request) -> Response:
        session = _maybe(request)
        if session is None:
            return see_other(f"{PORTAL_PATH}/signin")
        roles = await asyncio.to_thread(portal.roles_of, session.address)
        if roles & (Role.PROVIDER | Role.RESEARCHER):
            return see_other(f"{PORTAL_PATH}/provider")
        return see_other(f"{PORTAL_PATH}/patient")

    @router.get("/signin", response_class=HTMLResponse)
    @handled
    async def signin(request: Request) -> Response:
        return signin_page(request)

    @router.post("/signin", response_class=HTMLResponse)
    @handled
    async def signin_keystore(
        request: Request,
        user: Annotated[str, Form()] = "",
        passphrase: Annotated[str, Form()] = "",
    ) -> Response:
        who = portal.demo_user(user)
        if who is None:
            return signin_page(request, status=400, error="Choose who you are from the list.")
        try:
            token, session = await asyncio.to_thread(
                portal.sessions.with_keystore, who.keystore, passphrase, name=who.name
            )
        except WrongPassphraseError:
            return signin_page(
                request, status=401, chosen=who.name,
                error="That passphrase does not unlock this keystore. Nothing was signed.",
            )  # fmt: skip
        except (KeystoreError, AuthError) as exc:
            return signin_page(request, status=401, chosen=who.name, error=exc.message)
        return start(request, token, session)

    @router.get("/signin/wallet/message")
    @handled
    async def wallet_message(request: Request, address: str = "") -> Response:
        try:
            text = message_for(
                address, portal.gateway.sessions, portal.gateway.uri, now=portal.clock()
            )
        except InvalidInputError as exc:
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=400)
        return JSONResponse({"message": text}, headers={"Cache-Control": "no-store"})

    @router.post("/signin/wallet", response_class=HTMLResponse)
    @handled
    async def signin_wallet(
        request: Request,
        message: Annotated[str, Form()] = "",
        signature: Annotated[str, Form()] = "",
    ) -> Response:
        try:
            token, session = portal.sessions.with_signature(
                message.replace("\r\n", "\n"), signature.strip()
            )
        except (AuthError, InvalidInputError) as exc:
            return signin_page(request, status=401, error=f"Sign-in refused: {exc.message}.")
        return start(request, token, session)

    @router.post("/signout")
    @handled
    async def signout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        session = _maybe(request)
        if session is not None:
            checked(request, csrf)
            portal.sessions.end(request.cookies.get(COOKIE))
        response = see_other(f"{PORTAL_PATH}/signin?done=signed_out")
        response.delete_cookie(COOKIE, path=PORTAL_PATH)
        return response

    # -- patient -------------------------------------------------------------------------------

    @router.get("/patient", response_class=HTMLResponse)
    @handled
    async def patient_records(request: Request) -> Response:
        session = current(request)
        items = await patient_page.timeline(portal, session)
        return render(request, "patient.html", session=session, title="My records",
                      active="records", items=items)  # fmt: skip

    @router.get("/patient/records/{record}", response_class=HTMLResponse)
    @handled
    async def patient_record(request: Request, record: str) -> Response:
        session = current(request)
        item = await patient_page.one_record(portal, session, parse_record_id(record))
        return render(request, "record.html", session=session, title=item.view.title if item.view else "Record",
                      active="records", item=item, back=f"{PORTAL_PATH}/patient",
                      share=True)  # fmt: skip

    async def consents_page(
        request: Request, session: PortalSession, *, status: int = 200, error: str = ""
    ) -> HTMLResponse:
        items = await patient_page.timeline(portal, session)
        consents = await asyncio.to_thread(patient_page.consents, portal, session.address)
        institutions = await asyncio.to_thread(portal.institutions)
        scopes = patient_page.scope_choices(items)
        chosen_scope = request.query_params.get("scope", "all")
        record_scopes = [
            (
                f"record:{i.cid}",
                f"This record only: {i.view.title if i.view else i.kind} ({i.kind})",
            )
            for i in items
            if f"record:{i.cid}" == chosen_scope
        ]
        return render(
            request, "consents.html", session=session, status=status, title="Who can see my records",
            active="consents", consents=consents, institutions=institutions,
            scopes=scopes + record_scopes, chosen_scope=chosen_scope,
            purposes=[p for p in PURPOSES if p != "emergency"], durations=DURATIONS, error=error,
        )  # fmt: skip

    @router.get("/patient/consents", response_class=HTMLResponse)
    @handled
    async def consents(request: Request) -> Response:
        return await consents_page(request, current(request))

    @router.post("/patient/consents", response_class=HTMLResponse)
    @handled
    async def grant(
        request: Request,
        csrf: Annotated[str, Form()] = "",
        grantee: Annotated[str, Form()] = "",
        scope: Annotated[str, Form()] = "",
        purpose: Annotated[str, Form()] = "",
        duration: Annotated[str, Form()] = "",
    ) -> Response:
        session = checked(request, csrf)
        try:
            await asyncio.to_thread(
                patient_page.grant, portal, session,
                grantee=grantee, scope=scope, purpose=purpose, duration=duration,
            )  # fmt: skip
        except InvalidInputError as exc:
            return await consents_page(request, session, status=400, error=exc.message)
        return see_other(f"{PORTAL_PATH}/patient/consents?done=granted")

    @router.get("/patient/consents/revoke", response_class=HTMLResponse)
    @handled
    async def revoke_confirm(request: Request, grantee: str = "", scope: str = "") -> Response:
        session = current(request)
        consents = await asyncio.to_thread(patient_page.consents, portal, session.address)
        consent = next((c for c in consents if c.grantee == grantee and c.scope == scope), None)
        if consent is None:
            raise NotFoundError("no such current consent of yours")
        return render(request, "revoke.html", session=session, title="Revoke access",
                      active="consents", consent=consent)  # fmt: skip

    @router.post("/patient/consents/revoke", response_class=HTMLResponse)
    @handled
    async def revoke(
        request: Request,
        csrf: Annotated[str, Form()] = "",
        grantee: Annotated[str, Form()] = "",
        scope: Annotated[str, Form()] = "",
    ) -> Response:
        session = checked(request, csrf)
        await asyncio.to_thread(patient_page.revoke, portal, session, grantee=grantee, scope=scope)
        return see_other(f"{PORTAL_PATH}/patient/consents?done=revoked")

    @router.get("/patient/audit", response_class=HTMLResponse)
    @handled
    async def audit(request: Request) -> Response:
        session = current(request)
        rows = await asyncio.to_thread(patient_page.audit, portal, session.address)
        return render(request, "audit.html", session=session, title="Who accessed my records",
                      active="audit", rows=rows)  # fmt: skip

    @router.get("/patient/upload", response_class=HTMLResponse)
    @handled
    async def upload_form(request: Request) -> Response:
        session = current(request)
        return render(request, "upload.html", session=session, title="Add a record",
                      active="upload", issues=[], error="", stored=0)  # fmt: skip

    @router.post("/patient/upload", response_class=HTMLResponse)
    @handled
    async def upload(
        request: Request,
        csrf: Annotated[str, Form()] = "",
        file: Annotated[UploadFile | None, File()] = None,
    ) -> Response:
        session = checked(request, csrf)
        data = await file.read(patient_page.MAX_UPLOAD + 1) if file is not None else b""
        name = (file.filename or "") if file is not None else ""
        try:
            items = patient_page.parse_upload(data, name)
        except patient_page.UploadRefused as exc:
            return render(request, "upload.html", session=session, status=422,
                          title="Add a record", active="upload", issues=exc.issues,
                          error="This is not valid FHIR. Nothing was stored.", stored=0)  # fmt: skip
        except InvalidInputError as exc:
            return render(request, "upload.html", session=session, status=400,
                          title="Add a record", active="upload", issues=[], error=exc.message,
                          stored=0)  # fmt: skip
        stored = await asyncio.to_thread(patient_page.store_upload, portal, session, items)
        return render(request, "upload.html", session=session, title="Add a record",
                      active="upload", issues=[], error="", stored=stored)  # fmt: skip

    @router.get("/patient/export")
    @handled
    async def export(request: Request) -> Response:
        session = current(request)
        bundle = await patient_page.export_bundle(portal, session)
        return Response(
            json.dumps(bundle, indent=2, ensure_ascii=False),
            media_type="application/fhir+json",
            headers={
                **_HEADERS,
                "Content-Disposition": 'attachment; filename="my-records.json"',
            },
        )

    # -- provider ------------------------------------------------------------------------------

    def purpose_of(request: Request) -> Purpose:
        return parse_purpose(request.query_params.get("purpose", "treatment"))

    @router.get("/provider", response_class=HTMLResponse)
    @handled
    async def provider(request: Request) -> Response:
        session = current(request)
        links = await asyncio.to_thread(provider_page.patients, portal, session.address)
        return render(request, "provider.html", session=session, title="My patients",
                      active="provider", links=links,
                      read_purposes=provider_page.read_purposes)  # fmt: skip

    @router.get("/provider/patients/{patient}", response_class=HTMLResponse)
    @handled
    async def provider_patient(request: Request, patient: str) -> Response:
        session = current(request)
        address = _address(patient)
        purpose = purpose_of(request)
        items = await provider_page.patient_records(portal, session, address, purpose)
        return render(
            request, "provider_patient.html", session=session,
            title=f"Records of {portal.name_of(address) or address}", active="provider",
            patient=address, patient_label=portal.name_of(address) or address, items=items,
            purpose=purpose.names(), stored=0, issues=[], error="",
        )  # fmt: skip

    @router.get("/provider/patients/{patient}/records/{record}", response_class=HTMLResponse)
    @handled
    async def provider_record(request: Request, patient: str, record: str) -> Response:
        session = current(request)
        address = _address(patient)
        purpose = purpose_of(request)
        item = await provider_page.provider_record(
            portal, session, address, parse_record_id(record), purpose
        )
        return render(
            request, "record.html", session=session,
            title=item.view.title if item.view else "Record", active="provider", item=item,
            back=f"{PORTAL_PATH}/provider/patients/{address}?purpose={purpose.names()}",
            share=False,
        )  # fmt: skip

    @router.post("/provider/patients/{patient}/records", response_class=HTMLResponse)
    @handled
    async def provider_add(
        request: Request,
        patient: str,
        csrf: Annotated[str, Form()] = "",
        resource: Annotated[str, Form()] = "",
    ) -> Response:
        session = checked(request, csrf)
        address = _address(patient)
        try:
            stored = await asyncio.to_thread(
                provider_page.add_record, portal, session, address, resource.encode()
            )
        except patient_page.UploadRefused as exc:
            return render(
                request, "provider_add.html", session=session, status=422,
                title="Add a record", active="provider", patient=address,
                patient_label=portal.name_of(address) or address, issues=exc.issues,
                error="This is not valid FHIR. Nothing was stored.", stored=0,
            )  # fmt: skip
        return render(
            request, "provider_add.html", session=session, title="Add a record",
            active="provider", patient=address, patient_label=portal.name_of(address) or address,
            issues=[], error="", stored=stored,
        )  # fmt: skip

    # -- network -------------------------------------------------------------------------------

    @router.get("/network", response_class=HTMLResponse)
    @handled
    async def network(request: Request) -> Response:
        view = await network_page.network(portal)
        return render(request, "network.html", session=_maybe(request), title="Network",
                      active="network", view=view)  # fmt: skip

    @router.get("/status")
    async def alive() -> JSONResponse:
        """Answered while the gateway runs: every page's script polls it (``live.js``)."""
        return JSONResponse({"gateway": "up"}, headers=_HEADERS)

    @router.get("/network/status")
    async def network_status() -> JSONResponse:
        """Nodes and chain as the network page shows them, for its script to keep current."""
        return JSONResponse(await network_page.status(portal), headers=_HEADERS)

    app.add_middleware(ServerTiming)
    app.mount(
        f"{PORTAL_PATH}/static", StaticFiles(directory=_HERE / "static"), name="portal-static"
    )
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PORTAL_PATH}/", status_code=303)

    @app.get(PORTAL_PATH, include_in_schema=False)
    async def portal_root() -> RedirectResponse:
        return RedirectResponse(f"{PORTAL_PATH}/", status_code=303)


def _address(text: str) -> str:
    try:
        return checksum(text)
    except ValueError:
        raise NotFoundError("no such patient") from None
