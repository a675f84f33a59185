"""The CapabilityStatement (``GET /fhir/metadata``): exactly what this server supports.

Built from the same tables the server runs on (supported types, search parameters), so it
cannot claim an interaction or parameter that is not there.
"""

from __future__ import annotations

from typing import Any, Final

from medmesh.interop.fhir.params import SEARCH_PARAMS
from medmesh.interop.fhir.validation import SUPPORTED_TYPES
from medmesh.interop.smart import oauth_uris_extension, security_service

__all__ = ["INTERACTIONS", "capability_statement"]

INTERACTIONS: Final = ("read", "vread", "update", "history-instance", "create", "search-type")
_SPEC: Final = "http://hl7.org/fhir/SearchParameter"
_COMMON: Final = (
    ("_id", "token", "Logical id of the resource"),
    ("_lastUpdated", "date", "When the version was anchored on the ledger"),
    ("_count", "number", "Page size (default 20, at most 1000)"),
)


def capability_statement(base_url: str, token_url: str) -> dict[str, Any]:
    resources = []
    for type_ in SUPPORTED_TYPES:
        params = [{"name": name, "type": kind, "documentation": doc} for name, kind, doc in _COMMON]
        for param in SEARCH_PARAMS[type_].values():
            params.append(
                {
                    "name": param.name,
                    "definition": f"{_SPEC}/{type_}-{param.name}",
                    "type": param.kind,
                }
            )
        resources.append(
            {
                "type": type_,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
                "interaction": [{"code": code} for code in INTERACTIONS],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": False,
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchParam": params,
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": {"name": "medmesh", "version": "0.1.0"},
        "implementation": {
            "description": "medmesh FHIR gateway: resources are sealed records on a "
            "patient-controlled network; every read is checked against on-chain consent",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [security_service()],
                    "extension": [oauth_uris_extension(token_url)],
                    "description": "SMART backend services (client_credentials, ES256K JWT "
                    "assertion signed by the institution's Ethereum key); scopes are honoured "
                    "only as far as on-chain consent allows",
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
