"""The data plane: content addressing, erasure coding, storage nodes and the client.

Modules, one idea each (see docs/storage.md for how they fit together):

- ``cid``, ``varint``, ``dagcbor``  CIDs, varints, DAG-CBOR
- ``block``      a CID with its bytes
- ``unixfs``     dag-pb / UnixFS node codec
- ``importer``   file -> UnixFS DAG, identical to ``ipfs add --cid-version=1 --raw-leaves``
- ``exporter``   UnixFS DAG -> file bytes, every block verified
- ``car``        CAR v1 import and export
- ``erasure``    zfec k-of-n over stripes of blocks
- ``stripes``    the CPU work of a put: leaves -> encoded stripes
- ``merkle``     Merkle trees over share segments (storage proofs)
- ``manifest``   the DAG-CBOR share manifest of a stored object
- ``placement``  rendezvous hashing of stripes onto nodes
- ``blockstore`` the disk blockstore of a node
- ``auth``       EIP-191 signed requests and replay protection
- ``node/``      the storage node service (HTTP, DHT, daemon)
- ``transport``  the client side of the node protocol
- ``uploader``   the streaming put pipeline
- ``batch``      the put pipeline for many small objects (one request per node per chunk)
- ``locate``, ``fetcher``, ``downloader``  finding and fetching an object, fastest first
- ``repair``     re-creating lost shares
- ``backends/``  object stores behind one interface (network, kubo, memory)
- ``client``     seal + store + fetch + open: :class:`~medmesh.storage.client.Client`
"""
