# pragma version ~=0.4.3
"""
@title medmesh HealthToken (MHT)
@license Apache-2.0
@notice The network's ERC-20 token, used for payments to patients, storage
        deals and node staking. snekmate's audited ERC-20 (with EIP-2612 permit)
        and ownable modules; the deployer owns the token and is its first minter.
"""

from ethereum.ercs import IERC20

implements: IERC20

from ethereum.ercs import IERC20Detailed

implements: IERC20Detailed

from snekmate.auth import ownable as ow

initializes: ow

from snekmate.tokens import erc20

initializes: erc20[ownable := ow]

exports: erc20.__interface__


@deploy
def __init__(initial_supply: uint256):
    ow.__init__()
    erc20.__init__("medmesh Health Token", "MHT", 18, "medmesh Health Token", "1")
    erc20._mint(msg.sender, initial_supply)
