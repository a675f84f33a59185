"""The consent story in a real browser, as issue 5 tells it.

A patient signs in with their keystore, shares one record with a hospital that had nothing
of theirs; the hospital sees exactly that record; the patient revokes; the hospital is
refused; the patient's audit trail shows the allowed read and the refusal. Every page visited
is saved as a screenshot (``build/e2e/<test>/``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest

from medmesh.devnet import Devnet
from medmesh.portal.volume import VolumeLog
from tests.e2e.conftest import Artifacts, Network
from tests.integration.test_cli import medmesh

pytestmark = pytest.mark.slow


def sign_in(page: Any, network: Network, name: str, artifacts: Artifacts) -> None:
    page.goto(f"{network.url}/portal/signin")
    page.get_by_label("Who are you?").select_option(name)
    page.get_by_label("Passphrase").fill(network.passphrase)
    artifacts.shot(page, f"sign-in-{name}")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in", exact=True).click()
    assert name in page.get_by_test_id("signed-in-as").inner_text()


def sign_out(page: Any) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()


def test_grant_one_record_read_revoke_refuse_audit(
    browser: Any, network: Network, artifacts: Artifacts
) -> None:
    patient = network.person("patient-001")
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # The patient: their timeline, then one record shared with a hospital that has nothing
    sign_in(page, network, "patient-001", artifacts)
    page.goto(f"{network.url}/portal/patient")
    rows = page.get_by_test_id("record-row")
    assert rows.count() > 1
    artifacts.shot(page, "patient-timeline")
    condition = page.locator('[data-testid="record-row"][data-kind="fhir:Condition"]').first
    record = condition.get_attribute("data-record")
    assert record
    page.goto(f"{network.url}/portal/patient/consents")
    before = {r.get_attribute("data-grantee") for r in page.get_by_test_id("consent-row").all()}
    hospital = next(
        p for p in network.population["participants"]
        if p["role"] == "hospital" and p["address"] not in before
    )  # fmt: skip
    page.goto(f"{network.url}/portal/patient/records/{record}")
    artifacts.shot(page, "patient-record")
    page.get_by_role("link", name="Share this record").click()
    page.get_by_label("Provider or lab").select_option(hospital["address"])
    assert page.get_by_label("Which records").input_value().startswith("record:")
    page.get_by_label("Purpose").select_option("treatment")
    page.get_by_role("button", name="Grant access").click()
    page.wait_for_load_state()
    shared = page.locator(f'[data-testid="consent-row"][data-grantee="{hospital["address"]}"]')
    assert shared.count() == 1
    artifacts.shot(page, "patient-consents-after-grant")
    sign_out(page)

    # The hospital sees the patient, and of their records exactly the one shared
    sign_in(page, network, hospital["name"], artifacts)
    page.goto(f"{network.url}/portal/provider")
    listed = page.locator(f'[data-testid="patient-row"][data-patient="{patient["address"]}"]')
    assert listed.count() == 1
    artifacts.shot(page, "provider-patients")
    listed.get_by_role("link").first.click()
    page.wait_for_load_state()
    seen = [r.get_attribute("data-record") for r in page.get_by_test_id("record-row").all()]
    assert seen == [record]
    artifacts.shot(page, "provider-patient-records")
    patient_page = page.url
    page.get_by_test_id("record-row").get_by_role("link", name=re.compile("Details")).click()
    page.wait_for_load_state()
    assert page.get_by_test_id("record-detail").get_attribute("data-record") == record
    artifacts.shot(page, "provider-record")
    record_page = page.url
    sign_out(page)

    # The patient revokes it: two clicks
    sign_in(page, network, "patient-001", artifacts)
    page.goto(f"{network.url}/portal/patient/consents")
    shared = page.locator(f'[data-testid="consent-row"][data-grantee="{hospital["address"]}"]')
    shared.get_by_role("button", name=re.compile("Revoke")).click()
    artifacts.shot(page, "patient-revoke-confirm")
    page.get_by_role("button", name="Revoke access").click()
    page.wait_for_load_state()
    assert (
        page.locator(f'[data-testid="consent-row"][data-grantee="{hospital["address"]}"]').count()
        == 0
    )
    artifacts.shot(page, "patient-consents-after-revoke")
    sign_out(page)

    # The hospital is refused, with a clear page: the record it had open, and the patient
    sign_in(page, network, hospital["name"], artifacts)
    for where, name in (
        (record_page, "provider-refused-record"),
        (patient_page, "provider-refused"),
    ):
        answer = page.goto(where)
        assert answer is not None and answer.status == 403
        assert page.get_by_test_id("error-message").is_visible()
        assert page.get_by_test_id("record-row").count() == 0
        assert page.get_by_test_id("record-detail").count() == 0
        artifacts.shot(page, name)
    sign_out(page)

    # The patient's audit trail shows the allowed read and the refusal (allowed reads are
    # mined and indexed within a few seconds)
    sign_in(page, network, "patient-001", artifacts)
    deadline = time.monotonic() + 30
    while True:
        page.goto(f"{network.url}/portal/patient/audit")
        outcomes = {
            r.get_attribute("data-outcome")
            for r in page.get_by_test_id("audit-row").all()
            if r.get_attribute("data-record") == record
        }
        if {"allowed", "refused"} <= outcomes or time.monotonic() > deadline:
            break
        time.sleep(1)
    artifacts.shot(page, "patient-audit")
    assert {"allowed", "refused"} <= outcomes

    # The network page, as anyone sees it
    page.goto(f"{network.url}/portal/network")
    assert page.locator('[data-testid="node-row"][data-state="up"]').count() == 3
    artifacts.shot(page, "network")
    page.close()


def test_keyboard_only_sign_in_and_phone_layout(
    browser: Any, network: Network, artifacts: Artifacts
) -> None:
    """Sign in without a mouse; every page fits a phone's width (no sideways scrolling)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto(f"{network.url}/portal/signin")
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.textContent").strip() == ("Skip to main content")
    page.focus("#user")
    page.keyboard.press("End")  # the last demo user in the list
    page.keyboard.press("Tab")
    page.keyboard.type(network.passphrase)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    artifacts.shot(page, "phone-after-sign-in")
    assert page.get_by_test_id("signed-in-as").count() == 1
    for path in ("patient", "patient/consents", "patient/audit", "patient/upload", "network"):
        page.goto(f"{network.url}/portal/{path}")
        artifacts.shot(page, f"phone-{path}")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"/portal/{path} scrolls sideways by {overflow} px on a phone"
    context.close()


def test_open_network_page_shows_a_node_and_then_the_gateway_going_down(
    browser: Any, network: Network, artifacts: Artifacts
) -> None:
    """With the network page open (and a patient's page in another tab), a storage node is
    stopped and then the gateway is killed: without a reload, the page shows the node down,
    then the gateway down with a banner on both tabs; when the gateway is started again the
    banner goes away. Last in this module: it stops parts of the shared network."""
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, network, "patient-001", artifacts)
    other = context.new_page()
    other.goto(f"{network.url}/portal/patient")
    page.goto(f"{network.url}/portal/network")
    rows = page.get_by_test_id("node-row")
    assert rows.count() == 3
    assert page.get_by_test_id("gateway-state").inner_text() == "up"
    assert page.get_by_test_id("gateway-banner").is_hidden()
    artifacts.shot(page, "network-all-up")

    devnet = Devnet(network.home / "devnet")
    stopped = devnet.status()[-1]
    assert devnet.stop_node(stopped.index)
    page.wait_for_selector(f'tr[data-url="{stopped.url}"][data-state="down"]', timeout=15_000)
    states = [rows.nth(i).get_attribute("data-state") for i in range(3)]
    assert states.count("down") == 1 and states.count("up") == 2
    artifacts.shot(page, "network-node-down")

    pid = int((network.home / "gateway" / "gateway.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)  # no clean shutdown: as if it crashed
    banner = page.get_by_test_id("gateway-banner")
    banner.wait_for(state="visible", timeout=15_000)
    assert "gateway is not answering" in banner.inner_text()
    assert page.get_by_test_id("gateway-state").inner_text() == "down"
    assert {rows.nth(i).get_attribute("data-state") for i in range(3)} == {"unknown"}
    other.get_by_test_id("gateway-banner").wait_for(state="visible", timeout=15_000)
    artifacts.shot(page, "network-gateway-down")
    artifacts.shot(other, "patient-page-gateway-down")

    port = network.url.rsplit(":", 1)[1]
    restarted = time.time()
    medmesh(network.home, "gateway", "up", "--fhir", "--port", port)
    banner.wait_for(state="hidden", timeout=20_000)
    assert page.get_by_test_id("gateway-state").inner_text() == "up"
    page.wait_for_selector(f'tr[data-url="{stopped.url}"][data-state="down"]', timeout=15_000)
    artifacts.shot(page, "network-gateway-back")
    # the restarted gateway's sampler took a sample of its own (no page was rendered since)
    volume = VolumeLog(network.home / "portal.db")
    fresh = volume.samples(since=restarted - 1)
    volume.close()
    assert fresh and (fresh[-1].nodes_up, fresh[-1].nodes) == (2, 3)
    assert fresh[-1].bytes_used > 0
    context.close()
