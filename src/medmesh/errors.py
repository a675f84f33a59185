"""The medmesh exception tree.

Every error medmesh raises derives from :class:`MedmeshError`. Each carries a stable
``code`` (for APIs, exit statuses and tests) and a public ``message`` that never contains
protected health information (PHI), key material or plaintext. Third-party errors are
converted at the boundary and chained with ``raise ... from exc``.

    MedmeshError
    ├── InvalidInputError (ValueError)        bad arguments or malformed data from a caller
    │   ├── InvalidCidError                   text or bytes that are not a valid CID
    │   └── DicomError                        not a DICOM file, truncated, or missing its UIDs
    ├── IntegrityError                         data failed a cryptographic check
    │   ├── BlockMismatchError                 block bytes do not hash to their CID
    │   └── DecryptionError (crypto/errors.py) sealed stream or capsule failed to open
    ├── NotFoundError (KeyError)               a block, object or node is not known
    ├── StorageError                           the storage network could not do the work
    │   ├── InsufficientSharesError            fewer than k shares reachable for some stripes
    │   ├── NodeUnavailableError               a node did not answer or answered an error
    │   └── StorageFullError                   disk or quota exhausted (HTTP 507)
    ├── AuthError                              a signed request was refused
    │   ├── SignatureError                     malformed or invalid signature
    │   ├── ReplayError                        reused nonce or stale timestamp
    │   └── UntrustedSignerError               valid signature from a key the node does not trust
    ├── KeystoreError                          keystore missing, corrupt or wrong passphrase
    ├── LedgerError                            the chain refused or could not do the work
    │   ├── RpcUnavailableError                the JSON-RPC endpoint did not answer
    │   ├── WrongChainError                    the endpoint serves another chain than configured
    │   ├── RevertError                        a contract call reverted (``reason`` decoded)
    │   ├── OutOfGasError                      a transaction ran out of gas
    │   └── TransactionTimeoutError            a transaction was not mined in time
    ├── ConsentError                           access refused: no valid grant (logged)
    └── ConfigError                            bad configuration or home folder
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from os import PathLike

__all__ = [
    "AuthError",
    "BlockMismatchError",
    "ConfigError",
    "ConsentError",
    "DicomError",
    "InsufficientSharesError",
    "IntegrityError",
    "InvalidCidError",
    "InvalidInputError",
    "KeystoreError",
    "LedgerError",
    "MedmeshError",
    "NodeUnavailableError",
    "NotFoundError",
    "OutOfGasError",
    "ReplayError",
    "RevertError",
    "RpcUnavailableError",
    "SignatureError",
    "StorageError",
    "StorageFullError",
    "TransactionTimeoutError",
    "UntrustedSignerError",
    "WrongChainError",
]


class MedmeshError(Exception):
    """Root of every medmesh error.

    ``message`` is safe to show to users and to log: it must never contain PHI or keys.
    """

    code: str = "medmesh_error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.__class__.__doc__ or self.code
        super().__init__(self.message)


class InvalidInputError(MedmeshError, ValueError):
    """Invalid input."""

    code = "invalid_input"


class InvalidCidError(InvalidInputError):
    """Not a valid CID."""

    code = "invalid_cid"


class DicomError(InvalidInputError):
    """Not a readable, complete DICOM file.

    The message names the problem only (``"truncated: pixel data ends after the end of the
    file"``); ``path``, when set, says which file, and is kept out of the message because
    file and folder names can carry PHI.
    """

    code = "invalid_dicom"

    def __init__(self, message: str | None = None, *, path: PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = path


class IntegrityError(MedmeshError):
    """Data failed an integrity check."""

    code = "integrity"


class BlockMismatchError(IntegrityError):
    """Block bytes do not match their CID."""

    code = "block_mismatch"


class NotFoundError(MedmeshError, KeyError):
    """Not found."""

    code = "not_found"

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class StorageError(MedmeshError):
    """The storage network could not complete the operation."""

    code = "storage"


class InsufficientSharesError(StorageError):
    """Fewer than k shares could be fetched for some stripes."""

    code = "insufficient_shares"

    def __init__(self, message: str, missing_stripes: list[int]) -> None:
        super().__init__(message)
        self.missing_stripes = missing_stripes


class NodeUnavailableError(StorageError):
    """A storage node did not answer or refused the request."""

    code = "node_unavailable"


class StorageFullError(StorageError):
    """The node's disk or quota is full."""

    code = "storage_full"


class AuthError(MedmeshError):
    """The request's authentication was refused."""

    code = "auth"


class SignatureError(AuthError):
    """Missing, malformed or invalid signature."""

    code = "bad_signature"


class ReplayError(AuthError):
    """The request was replayed or its timestamp is outside the accepted window."""

    code = "replay"


class UntrustedSignerError(AuthError):
    """The request is signed by a key this node does not trust."""

    code = "untrusted_signer"


class KeystoreError(MedmeshError):
    """The keystore could not be read or unlocked."""

    code = "keystore"


class LedgerError(MedmeshError):
    """The ledger refused or could not do the work."""

    code = "ledger_error"


class RpcUnavailableError(LedgerError):
    """The chain's JSON-RPC endpoint did not answer."""

    code = "rpc_unavailable"


class WrongChainError(LedgerError):
    """The JSON-RPC endpoint serves another chain than the one configured."""

    code = "wrong_chain"


class RevertError(LedgerError):
    """A contract call reverted; ``reason`` is the decoded revert reason, if any."""

    code = "reverted"

    def __init__(self, reason: str | None, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(
            message or (f"reverted: {reason}" if reason else "reverted without a reason")
        )


class OutOfGasError(LedgerError):
    """A transaction ran out of gas."""

    code = "out_of_gas"


class TransactionTimeoutError(LedgerError):
    """A transaction was sent but not mined in time; it may still be mined later."""

    code = "tx_timeout"


class ConsentError(MedmeshError, PermissionError):
    """Access refused: no valid grant covers this request now."""

    code = "no_consent"


class ConfigError(MedmeshError):
    """Invalid configuration."""

    code = "config"
