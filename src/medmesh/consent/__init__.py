"""Consent: the policy (does this grant cover this request, now?), key sharing with grantees,
and the gateway that enforces consent and logs every access.

    policy       the rules, pure (mirrors contracts/Consent.vy)
    capsules     capsule blocks: data keys wrapped for a grantee, kept in the storage network
    sharing      RecordKeeper: put / grant / revoke / erase for one wallet
    sessions     sign-in with Ethereum (EIP-4361) sessions
    access_log   allowed accesses on chain in batches, refusals locally
    gateway      the FastAPI service (``medmesh gateway run``)
    daemon       the gateway as a background service of a home (``medmesh gateway up``)
"""
