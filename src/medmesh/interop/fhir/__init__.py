"""FHIR R4 over medmesh: validation, the resource repository, search and the REST API."""
