"""The console in a real browser (Debian's chromium driven by Playwright, no browser download):
sign in, follow account -> subscription -> invoice -> dunning case, act, see the change; the tier
timeline shows the rule and its evidence; a finance user has no actions. Screenshots of the main
pages go to artifacts/console/ (not committed)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import PASSWORDS, RunningConsole

# Debian's chromium (`make install` installs it when missing); Playwright downloads no browser.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path("artifacts/console")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


async def sign_in(browser: Browser, console: RunningConsole, name: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{console.url}/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORDS[name])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("who")).to_contain_text(name)
    return page


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_an_operator_follows_an_account_to_its_dunning_case_and_pauses_it(
    browser: Browser, running_console: RunningConsole
) -> None:
    seeded = running_console.seeded
    page = await sign_in(browser, running_console, "alice")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.locator("#chart-revenue")).to_be_visible()
    assert await page.evaluate("Object.keys(Chart.instances).length") == 4  # all four charts drawn
    await shot(page, "overview")

    await page.get_by_role("link", name="Accounts", exact=True).click()
    await page.get_by_role("link", name=seeded.account_id, exact=True).first.click()
    await expect(page.get_by_role("heading", name=f"Account {seeded.account_id}")).to_be_visible()
    await shot(page, "account")

    await page.get_by_role("link", name=seeded.failing_subscription_id).click()
    await expect(
        page.get_by_role("heading", name=f"Subscription {seeded.failing_subscription_id}")
    ).to_be_visible()
    await shot(page, "subscription")

    await page.get_by_role("link", name=seeded.invoice_id).click()
    await expect(page.get_by_test_id("invoice-status")).to_have_text("payment failed")
    await shot(page, "invoice")

    await page.get_by_test_id("case-link").click()
    await expect(page.get_by_test_id("case-state")).to_have_text("retry scheduled")
    await expect(page.get_by_test_id("case-timeline")).to_contain_text("estimated success")
    await page.get_by_label("Reason").first.fill("customer called, pays Friday")
    await page.get_by_role("button", name="Pause").click()
    await expect(page.get_by_role("status")).to_contain_text("pause: done")
    await expect(page.get_by_test_id("case-state")).to_have_text("held")
    await expect(page.get_by_test_id("case-timeline")).to_contain_text(
        "customer called, pays Friday (by operator:alice)"
    )
    await shot(page, "dunning-case")

    await page.get_by_role("button", name="Resume").click()
    await expect(page.get_by_test_id("case-state")).not_to_have_text("held")
    await expect(page.get_by_test_id("case-timeline")).to_contain_text("by operator:alice")
    await page.close()


async def test_the_tier_timeline_says_when_and_why_the_account_became_pro(
    browser: Browser, running_console: RunningConsole
) -> None:
    page = await sign_in(browser, running_console, "bob")
    await page.goto(f"{running_console.url}/accounts/{running_console.seeded.account_id}")
    await expect(page.get_by_test_id("current-tier")).to_contain_text("Pro")
    became = page.get_by_test_id("became")
    await expect(became).to_contain_text("Became Pro")
    rule = (await became.locator("code").inner_text()).strip()
    assert rule
    timeline = page.get_by_test_id("tier-timeline")
    await expect(timeline).to_contain_text(f"Lite → Pro, rule {rule}")
    await expect(timeline.locator("del").first).to_be_visible()  # the evidence that changed, before and after

    await page.get_by_role("link", name="Tier changes").click()
    await page.get_by_label("Rule").select_option(rule)
    await page.get_by_label("New tier").select_option("PRO")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("table")).to_contain_text(running_console.seeded.account_id)
    await shot(page, "tier-changes")

    await page.goto(f"{running_console.url}/subscriptions/{running_console.seeded.pro_subscription_id}")
    await expect(page.get_by_test_id("history-entry").first).to_contain_text("plan_code")
    await page.goto(f"{running_console.url}/runs")
    await shot(page, "runs")
    await page.goto(f"{running_console.url}/runs/{running_console.seeded.run_id}")
    failing = (
        page.get_by_test_id("run-items")
        .get_by_role("row")
        .filter(has_text=running_console.seeded.failing_subscription_id)
    )
    await expect(failing).to_contain_text("failed")
    await expect(failing).to_contain_text("sandbox-card")
    await expect(failing.get_by_role("link", name=running_console.seeded.invoice_id)).to_be_visible()
    await shot(page, "run")
    await page.close()


async def test_a_finance_user_sees_no_actions_and_cannot_post_one(
    browser: Browser, running_console: RunningConsole
) -> None:
    case_id = running_console.seeded.case_id
    page = await sign_in(browser, running_console, "bob")
    await page.goto(f"{running_console.url}/dunning/{case_id}")
    await expect(page.get_by_test_id("case-state")).to_be_visible()
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    await expect(page.get_by_role("button", name="Retry now")).to_have_count(0)
    state = await page.get_by_test_id("case-state").inner_text()
    csrf = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = await page.request.post(
        f"{running_console.url}/dunning/{case_id}/retry", form={"csrf_token": csrf or ""}, max_redirects=0
    )
    assert answer.status == 303 and "may+read%2C+not+act" in answer.headers["location"]
    await page.reload()
    await expect(page.get_by_test_id("case-state")).to_have_text(state)
    await page.close()
