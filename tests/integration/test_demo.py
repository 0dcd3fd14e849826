"""The demo `make run` plays, shortened to two weeks and 60 customers, on the five services as real
processes: its summary agrees with what the services stored, and playing it again adds nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest

from billing_common import db
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import free_port
from demo.__main__ import QUARTER_START, play
from demo.stripe_local import serve
from demo.stubs import Stubs
from tests.integration.suite import on_test_clock, running_suite

NAMES = ["quota", "gateway-adapter", "recurring", "dunning", "tier"]
CUSTOMERS = 60
DAYS = 14
STRIPE_KEY = "sk_test_demo_local_test_0000000000"


async def rows(env: InfraEnv, service: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        await conn.execute(f"SET search_path TO {db.quote_ident(f'{service}_{env.run_id}')}")
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


@pytest.mark.timeout(1200)
async def test_two_weeks_of_the_demo_are_billed_and_summarised_as_the_services_recorded_them(
    env: InfraEnv,
) -> None:
    port = free_port()
    stripe = await serve(port, STRIPE_KEY)
    extra = {name: on_test_clock(name) for name in NAMES}
    extra["gateway-adapter"] |= {
        "GATEWAY_STRIPE_API_BASE": f"http://127.0.0.1:{port}",
        "GATEWAY_STRIPE_API_KEYS": f"default={STRIPE_KEY}",
    }
    try:
        async with running_suite(env, NAMES, extra) as suite:
            addresses = {
                name: suite.processes[name].address for name in ("quota", "recurring", "dunning", "tier")
            }
            stubs = Stubs.connect(addresses, env.token("operator"))
            try:
                summary = await play(stubs, CUSTOMERS, DAYS, QUARTER_START)
                assert summary.days == DAYS
                assert summary.still_running == []

                invoices = await rows(env, "recurring", "SELECT status, total_minor FROM invoices")
                assert sum(summary.invoices.values()) == len(invoices) > CUSTOMERS // 2
                assert summary.invoices == Counter(r["status"].lower() for r in invoices)
                assert summary.charged_minor == sum(
                    r["total_minor"] for r in invoices if r["status"].lower() == "paid"
                )
                assert summary.ledger_transactions > len(invoices)
                assert summary.ledger_unbalanced == 0
                cases = await rows(env, "dunning", "SELECT state FROM cases")
                assert sum(summary.cases.values()) == sum(summary.failures.values()) == len(cases) > 0
                assert summary.cases == Counter(r["state"].lower() for r in cases)
                changes = await rows(
                    env, "tier", "SELECT rule_id FROM tier_history WHERE previous_tier IS NOT NULL"
                )
                assert summary.tier_changes == Counter(r["rule_id"] for r in changes)
                assert {"sso-pro", "api-plus", "rollup-highest"} <= set(summary.tier_changes)
                assert summary.quota_denials > 0

                # The plan-based customers pay for themselves: those the demo moved up (a sixth by
                # API clients, a sixth by SSO) end on their tier's plan, with the unused rest of a
                # paid period prorated onto their next invoice.
                mapped = CUSTOMERS // 2
                assert summary.tier_plans == Counter(
                    {"lite": mapped - 2 * (mapped // 6), "plus": mapped // 6, "pro": mapped // 6}
                )
                plans = await rows(env, "recurring", "SELECT plan_code FROM subscriptions WHERE tier_mapped")
                assert summary.tier_plans == Counter(r["plan_code"] for r in plans)
                prorated = await rows(
                    env,
                    "recurring",
                    "SELECT description FROM pending_prorations WHERE description LIKE '%lite -> p%'",
                )
                assert prorated

                again = await play(stubs, CUSTOMERS, DAYS, QUARTER_START)
                assert again.days == 0  # the clock is past the demo's days: nothing is billed twice
                assert again.invoices == summary.invoices
                assert again.charged_minor == summary.charged_minor
            finally:
                await stubs.close()
    finally:
        await stripe.cleanup()
