"""The ledger: medmesh's contracts on an EVM chain, and everything that talks to them.

artifacts   compile contracts/*.vy (vyper + snekmate), cached by source digest
chains      the embedded Anvil chain (durable state) and its supervisor
rpc         JSON-RPC with batches and typed errors
tx          locally signed, pipelined transactions; receipts; revert reasons
contracts   typed wrappers (Registry, Records, Consent, HealthToken), Role, Purpose, Scope
anchoring   record ids, kind tags; anchor_many's plan (checks, transactions, rounds)
deploy      deployment and the address book
client      Ledger: the four contracts on one chain for one wallet
indexer     events into SQLite / PostgreSQL, for fast questions
local       a home folder's chain, address book and index
"""
