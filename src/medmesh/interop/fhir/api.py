"""The FHIR R4 REST API (base ``/fhir``), mounted on the consent gateway.

    GET  /fhir/metadata                              CapabilityStatement
    GET  /fhir/.well-known/smart-configuration       SMART backend-services discovery
    POST /fhir/auth/token                            client_credentials + ES256K JWT assertion
    POST /fhir                                       transaction/batch Bundle → response Bundle
    POST /fhir/{type}                                create            201, Location, ETag
    GET  /fhir/{type}/{id}                           read              200, ETag
    PUT  /fhir/{type}/{id}                           update (If-Match) 200 / 201
    GET  /fhir/{type}/{id}/_history                  history           Bundle
    GET  /fhir/{type}/{id}/_history/{vid}            vread
    GET  /fhir/{type}?param=value…                   search            Bundle (searchset)

Every request needs ``Authorization: Bearer <token>``: an access token from the token
endpoint (its SMART scopes limit the types and interactions) or a sign-in-with-Ethereum
session of the gateway's own institution. Scopes are honoured only as far as on-chain consent
allows: every read is checked against the ledger as well. The purpose of use is the
``X-Medmesh-Purpose`` header (``treatment`` by default).

Errors are ``OperationOutcome`` resources: 400 malformed, 401 no or bad token, 403 no consent
or scope (logged), 404 unknown type or id, 412 version conflict, 413 too large, 422 invalid
content (nothing is stored), 5xx the ledger or storage failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from medmesh.errors import AuthError, ConsentError, MedmeshError, NotFoundError
from medmesh.interop.fhir.bundles import process_bundle
from medmesh.interop.fhir.capability import capability_statement
from medmesh.interop.fhir.outcome import FhirError, Issue, operation_outcome
from medmesh.interop.fhir.repository import FhirRepository, Saved
from medmesh.interop.fhir.search import parse_search
from medmesh.interop.fhir.validation import (
    MAX_BUNDLE_BYTES,
    MAX_RESOURCE_BYTES,
    SUPPORTED_TYPES,
    parse_json,
)
from medmesh.interop.smart import OAuthError, TokenService, smart_configuration
from medmesh.ledger.contracts import Purpose

__all__ = ["FHIR_JSON", "Principal", "authenticate", "mount_fhir"]

log = logging.getLogger(__name__)

FHIR_JSON: Final = "application/fhir+json"
_MAX_FORM: Final = 16 * 1024  # a token request: an assertion of at most 8 KB and a few fields


class Principal:
    """Who is calling: the institution, and what its token lets it do."""

    def __init__(self, address: str, scopes: Any | None) -> None:
        self.address = address
        self.scopes = scopes  # None: a SIWE session of the institution itself (all)

    def require(self, type_: str, action: str) -> None:
        if self.scopes is not None and not self.scopes.allows(type_, action):
            raise FhirError.forbidden(f"the access token's scopes do not allow {action} on {type_}")


def authenticate(
    request: Request,
    tokens: TokenService,
    session_address: Callable[[str], str | None],
    institution: str,
) -> Principal:
    """Who sends ``request``: the holder of a SMART access token (its scopes apply), or the
    ``institution`` itself signed in with Ethereum (401 for anything else). Shared by every
    API the FHIR gateway serves (FHIR, DICOMweb)."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not token:
        raise AuthError("an access token is required (Authorization: Bearer <token>)")
    try:
        grant = tokens.resolve(token)
    except AuthError:
        address = session_address(token)
        if address is None or address.lower() != institution.lower():
            raise AuthError("unknown or expired access token") from None
        return Principal(address, None)
    return Principal(grant.client, grant.scopes)


def _fhir(
    resource: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(resource, status_code=status, media_type=FHIR_JSON, headers=headers)


def _outcome(exc: BaseException) -> JSONResponse:
    if isinstance(exc, FhirError):
        return _fhir(exc.to_outcome(), exc.status)
    if isinstance(exc, OAuthError):
        return JSONResponse(
            {"error": exc.error, "error_description": exc.message}, status_code=exc.status
        )
    if isinstance(exc, AuthError):
        issue = Issue("error", "login", exc.message, [])
        return _fhir(operation_outcome([issue]), 401, {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, ConsentError):
        return _fhir(operation_outcome([Issue("error", "forbidden", exc.message, [])]), 403)
    if isinstance(exc, NotFoundError):
        return _fhir(operation_outcome([Issue("error", "not-found", exc.message, [])]), 404)
    if isinstance(exc, MedmeshError):
        status = {"rpc_unavailable": 503, "reverted": 502}.get(exc.code, 500)
        return _fhir(operation_outcome([Issue("error", "exception", exc.message, [])]), status)
    raise exc


def _handled(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except (MedmeshError, FhirError) as exc:
            return _outcome(exc)
        except Exception as exc:  # a bug: answer 500, log the kind only (no PHI in logs)
            log.error("FHIR %s failed: %s", fn.__name__, type(exc).__name__)
            issue = Issue("fatal", "exception", "internal error", [])
            return _fhir(operation_outcome([issue]), 500)

    return wrapper


def _purpose(request: Request) -> Purpose:
    text = request.headers.get("x-medmesh-purpose", "treatment")
    try:
        purpose = Purpose.parse(text)
    except (ValueError, MedmeshError):
        raise FhirError.invalid(
            [Issue("error", "invalid", "unknown purpose of use", ["X-Medmesh-Purpose"])]
        ) from None
    if purpose.bit_count() != 1:
        raise FhirError.invalid(
            [Issue("error", "invalid", "give exactly one purpose of use", ["X-Medmesh-Purpose"])]
        )
    return purpose


def _etag(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    return {
        "ETag": f'W/"{meta.get("versionId", "")}"',
        "Last-Modified": str(meta.get("lastUpdated", "")),
    }


def _minimal(request: Request) -> bool:
    """Whether the client sent ``Prefer: return=minimal`` (FHIR R4 http.html#ops): answer a
    write with its status and headers only, a batch or transaction with each entry's
    ``response`` only (an importer needs no copy of what it sent)."""
    prefs = request.headers.get("prefer", "")
    return any(p.strip().lower() == "return=minimal" for p in prefs.replace(";", ",").split(","))


def mount_fhir(
    app: FastAPI,
    repo: FhirRepository,
    tokens: TokenService,
    *,
    base_url: str,
    session_address: Callable[[str], str | None],
) -> None:
    """Add the FHIR API under ``/fhir`` to ``app``.

    ``session_address`` resolves a sign-in-with-Ethereum session token to its address (or
    None); ``tokens`` issues and resolves SMART access tokens.
    """
    router = APIRouter(prefix="/fhir")
    token_url = tokens.token_url

    def principal(request: Request) -> Principal:
        return authenticate(request, tokens, session_address, repo.me)

    async def body_of(request: Request, limit: int = MAX_RESOURCE_BYTES) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise FhirError.too_large(f"the body is larger than {limit} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise FhirError.too_large(f"the body is larger than {limit} bytes")
        return parse_json(bytes(raw), limit=limit)

    def check_type(type_: str) -> None:
        if type_ not in SUPPORTED_TYPES:
            raise FhirError.not_found(
                f"resource type {type_} is not supported here (see /fhir/metadata)"
            )

    @router.get("/metadata")
    @_handled
    async def metadata() -> Response:
        return _fhir(capability_statement(base_url, token_url))

    @router.get("/.well-known/smart-configuration")
    async def smart() -> Response:
        return JSONResponse(smart_configuration(token_url))

    @router.post("/auth/token")
    @_handled
    async def token(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "send the token request form-encoded")
        raw = await request.body()
        if len(raw) > _MAX_FORM:
            raise OAuthError("invalid_request", "the token request is too large")
        try:
            pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise OAuthError("invalid_request", "the token request is not a valid form") from None
        names = [k for k, _ in pairs]
        if len(names) != len(set(names)):  # RFC 6749 3.2: parameters must not repeat
            raise OAuthError("invalid_request", "a form parameter is repeated")
        answer = tokens.token(dict(pairs))
        return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def saved_response(saved: Saved, request: Request) -> Response:
        row = saved.row
        headers = _etag(saved.resource)
        headers["Location"] = f"{base_url}/{row.type}/{row.id}/_history/{row.version}"
        status = 201 if saved.created else 200
        if _minimal(request):
            return Response(status_code=status, headers=headers)
        return _fhir(saved.resource, status, headers)

    @router.post("")
    @router.post("/")
    @_handled
    async def bundle(request: Request) -> Response:
        caller = principal(request)
        purpose = _purpose(request)
        data = await body_of(request, MAX_BUNDLE_BYTES)
        answer = await process_bundle(
            repo, data, caller=caller, purpose=purpose, base_url=base_url,
            minimal=_minimal(request),
        )  # fmt: skip
        return _fhir(answer)

    @router.post("/{type_}")
    @_handled
    async def create(type_: str, request: Request) -> Response:
        check_type(type_)
        principal(request).require(type_, "create")
        resource = await body_of(request)
        if resource.get("resourceType") != type_:
            raise FhirError.invalid(
                [
                    Issue(
                        "error",
                        "invalid",
                        f"the body's resourceType must be {type_}",
                        [f"{type_}.resourceType"],
                    )
                ]
            )
        return saved_response(await asyncio.to_thread(repo.create, resource), request)

    @router.put("/{type_}/{id_}")
    @_handled
    async def update(type_: str, id_: str, request: Request) -> Response:
        check_type(type_)
        principal(request).require(type_, "update")
        resource = await body_of(request)
        saved = await asyncio.to_thread(
            functools.partial(
                repo.update, type_, id_, resource, if_match=request.headers.get("if-match")
            )
        )
        return saved_response(saved, request)

    @router.get("/{type_}/{id_}")
    @_handled
    async def read(type_: str, id_: str, request: Request) -> Response:
        check_type(type_)
        principal(request).require(type_, "read")
        resource = await repo.read(type_, id_, _purpose(request))
        return _fhir(resource, headers=_etag(resource))

    @router.get("/{type_}/{id_}/_history")
    @_handled
    async def history(type_: str, id_: str, request: Request) -> Response:
        check_type(type_)
        principal(request).require(type_, "read")
        versions = await repo.history(type_, id_, _purpose(request))
        entries = [
            {"fullUrl": f"{base_url}/{type_}/{id_}", "resource": v,
             "request": {"method": "POST" if v["meta"]["versionId"] == "1" else "PUT",
                         "url": type_ if v["meta"]["versionId"] == "1" else f"{type_}/{id_}"},
             "response": {"status": "201 Created" if v["meta"]["versionId"] == "1" else "200 OK"}}
            for v in versions
        ]  # fmt: skip
        return _fhir(
            {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
        )

    @router.get("/{type_}/{id_}/_history/{vid}")
    @_handled
    async def vread(type_: str, id_: str, vid: str, request: Request) -> Response:
        check_type(type_)
        principal(request).require(type_, "read")
        resource = await repo.vread(type_, id_, vid, _purpose(request))
        return _fhir(resource, headers=_etag(resource))

    @router.get("/{type_}")
    @_handled
    async def search(type_: str, request: Request) -> Response:
        check_type(type_)
        principal(request).require(type_, "search")
        items = list(request.query_params.multi_items())
        query = parse_search(type_, items)
        found, total = await asyncio.to_thread(repo.search, query, _purpose(request))
        return _fhir(_searchset(base_url, type_, items, query.count, query.offset, found, total))

    @router.api_route("/{type_}/{id_}", methods=["DELETE", "PATCH"])
    @_handled
    async def not_supported(type_: str, id_: str, request: Request) -> Response:
        raise FhirError.not_supported(
            f"{request.method} is not supported: a patient erases their own records "
            "(medmesh records erase), and every change is a new version (PUT)",
            status=405,
        )

    app.include_router(router)


def _searchset(
    base_url: str,
    type_: str,
    items: list[tuple[str, str]],
    count: int,
    offset: int,
    found: list[dict[str, Any]],
    total: int,
) -> dict[str, Any]:
    kept = [(k, v) for k, v in items if k not in ("_offset",)]

    def link(relation: str, at: int) -> dict[str, str]:
        return {
            "relation": relation,
            "url": f"{base_url}/{type_}?{urlencode([*kept, ('_offset', str(at))])}",
        }

    links = [link("self", offset)]
    if offset + count < total:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base_url}/{type_}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in found
        ],
    }
