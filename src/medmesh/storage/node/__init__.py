"""The storage node: a disk blockstore behind the IPFS Trustless Gateway protocol.

- ``config``     node settings (value object, JSON file in the data folder)
- ``service``    transport-agnostic operations (store, fetch, index, challenge)
- ``http``       the aiohttp application mapping HTTP onto the service
- ``writers``    who may write: trusted addresses, or writers on the ledger's Registry
- ``ratelimit``  an optional token bucket for outgoing bandwidth
- ``dht``        Kademlia provider records
- ``daemon``     process entry point (``medmesh node run`` / ``medmesh-node``)
"""
