"""A minimal DICOMweb service (base ``/dicomweb``) on a FHIR gateway: QIDO-RS and WADO-RS.

    GET /dicomweb/studies?PatientID=&StudyDate=&ModalitiesInStudy=&StudyInstanceUID=
                                                                   QIDO-RS studies
    GET /dicomweb/studies/{study}/series                            QIDO-RS series
    GET /dicomweb/studies/{study}/series/{series}/instances         QIDO-RS instances
    GET /dicomweb/studies/{study}/series/{series}/instances/{sop}   WADO-RS instance
    POST /dicomweb/studies[/{study}]?subject=Patient/<id>           STOW-RS (see .stow)

Queries are answered from the ImagingStudy resources of the gateway's FHIR index
(:mod:`medmesh.interop.dicom.qido` says how), never from the DICOM files, and every study
they return was checked against the chain first, in one batch per page, like a FHIR search.
A retrieve finds the instance's record through the CID its ImagingStudy carries
(:data:`~medmesh.interop.dicom.study.RECORD_CID_EXTENSION`; the record id is
``record_id(study's patient, cid)``), asks ``Consent.has_access`` for **that record** at the
latest block (a refusal is logged and answered 403), fetches the ciphertext from the storage
network, verified block by block, and streams the decrypted Part-10 file back as
``multipart/related; type="application/dicom"``: the stored file, byte for byte, in its own
transfer syntax (a client asking for another one gets 406). The plaintext goes only to the
institution the gateway acts for, as with FHIR.

A store (:mod:`medmesh.interop.dicom.stow`) takes the files of a patient the gateway knows
(``subject``, a medmesh parameter: DICOM has no FHIR Patient), stores each as a record for
the Patient's owner, which needs that patient's CONTRIBUTE consent for ``dicom:instance``
and ``fhir:ImagingStudy`` records (checked before anything is read), and saves the
ImagingStudy resources.

Authentication is the FHIR API's: ``Authorization: Bearer`` with a SMART access token of the
gateway's institution (scopes ``ImagingStudy`` search for queries, read for retrieves,
create and update for stores) or a
sign-in-with-Ethereum session of that institution; the purpose of use is the
``X-Medmesh-Purpose`` header (``treatment`` by default). Errors are JSON
``{"error": code, "message": text}``: 400 bad query, 401 no or bad token, 403 no consent or
scope (logged), 404 unknown study, series or instance, 406 unacceptable media type, 415 a
store that is not ``multipart/related; type="application/dicom"``, 422 an unknown subject.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from medmesh.consent.gateway import Access
from medmesh.consent.sharing import PREFIX_BYTES
from medmesh.crypto.capsule import KeyCapsule
from medmesh.crypto.envelope import NoCapsuleError, RecordOpener
from medmesh.errors import (
    AuthError,
    ConsentError,
    InvalidInputError,
    MedmeshError,
    NotFoundError,
)
from medmesh.interop.dicom.multipart import boundary_of, closing, new_boundary, part_head, type_of
from medmesh.interop.dicom.qido import (
    DICOM_JSON,
    QidoQuery,
    dicomweb_base,
    instance_attributes,
    parse_qido,
    series_attributes,
    study_attributes,
)
from medmesh.interop.dicom.stow import SPOOL_FOLDER, StowSession, clean_spool, resolve_subject
from medmesh.interop.dicom.study import (
    DCM_SYSTEM,
    RECORD_KIND,
    record_cids,
    study_resource_id,
    study_uid_of,
)
from medmesh.interop.fhir.api import Principal, authenticate
from medmesh.interop.fhir.index import IndexedResource, Query
from medmesh.interop.fhir.outcome import FhirError
from medmesh.interop.fhir.params import date_range
from medmesh.interop.fhir.repository import FhirRepository
from medmesh.interop.smart import TokenService
from medmesh.ledger.contracts import Purpose, kind_tag, record_id
from medmesh.storage.cid import Cid

__all__ = ["DICOM_MEDIA", "mount_dicomweb"]

log = logging.getLogger(__name__)

DICOM_MEDIA: Final = "application/dicom"
_STUDY: Final = "ImagingStudy"
_KIND: Final = kind_tag(RECORD_KIND)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _answer(exc: MedmeshError) -> Response:
    if isinstance(exc, FhirError):
        code = exc.issues[0].code if exc.issues else "error"
        return _error(exc.status, code, exc.message)
    if isinstance(exc, AuthError):
        return _error(401, exc.code, exc.message, {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, ConsentError):
        return _error(403, exc.code, exc.message)
    if isinstance(exc, NotFoundError):
        return _error(404, exc.code, exc.message)
    if isinstance(exc, InvalidInputError):
        return _error(400, exc.code, exc.message)
    status = {"rpc_unavailable": 503, "reverted": 502}.get(exc.code, 500)
    return _error(status, exc.code, exc.message)


def _handled(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except MedmeshError as exc:
            return _answer(exc)
        except Exception as exc:  # a bug: answer 500, log the kind only (no PHI in logs)
            log.error("DICOMweb %s failed: %s", fn.__name__, type(exc).__name__)
            return _error(500, "internal", "internal error")

    return wrapper


def _purpose(request: Request) -> Purpose:
    text = request.headers.get("x-medmesh-purpose", "treatment")
    try:
        purpose = Purpose.parse(text)
    except (ValueError, MedmeshError):
        raise InvalidInputError("unknown purpose of use (X-Medmesh-Purpose)") from None
    if purpose.bit_count() != 1:
        raise InvalidInputError("give exactly one purpose of use (X-Medmesh-Purpose)")
    return purpose


def _accepts_dicom(accept: str | None) -> bool:
    """Whether an Accept header allows ``multipart/related; type="application/dicom"`` in the
    stored transfer syntax (any ``transfer-syntax`` other than ``*`` is not offered)."""
    if not accept or not accept.strip():
        return True
    for item in accept.split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        named = {}
        for p in params:
            name, _, value = p.partition("=")
            named[name.strip().lower()] = value.strip().strip('"').lower()
        if named.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        kind = kind.lower()
        if kind in ("*/*", "multipart/*"):
            return True
        if (
            kind == "multipart/related"
            and named.get("type", DICOM_MEDIA) in (DICOM_MEDIA, "*/*")
            and named.get("transfer-syntax", "*") == "*"
        ):
            return True
    return False


def to_query(q: QidoQuery) -> Query:
    """The FHIR index query for a QIDO study query (study UIDs become resource ids)."""
    query = Query(type=_STUDY, count=q.limit, offset=q.offset)
    if q.patient_id is not None:
        query.refs = [("patient", [f"Patient/{q.patient_id}"])]
    if q.study_uids is not None:
        query.ids = [study_resource_id(u) for u in q.study_uids]
    if q.modalities is not None:
        query.tokens = [("modality", [f"{DCM_SYSTEM}|{m}" for m in q.modalities])]
    dates = []
    if q.date_from is not None:
        dates.append(("started", "ge", date_range(q.date_from.isoformat())))
    if q.date_to is not None:
        dates.append(("started", "le", date_range(q.date_to.isoformat())))
    if dates:
        query.dates = dates
    return query


def mount_dicomweb(
    app: FastAPI,
    repo: FhirRepository,
    tokens: TokenService,
    *,
    fhir_base_url: str,
    session_address: Callable[[str], str | None],
) -> None:
    """Add QIDO-RS and WADO-RS under ``/dicomweb`` to ``app``, next to the FHIR API of
    ``repo`` served at ``fhir_base_url`` (same tokens and sessions)."""
    router = APIRouter(prefix="/dicomweb")
    try:
        base = dicomweb_base(fhir_base_url)
    except InvalidInputError:  # FHIR not at …/fhir: DICOMweb is still at /dicomweb beside it
        base = urlsplit(fhir_base_url)._replace(path="/dicomweb", query="", fragment="").geturl()

    def caller(request: Request) -> Principal:
        return authenticate(request, tokens, session_address, repo.me)

    def authorize(record: bytes, purpose: Purpose) -> Access:
        try:
            return repo.gateway.authorize(repo.me, record, purpose)
        except ConsentError as exc:
            raise FhirError.forbidden(
                f"no current consent lets this institution read this record for {purpose.names()}"
            ) from exc

    async def locate(uid: str, purpose: Purpose) -> tuple[IndexedResource, dict[str, Any]]:
        """The current ImagingStudy of Study Instance UID ``uid`` in the index (no consent
        check on the study itself: the caller checks what it releases)."""
        sid = study_resource_id(uid)
        row = repo.index.current(_STUDY, sid)
        if row is None:
            gone = repo.index.forgotten(_STUDY, sid)
            if gone is not None:  # consent ended since it was indexed: refuse, and log it
                authorize(gone.record, purpose)
            await repo.sync()  # new, or consent given back: catch up once
            row = repo.index.current(_STUDY, sid)
        body = repo.index.body(row.record) if row is not None else None
        if row is None or body is None or study_uid_of(body) != uid:
            raise FhirError.not_found("no such study here")
        return row, body

    async def study(uid: str, request: Request, action: str) -> dict[str, Any]:
        caller(request).require(_STUDY, action)
        purpose = _purpose(request)
        row, body = await locate(uid, purpose)
        authorize(row.record, purpose)
        return body

    def series_of(body: Mapping[str, Any], uid: str) -> Mapping[str, Any]:
        for series in body.get("series") or []:
            if isinstance(series, Mapping) and series.get("uid") == uid:
                return series
        raise FhirError.not_found("no such series in this study")

    @router.get("/studies")
    @_handled
    async def search_studies(request: Request) -> Response:
        caller(request).require(_STUDY, "search")
        purpose = _purpose(request)
        q = parse_qido(request.query_params.multi_items())
        query = to_query(q)
        found, total = repo.search(query, purpose)
        results = [
            study_attributes(resource, base)
            for resource in found
            # ids are hashes of the UIDs asked for: drop a resource that reuses one
            if q.study_uids is None or study_uid_of(resource) in q.study_uids
        ]
        more = q.offset + len(found) < total
        headers = (
            {"Warning": '299 medmesh "there are more results: ask again with offset"'}
            if more
            else None
        )
        return JSONResponse(results, media_type=DICOM_JSON, headers=headers)

    @router.get("/studies/{study_uid}/series")
    @_handled
    async def search_series(study_uid: str, request: Request) -> Response:
        body = await study(study_uid, request, "search")
        found = [
            series_attributes(body, s, base)
            for s in body.get("series") or []
            if isinstance(s, Mapping)
        ]
        return JSONResponse(found, media_type=DICOM_JSON)

    @router.get("/studies/{study_uid}/series/{series_uid}/instances")
    @_handled
    async def search_instances(study_uid: str, series_uid: str, request: Request) -> Response:
        body = await study(study_uid, request, "search")
        series = series_of(body, series_uid)
        found = [
            instance_attributes(body, series, i, base)
            for i in series.get("instance") or []
            if isinstance(i, Mapping)
        ]
        return JSONResponse(found, media_type=DICOM_JSON)

    @router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}")
    @_handled
    async def retrieve_instance(
        study_uid: str, series_uid: str, sop_uid: str, request: Request
    ) -> Response:
        caller(request).require(_STUDY, "read")
        if not _accepts_dicom(request.headers.get("accept")):
            return _error(
                406,
                "not_acceptable",
                'this server sends multipart/related; type="application/dicom" in the '
                "stored transfer syntax only",
            )
        purpose = _purpose(request)
        row, body = await locate(study_uid, purpose)
        series_of(body, series_uid)
        cid = record_cids(body).get((series_uid, sop_uid))
        if cid is None:
            raise FhirError.not_found("no stored record for this instance")
        try:
            record = record_id(row.patient, Cid.parse(cid))
        except MedmeshError:
            raise FhirError.not_found("no stored record for this instance") from None
        try:
            access = authorize(record, purpose)
        except NotFoundError:
            raise FhirError.not_found("no stored record for this instance") from None
        if access.kind != _KIND:
            raise FhirError.not_found("the record this instance names is not a DICOM instance")
        plain = _plaintext(repo, access)
        first = b""
        async for piece in plain:  # start before answering: a refusal can still be a status
            first = piece
            if first:
                break
        boundary = new_boundary()

        async def parts() -> AsyncIterator[bytes]:
            yield part_head(boundary, DICOM_MEDIA) + first
            async for piece in plain:
                yield piece
            yield closing(boundary)

        return StreamingResponse(
            parts(),
            media_type=f'multipart/related; type="{DICOM_MEDIA}"; boundary={boundary}',
        )

    spool = Path(repo.index.path).parent / SPOOL_FOLDER
    clean_spool(spool)
    # the repository's writes and ours share the keeper's storage client (one event loop at
    # a time) and the wallet's nonces: the same lock
    writes = repo.write_lock

    async def store(request: Request, study_uid: str | None) -> Response:
        who = caller(request)
        who.require(_STUDY, "create")
        who.require(_STUDY, "update")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/related" or type_of(
            content_type
        ) not in (None, DICOM_MEDIA):
            return _error(
                415, "unsupported_media_type", 'send multipart/related; type="application/dicom"'
            )
        boundary = boundary_of(content_type)
        subject, owner = await resolve_subject(repo, request.query_params.get("subject", ""))
        session = StowSession(
            repo, subject=subject, owner=owner, study_uid=study_uid, base=base, spool=spool,
            writes=writes,
        )  # fmt: skip
        await session.read(request.stream(), boundary)
        status, answer = await session.finish()
        return JSONResponse(answer, status_code=status, media_type=DICOM_JSON)

    @router.post("/studies")
    @_handled
    async def store_instances(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study_uid}")
    @_handled
    async def store_study_instances(study_uid: str, request: Request) -> Response:
        return await store(request, study_uid)

    app.include_router(router)


async def _plaintext(repo: FhirRepository, access: Access) -> AsyncIterator[bytes]:
    """The record's plaintext, streamed: opened with the institution's capsule in the
    record's header, else with the one its grant's capsule block holds (as
    ``FhirRepository`` does for resources). The first :data:`PREFIX_BYTES` of ciphertext are
    kept until the header is read, to open them again with that capsule."""
    keys = repo.keeper.wallet.encryption_keys
    opener = RecordOpener(keys)
    held: list[bytes] | None = []
    size = 0

    async def reopen() -> tuple[RecordOpener, bytes]:
        capsule = await repo.gateway.capsule_for(access)
        if not capsule or held is None:
            raise NoCapsuleError("this record was not sealed for this institution")
        again = RecordOpener(keys, [KeyCapsule.from_bytes(capsule)])
        return again, b"".join(again.update(p) for p in held)

    async for piece in repo.gateway.ciphertext(access):
        if held is not None:
            held.append(piece)
            size += len(piece)
        try:
            out = opener.update(piece)
        except NoCapsuleError:
            opener, out = await reopen()
        if held is not None and size >= PREFIX_BYTES:
            held = None  # the header is read by now
        if out:
            yield out
    try:
        final = opener.finalize()
    except NoCapsuleError:
        opener, out = await reopen()
        final = out + opener.finalize()
    yield final
