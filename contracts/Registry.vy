# pragma version ~=0.4.3
"""
@title medmesh Registry
@license Apache-2.0
@notice Who takes part in the network: each participant's roles, its X25519
        encryption public key (to which record keys are wrapped) and a metadata
        URI (for nodes and gateways: their endpoint). Anyone may register as a
        patient; governance admits institutions and nodes (providers, researchers,
        insurers, inspectors, gateways, storage and compute nodes) and can expel
        them. Governance rights are held with snekmate's access control, so a
        multisig or timelock contract can hold them in production.
        No personal data is stored: only addresses, role flags, public keys and
        a URI the participant chooses.
"""

from snekmate.auth import access_control

initializes: access_control

exports: (
    access_control.hasRole,
    access_control.getRoleAdmin,
    access_control.supportsInterface,
    access_control.DEFAULT_ADMIN_ROLE,
)

from interfaces import IRegistry

implements: IRegistry

# @dev Holders may admit and expel participants. Mirrors Role.GOVERNANCE.
GOVERNANCE_ROLE: public(constant(bytes32)) = keccak256("GOVERNANCE")

MAX_URI: constant(uint256) = 256

roles: public(HashMap[address, IRegistry.Role])
encryption_key: public(HashMap[address, bytes32])
metadata_uri: public(HashMap[address, String[MAX_URI]])
# accounts governance expelled from every role: they may not register again
# by themselves (which would revive the grants made to them); admit lifts it
barred: public(HashMap[address, bool])


event Registered:
    account: indexed(address)
    roles: IRegistry.Role
    encryption_key: bytes32
    metadata_uri: String[MAX_URI]


event RolesChanged:
    account: indexed(address)
    by: indexed(address)
    roles: IRegistry.Role


event EncryptionKeyRotated:
    account: indexed(address)
    encryption_key: bytes32


event MetadataChanged:
    account: indexed(address)
    metadata_uri: String[MAX_URI]


@deploy
def __init__(encryption_key: bytes32, metadata_uri: String[MAX_URI]):
    """
    @notice The deployer becomes the first governance participant.
    """
    access_control.__init__()
    access_control._grant_role(GOVERNANCE_ROLE, msg.sender)
    self.roles[msg.sender] = IRegistry.Role.GOVERNANCE
    self.encryption_key[msg.sender] = encryption_key
    self.metadata_uri[msg.sender] = metadata_uri
    log Registered(account=msg.sender, roles=IRegistry.Role.GOVERNANCE, encryption_key=encryption_key, metadata_uri=metadata_uri)


@external
def register(encryption_key: bytes32, metadata_uri: String[MAX_URI]):
    """
    @notice Publish (or replace) your encryption key and metadata. An address
            with no role yet becomes a patient, unless governance expelled it.
    """
    assert encryption_key != empty(bytes32), "registry: empty encryption key"
    current: IRegistry.Role = self.roles[msg.sender]
    if current == empty(IRegistry.Role):
        assert not self.barred[msg.sender], "registry: expelled; ask governance to admit you"
        current = IRegistry.Role.PATIENT
        self.roles[msg.sender] = current
    self.encryption_key[msg.sender] = encryption_key
    self.metadata_uri[msg.sender] = metadata_uri
    log Registered(account=msg.sender, roles=current, encryption_key=encryption_key, metadata_uri=metadata_uri)


@external
def admit(account: address, roles: IRegistry.Role):
    """
    @notice Governance adds `roles` to `account` (which registers its own key).
    """
    access_control._check_role(GOVERNANCE_ROLE, msg.sender)
    assert account != empty(address), "registry: zero address"
    assert roles != empty(IRegistry.Role), "registry: no roles"
    updated: IRegistry.Role = self.roles[account] | roles
    self.roles[account] = updated
    if self.barred[account]:
        self.barred[account] = False
    if IRegistry.Role.GOVERNANCE in roles:
        access_control._grant_role(GOVERNANCE_ROLE, account)
    log RolesChanged(account=account, by=msg.sender, roles=updated)


@external
def expel(account: address, roles: IRegistry.Role):
    """
    @notice Governance removes `roles` from `account`. A participant left with
            no role is no longer registered: grants to it stop working, and
            it cannot register again by itself.
    """
    access_control._check_role(GOVERNANCE_ROLE, msg.sender)
    assert roles != empty(IRegistry.Role), "registry: no roles"
    assert not (account == msg.sender and IRegistry.Role.GOVERNANCE in roles), "registry: cannot expel yourself from governance"
    updated: IRegistry.Role = self.roles[account] & ~roles
    self.roles[account] = updated
    if updated == empty(IRegistry.Role):
        self.barred[account] = True
    if IRegistry.Role.GOVERNANCE in roles:
        access_control._revoke_role(GOVERNANCE_ROLE, account)
    log RolesChanged(account=account, by=msg.sender, roles=updated)


@external
def rotate_key(encryption_key: bytes32):
    """
    @notice Replace your encryption key, e.g. after a device is lost. Capsules
            made for the old key keep working only with the old private key.
    """
    assert self.roles[msg.sender] != empty(IRegistry.Role), "registry: not registered"
    assert encryption_key != empty(bytes32), "registry: empty encryption key"
    self.encryption_key[msg.sender] = encryption_key
    log EncryptionKeyRotated(account=msg.sender, encryption_key=encryption_key)


@external
def set_metadata(metadata_uri: String[MAX_URI]):
    assert self.roles[msg.sender] != empty(IRegistry.Role), "registry: not registered"
    self.metadata_uri[msg.sender] = metadata_uri
    log MetadataChanged(account=msg.sender, metadata_uri=metadata_uri)


@external
@view
def has_role(account: address, roles: IRegistry.Role) -> bool:
    """
    @notice True if `account` holds any of `roles`.
    """
    return (self.roles[account] & roles) != empty(IRegistry.Role)


@external
@view
def is_registered(account: address) -> bool:
    return self.roles[account] != empty(IRegistry.Role)
