"""medmesh: an open, patient-controlled network for medical data.

Records are sealed on the client, content-addressed with IPFS-compatible CIDs,
erasure-coded and spread over a network of storage nodes.

The public surface is re-exported here; everything else is internal.
"""

from __future__ import annotations

from medmesh.errors import MedmeshError as MedmeshError

__version__ = "0.1.0"

__all__ = ["MedmeshError", "__version__"]
