"""medmesh.identity: who a participant is, and the keys they hold.

* :mod:`~medmesh.identity.wallet`: a :class:`Wallet` is a secp256k1 Ethereum account (address,
  DID ``did:pkh:eip155:<chain-id>:<address>``, EIP-191 signatures) plus encryption keys for
  key capsules.
* :mod:`~medmesh.identity.keystore`: the wallet's encrypted file, a valid Ethereum keystore v3
  (scrypt) with the encryption keys in an extra ``"medmesh"`` field.

This package never imports ``cryptography``; key types and primitives come from
:mod:`medmesh.crypto`.

Example::

    from medmesh.identity import Wallet, load_wallet, save_wallet

    wallet = Wallet.create()
    save_wallet(wallet, "wallet.json", passphrase)
    assert load_wallet("wallet.json", passphrase).address == wallet.address
"""

from __future__ import annotations

from medmesh.identity.keystore import WrongPassphraseError as WrongPassphraseError
from medmesh.identity.keystore import import_wallet as import_wallet
from medmesh.identity.keystore import load_wallet as load_wallet
from medmesh.identity.keystore import read_address as read_address
from medmesh.identity.keystore import save_wallet as save_wallet
from medmesh.identity.wallet import Wallet as Wallet
from medmesh.identity.wallet import recover_signer as recover_signer
from medmesh.identity.wallet import verify_signer as verify_signer

__all__ = [
    "Wallet",
    "WrongPassphraseError",
    "import_wallet",
    "load_wallet",
    "read_address",
    "recover_signer",
    "save_wallet",
    "verify_signer",
]
