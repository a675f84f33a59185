"""Where sealed objects are stored, behind one interface.

- ``base``     the :class:`ObjectStore` ABC and result types
- ``memory``   in-process, for unit tests
- ``network``  the medmesh storage network (erasure-coded over nodes)
- ``kubo``     a kubo node or IPFS Cluster, through the kubo RPC API
- ``factory``  picks one from a URL
"""

from medmesh.storage.backends.base import EraseReport as EraseReport
from medmesh.storage.backends.base import ObjectStore as ObjectStore
from medmesh.storage.backends.base import StoredObject as StoredObject
from medmesh.storage.backends.factory import open_store as open_store

__all__ = ["EraseReport", "ObjectStore", "StoredObject", "open_store"]
