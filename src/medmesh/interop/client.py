"""A client of one medmesh gateway's FHIR API and DICOMweb service (``medmesh dicom``, ``fhir``).

It authenticates as a SMART backend service: the token endpoint comes from the gateway's
``/.well-known/smart-configuration``, the client assertion is a JWT signed with the wallet's
Ethereum key (:func:`medmesh.interop.smart.client_assertion`). A gateway issues tokens only
to its own institution, so the wallet must be the gateway's.

Errors, from the answer's status: 401 :class:`~medmesh.errors.AuthError`, 403
:class:`~medmesh.errors.ConsentError`, 404 :class:`~medmesh.errors.NotFoundError`, other 4xx
:class:`~medmesh.errors.InvalidInputError`, and :class:`GatewayError` when the gateway cannot
be reached or fails (5xx). Messages are the gateway's public ones (no PHI).

>>> with GatewayClient("http://127.0.0.1:7700/fhir", wallet) as gw:     # doctest: +SKIP
...     gw.authenticate("system/ImagingStudy.rs")
...     series = gw.series(study_uid)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import requests

from medmesh.errors import (
    AuthError,
    ConsentError,
    InvalidInputError,
    MedmeshError,
    NotFoundError,
)
from medmesh.identity.wallet import Wallet
from medmesh.interop.dicom.multipart import boundary_of, first_part, multipart_body, new_boundary
from medmesh.interop.dicom.qido import DICOM_JSON, dicomweb_base
from medmesh.interop.smart import client_assertion

__all__ = ["ASSERTION_TYPE", "FHIR_JSON", "GatewayClient", "GatewayError", "dicom_value"]

FHIR_JSON: Final = "application/fhir+json"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_TIMEOUT: Final = 60.0
STORE_TIMEOUT: Final = 900.0  # seconds to wait for a store's answer after the last byte
DICOM_MEDIA: Final = "application/dicom"
_READ_SIZE: Final = 1024 * 1024


class GatewayError(MedmeshError):
    """The gateway did not answer, or failed (a 5xx status)."""

    code = "gateway"


def _message(response: requests.Response) -> str:
    """The public message of an error answer: an OperationOutcome's or a JSON error's."""
    try:
        body = response.json()
    except ValueError:
        return f"the gateway answered {response.status_code}"
    if isinstance(body, dict):
        issues = body.get("issue")
        if isinstance(issues, list) and issues and isinstance(issues[0], dict):
            text = issues[0].get("diagnostics")
            if isinstance(text, str):
                return text
        for key in ("message", "error_description", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return f"the gateway answered {response.status_code}"


def _raise_for(response: requests.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    text = _message(response)
    if status == 401:
        raise AuthError(text)
    if status == 403:
        raise ConsentError(text)
    if status == 404:
        raise NotFoundError(text)
    if status < 500:
        raise InvalidInputError(f"{text} ({status})")
    raise GatewayError(f"the gateway failed: {text} ({status})")


class GatewayClient:
    """FHIR and DICOMweb requests to the gateway at ``fhir_url`` (``…/fhir``), as ``wallet``.

    ``purpose`` is sent as ``X-Medmesh-Purpose`` (the gateway's default is treatment).
    """

    def __init__(
        self,
        fhir_url: str,
        wallet: Wallet,
        *,
        purpose: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.fhir_url = fhir_url.rstrip("/")
        self.dicomweb_url = dicomweb_base(self.fhir_url)
        self.wallet = wallet
        self.timeout = timeout
        self._http = requests.Session()
        self._headers: dict[str, str] = {}
        if purpose:
            self._headers["X-Medmesh-Purpose"] = purpose

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        timeout = kwargs.pop("timeout", self.timeout)
        try:
            return self._http.request(method, url, headers=headers, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            raise GatewayError(
                f"the gateway at {self.fhir_url} did not answer ({type(exc).__name__})"
            ) from exc

    # -- authentication -------------------------------------------------------------------------

    def authenticate(self, scope: str) -> None:
        """Get an access token for ``scope`` (SMART backend services, ES256K assertion)."""
        answer = self._send("GET", f"{self.fhir_url}/.well-known/smart-configuration")
        _raise_for(answer)
        token_url = answer.json().get("token_endpoint")
        if not isinstance(token_url, str) or not token_url:
            raise GatewayError("the gateway's SMART configuration names no token endpoint")
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(self.wallet, token_url),
            "scope": scope,
        }
        answer = self._send("POST", token_url, data=form)
        if answer.status_code in (400, 401):
            raise AuthError(
                f"the gateway refused this wallet an access token ({_message(answer)}): a "
                "gateway issues tokens only to its own institution, run this with its home"
            )
        _raise_for(answer)
        token = answer.json().get("access_token")
        if not isinstance(token, str):
            raise GatewayError("the token endpoint answered without an access token")
        self._headers["Authorization"] = f"Bearer {token}"

    # -- FHIR -------------------------------------------------------------------------------------

    def read(self, type_: str, id_: str) -> dict[str, Any] | None:
        """``GET {fhir}/{type}/{id}``; None when the gateway knows no such resource."""
        answer = self._send("GET", f"{self.fhir_url}/{type_}/{id_}", headers={"Accept": FHIR_JSON})
        if answer.status_code == 404:
            return None
        _raise_for(answer)
        return _object(answer)

    def bundle(self, bundle: dict[str, Any], *, minimal: bool = False) -> dict[str, Any]:
        """``POST {fhir}`` a ``batch`` or ``transaction`` Bundle; returns the response Bundle
        (``minimal``: ``Prefer: return=minimal``, its written entries without their resource)."""
        body = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if minimal:
            headers["Prefer"] = "return=minimal"
        answer = self._send("POST", self.fhir_url, data=body, headers=headers)
        _raise_for(answer)
        return _object(answer)

    # -- DICOMweb ---------------------------------------------------------------------------------

    def _dicom_json(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        answer = self._send(
            "GET", f"{self.dicomweb_url}{path}", params=params, headers={"Accept": DICOM_JSON}
        )
        _raise_for(answer)
        if answer.status_code == 204 or not answer.content:
            return []
        body = answer.json()
        if not isinstance(body, list):
            raise GatewayError("the DICOMweb answer is not a DICOM JSON array")
        return [item for item in body if isinstance(item, dict)]

    def studies(self, **params: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies`` with matching keys (``PatientID=…``, ``StudyDate=…``)."""
        return self._dicom_json("/studies", params)

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}/series``."""
        return self._dicom_json(f"/studies/{study_uid}/series")

    def instances(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}/series/{series}/instances``."""
        return self._dicom_json(f"/studies/{study_uid}/series/{series_uid}/instances")

    def store(
        self,
        files: Sequence[Path],
        *,
        subject: str,
        study_uid: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """STOW-RS ``files`` for ``subject`` (``Patient/<id>``), streamed in one request;
        returns the store response (DICOM JSON), also when some or all instances failed
        (statuses 202 and 409). ``progress`` is called with each chunk's size as it is sent.
        """

        def chunks(path: Path) -> Iterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(_READ_SIZE):
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk

        boundary = new_boundary()
        url = f"{self.dicomweb_url}/studies" + (f"/{study_uid}" if study_uid else "")
        answer = self._send(
            "POST",
            url,
            params={"subject": subject},
            data=multipart_body((chunks(p) for p in files), boundary, DICOM_MEDIA),
            headers={
                "Content-Type": f'multipart/related; type="{DICOM_MEDIA}"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
            # the answer comes once the last file is stored and the study saved
            timeout=(self.timeout, max(self.timeout, STORE_TIMEOUT)),
        )
        if answer.status_code not in (200, 202, 409):
            _raise_for(answer)
        return _object(answer)

    def retrieve(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sink: IO[bytes],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """WADO-RS one instance into ``sink``, streamed; returns the bytes written.

        ``progress`` is called with the size of each piece written. Raises (after writing
        part of it) if the answer ends before its closing boundary.
        """
        url = f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        answer = self._send(
            "GET",
            url,
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            stream=True,
        )
        with answer:
            _raise_for(answer)
            boundary = boundary_of(answer.headers.get("content-type", ""))
            written = 0
            try:
                for piece in first_part(answer.iter_content(_READ_SIZE), boundary):
                    sink.write(piece)
                    written += len(piece)
                    if progress is not None:
                        progress(len(piece))
            except requests.RequestException as exc:
                raise GatewayError(
                    f"the gateway stopped sending the instance ({type(exc).__name__})"
                ) from exc
        return written


def _object(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise GatewayError("the gateway's answer is not a JSON object")
    return body


def dicom_value(attributes: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` (``"0020000E"``) in a DICOM JSON object, or None."""
    element = attributes.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None
