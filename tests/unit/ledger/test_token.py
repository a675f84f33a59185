"""Tests for contracts/HealthToken.vy: snekmate's ERC-20 as the network's MHT token."""

from __future__ import annotations

from typing import Any

import boa
import pytest

from tests.unit.ledger.world import TOKEN_SUPPLY, ZERO_ADDRESS, deployer

MAX_UINT256 = 2**256 - 1


@pytest.fixture(scope="session")
def alice() -> str:
    return boa.env.generate_address("alice")


@pytest.fixture(scope="session")
def bob() -> str:
    return boa.env.generate_address("bob")


def _names(logs: list[Any]) -> list[str]:
    return [type(e).__name__ for e in logs]


def test_metadata_and_initial_supply(token: Any) -> None:
    deployer_address = boa.env.eoa
    assert token.name() == "medmesh Health Token"
    assert token.symbol() == "MHT"
    assert token.decimals() == 18
    assert token.totalSupply() == TOKEN_SUPPLY
    assert token.balanceOf(deployer_address) == TOKEN_SUPPLY
    assert token.owner() == deployer_address
    assert token.is_minter(deployer_address) is True


def test_deployment_mints_to_the_deployer_with_a_transfer_event() -> None:
    token = deployer("HealthToken").deploy(123)
    transfers = [e for e in token.get_logs() if type(e).__name__ == "Transfer"]
    assert [(e.sender, e.receiver, e.value) for e in transfers] == [
        (ZERO_ADDRESS, boa.env.eoa, 123)
    ]


def test_zero_initial_supply() -> None:
    token = deployer("HealthToken").deploy(0)
    assert token.totalSupply() == 0
    assert token.balanceOf(boa.env.eoa) == 0


def test_transfer(token: Any, alice: str) -> None:
    assert token.transfer(alice, 10**18) is True
    (event,) = token.get_logs()
    assert type(event).__name__ == "Transfer"
    assert (event.sender, event.receiver, event.value) == (boa.env.eoa, alice, 10**18)
    assert token.balanceOf(alice) == 10**18
    assert token.balanceOf(boa.env.eoa) == TOKEN_SUPPLY - 10**18
    assert token.totalSupply() == TOKEN_SUPPLY


def test_transfer_revert_paths(token: Any, alice: str, bob: str) -> None:
    token.transfer(alice, 5)
    with boa.env.prank(alice), boa.reverts("erc20: transfer amount exceeds balance"):
        token.transfer(bob, 6)
    with boa.reverts("erc20: transfer to the zero address"):
        token.transfer(ZERO_ADDRESS, 1)
    assert token.balanceOf(alice) == 5
    assert token.balanceOf(bob) == 0


def test_approve_and_transfer_from(token: Any, alice: str, bob: str) -> None:
    assert token.approve(alice, 100) is True
    (event,) = token.get_logs()
    assert type(event).__name__ == "Approval"
    assert (event.owner, event.spender, event.value) == (boa.env.eoa, alice, 100)
    assert token.allowance(boa.env.eoa, alice) == 100

    owner = boa.env.eoa
    with boa.env.prank(alice):
        assert token.transferFrom(owner, bob, 60) is True
    assert _names(token.get_logs()) == ["Approval", "Transfer"]
    assert token.allowance(owner, alice) == 40
    assert token.balanceOf(bob) == 60
    with boa.env.prank(alice), boa.reverts("erc20: insufficient allowance"):
        token.transferFrom(owner, bob, 41)
    assert token.balanceOf(bob) == 60


def test_unlimited_allowance_is_not_spent(token: Any, alice: str, bob: str) -> None:
    owner = boa.env.eoa
    token.approve(alice, MAX_UINT256)
    with boa.env.prank(alice):
        token.transferFrom(owner, bob, 7)
    assert token.allowance(owner, alice) == MAX_UINT256


def test_approve_to_zero_address_is_refused(token: Any) -> None:
    with boa.reverts("erc20: approve to the zero address"):
        token.approve(ZERO_ADDRESS, 1)


def test_mint_by_the_owner(token: Any, alice: str) -> None:
    token.mint(alice, 42)
    (event,) = token.get_logs()
    assert (event.sender, event.receiver, event.value) == (ZERO_ADDRESS, alice, 42)
    assert token.balanceOf(alice) == 42
    assert token.totalSupply() == TOKEN_SUPPLY + 42


def test_mint_only_by_minters(token: Any, alice: str, bob: str) -> None:
    with boa.env.prank(alice), boa.reverts("erc20: access is denied"):
        token.mint(alice, 1)
    token.set_minter(alice, True)
    (event,) = token.get_logs()
    assert type(event).__name__ == "RoleMinterChanged"
    assert (event.minter, event.status) == (alice, True)
    with boa.env.prank(alice):
        token.mint(bob, 3)
    assert token.balanceOf(bob) == 3
    token.set_minter(alice, False)
    with boa.env.prank(alice), boa.reverts("erc20: access is denied"):
        token.mint(bob, 1)
    assert token.totalSupply() == TOKEN_SUPPLY + 3


def test_only_the_owner_appoints_minters(token: Any, alice: str, bob: str) -> None:
    with boa.env.prank(alice), boa.reverts("ownable: caller is not the owner"):
        token.set_minter(bob, True)
    with boa.reverts("erc20: minter is the zero address"):
        token.set_minter(ZERO_ADDRESS, True)
    with boa.reverts("erc20: minter is owner address"):
        token.set_minter(boa.env.eoa, False)
    assert token.is_minter(bob) is False


def test_mint_to_zero_address_is_refused(token: Any) -> None:
    with boa.reverts("erc20: mint to the zero address"):
        token.mint(ZERO_ADDRESS, 1)


def test_transfer_ownership_moves_the_minter_role(token: Any, alice: str) -> None:
    old = boa.env.eoa
    token.transfer_ownership(alice)
    assert token.owner() == alice
    assert token.is_minter(alice) is True
    assert token.is_minter(old) is False
    with boa.reverts("erc20: access is denied"):
        token.mint(old, 1)


def test_burn(token: Any, alice: str) -> None:
    token.transfer(alice, 10)
    with boa.env.prank(alice):
        token.burn(4)
        with boa.reverts("erc20: burn amount exceeds balance"):
            token.burn(7)
    assert token.balanceOf(alice) == 6
    assert token.totalSupply() == TOKEN_SUPPLY - 4
