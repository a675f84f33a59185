"""The data plane: content addressing, erasure coding, storage nodes and the client.

Modules, one idea each:

- ``cid``        CIDs (binary form, multiformats parsing)
- ``unixfs``     dag-pb / UnixFS node codec
- ``importer``   file -> UnixFS DAG, identical to ``ipfs add --cid-version=1 --raw-leaves``
- ``exporter``   UnixFS DAG -> file bytes, every block verified
- ``car``        CAR v1 import and export
- ``erasure``    zfec k-of-n over stripes of blocks
- ``merkle``     Merkle trees over share segments (storage proofs)
- ``manifest``   the DAG-CBOR share manifest of a stored object
- ``placement``  rendezvous hashing of stripes onto nodes
- ``blockstore`` the disk blockstore of a node
- ``node/``      the storage node HTTP service
- ``client``     the streaming put/get/repair/verify pipeline
"""
