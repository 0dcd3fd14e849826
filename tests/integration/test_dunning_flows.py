"""Flow 3 (DESIGN §2): dunning recovers failed payments through recurring and the sandbox gateway.

All four services run as real processes. Recurring's run charges the first time; dunning's
attempts go through recurring.RetryInvoicePayment with the key "<case id>:<attempt>", and every
charge is counted on the sandbox gateway's own ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import asyncpg
import pytest

from billing.common.v1 import common_pb2 as common
from billing.dunning.v1 import dunning_pb2 as dpb
from billing.recurring.v1 import recurring_pb2 as rpb
from billing_common import db
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.processes import start_process
from tests.integration.suite import Suite, running_suite

DAY = date(2031, 5, 5)
SERVICES = ["quota", "gateway-adapter", "recurring", "dunning"]
FAST_DUNNING = {
    "DUNNING_WORKER_POLL_INTERVAL": "0.1s",
    "DUNNING_ATTEMPT_LEASE": "3s",
    "DUNNING_UNAVAILABLE_BACKOFF": "1s",
    "DUNNING_CASE_LOCK_TTL": "2s",
}


@contextlib.asynccontextmanager
async def suite_with_dunning(env: InfraEnv, gateway_latency: str = "0s") -> AsyncIterator[Suite]:
    extra = {"dunning": FAST_DUNNING, "gateway-adapter": {"GATEWAY_SANDBOX_LATENCY": gateway_latency}}
    async with running_suite(env, SERVICES, extra) as suite:
        yield suite


async def sandbox_charges(suite: Suite) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(suite.env.infra.postgres_admin_url)
    try:
        table = f"{db.quote_ident(suite.gateway_schema)}.sandbox_charges"
        return await conn.fetch(f"SELECT idempotency_key, token, outcome FROM {table} ORDER BY created_at")
    finally:
        await conn.close()


async def failed_invoice(suite: Suite, account: str, token: str, merchant: str = "merchant-1") -> rpb.Invoice:
    """A weekly subscription whose first charge, in the run of DAY, fails with `token`."""
    recurring = suite.stub("recurring")
    await recurring.CreateSubscription(
        rpb.CreateSubscriptionRequest(
            account_id=account,
            merchant_id=merchant,
            custom_amount=common.Money(amount_minor=2500, currency="USD"),
            frequency=common.BILLING_FREQUENCY_WEEKLY,
            start_date=common.Date(year=DAY.year, month=DAY.month, day=DAY.day),
            payment_method=common.PaymentMethod(type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token=token),
            idempotency_key=f"create-{account}",
        )
    )
    run = (
        await recurring.RunBilling(
            rpb.RunBillingRequest(
                billing_date=common.Date(year=DAY.year, month=DAY.month, day=DAY.day), kind=rpb.RUN_KIND_DAILY
            )
        )
    ).run

    async def settled() -> bool:
        found = (await recurring.GetRun(rpb.GetRunRequest(run_id=run.run_id))).run
        return found.state in (rpb.RUN_STATE_COMPLETED, rpb.RUN_STATE_HALTED)

    await eventually(settled, timeout=60)
    [invoice] = (await recurring.ListInvoices(rpb.ListInvoicesRequest(account_id=account))).invoices
    assert invoice.status == rpb.INVOICE_STATUS_PAYMENT_FAILED
    return invoice


async def case_in_state(suite: Suite, invoice_id: str, state: int, timeout: float = 30) -> dpb.DunningCase:
    dunning = suite.stub("dunning")

    async def reached() -> dpb.DunningCase | None:
        try:
            found = (await dunning.GetCase(dpb.GetCaseRequest(invoice_id=invoice_id))).dunning_case
        except Exception:
            return None
        return found if found.state == state else None

    result: dpb.DunningCase = await eventually(reached, timeout=timeout)
    return result


async def invoice_status(suite: Suite, invoice_id: str, status: int) -> rpb.Invoice:
    recurring = suite.stub("recurring")

    async def reached() -> rpb.Invoice | None:
        found = (await recurring.GetInvoice(rpb.GetInvoiceRequest(invoice_id=invoice_id))).invoice
        return found if found.status == status else None

    result: rpb.Invoice = await eventually(reached, timeout=30)
    return result


async def subscription_status(suite: Suite, subscription_id: str, status: int) -> Any:
    recurring = suite.stub("recurring")

    async def reached() -> Any:
        found = (
            await recurring.GetSubscription(rpb.GetSubscriptionRequest(subscription_id=subscription_id))
        ).subscription
        return found if found.status == status else None

    return await eventually(reached, timeout=30)


async def retry_now(suite: Suite, case_id: str) -> None:
    await suite.stub("dunning").RetryNow(dpb.RetryNowRequest(case_id=case_id))


def fixed_policy(merchant: str, attempts: int) -> dpb.RetryPolicy:
    policy = dpb.RetryPolicy(
        merchant_id=merchant,
        max_attempts=attempts,
        fixed=dpb.FixedSchedule(day_offsets=list(range(1, attempts + 1))),
        exhausted_action=dpb.EXHAUSTED_ACTION_SUSPEND,
    )
    policy.max_window.FromSeconds(14 * 86400)
    return policy


@pytest.mark.timeout(240)
async def test_a_soft_decline_is_recovered_on_a_later_attempt(env: InfraEnv) -> None:
    async with (
        suite_with_dunning(env) as suite,
        EventCollector(env.infra.amqp_url, env.exchange, ["dunning.*"]) as events,
    ):
        invoice = await failed_invoice(suite, "acct-flaky", "tok_flaky_2")
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RETRY_SCHEDULED)
        await retry_now(suite, case.case_id)  # attempt 1: the token's second decline

        async def second_attempt_scheduled() -> bool:
            found = (
                await suite.stub("dunning").GetCase(dpb.GetCaseRequest(case_id=case.case_id))
            ).dunning_case
            return found.state == dpb.CASE_STATE_RETRY_SCHEDULED and len(found.attempts) == 2

        await eventually(second_attempt_scheduled, timeout=30)
        await retry_now(suite, case.case_id)  # attempt 2 succeeds
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RECOVERED)

        # recurring's invoice.paid event may recover the case before dunning's worker records the
        # answer of the attempt that paid it: that outcome is kept when it arrives.
        async def outcomes_recorded() -> bool:
            found = (
                await suite.stub("dunning").GetCase(dpb.GetCaseRequest(case_id=case.case_id))
            ).dunning_case
            return [a.outcome for a in found.attempts] == [
                dpb.ATTEMPT_OUTCOME_FAILED,
                dpb.ATTEMPT_OUTCOME_SUCCEEDED,
            ]

        await eventually(outcomes_recorded, timeout=30)
        await invoice_status(suite, invoice.invoice_id, rpb.INVOICE_STATUS_PAID)
        await subscription_status(suite, invoice.subscription_id, rpb.SUBSCRIPTION_STATUS_ACTIVE)
        # The run's charge and one per attempt, each under its own key: nothing charged twice.
        charges = await sandbox_charges(suite)
        assert [c["token"] for c in charges] == ["tok_flaky_2"] * 3
        assert len({c["idempotency_key"] for c in charges}) == 3
        [event] = await events.wait_for("dunning.recovered")
        assert event.attempts == 2


@pytest.mark.timeout(240)
async def test_exhaustion_suspends_the_subscription_and_writes_the_invoice_off(env: InfraEnv) -> None:
    async with suite_with_dunning(env) as suite:
        await suite.stub("dunning").SetPolicy(dpb.SetPolicyRequest(policy=fixed_policy("m-strict", 2)))
        invoice = await failed_invoice(suite, "acct-broke", "tok_insufficient_funds", merchant="m-strict")
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RETRY_SCHEDULED)
        await retry_now(suite, case.case_id)

        async def second() -> bool:
            found = (
                await suite.stub("dunning").GetCase(dpb.GetCaseRequest(case_id=case.case_id))
            ).dunning_case
            return len(found.attempts) == 2 and found.state == dpb.CASE_STATE_RETRY_SCHEDULED

        await eventually(second, timeout=30)
        await retry_now(suite, case.case_id)
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_EXHAUSTED)
        await subscription_status(suite, invoice.subscription_id, rpb.SUBSCRIPTION_STATUS_SUSPENDED)
        await invoice_status(suite, invoice.invoice_id, rpb.INVOICE_STATUS_UNCOLLECTIBLE)
        assert len(await sandbox_charges(suite)) == 3


@pytest.mark.timeout(240)
async def test_a_hard_decline_is_never_retried_until_a_new_method_arrives(env: InfraEnv) -> None:
    async with suite_with_dunning(env) as suite:
        invoice = await failed_invoice(suite, "acct-stolen", "tok_stolen_card")
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_AWAITING_PAYMENT_METHOD)
        assert list(case.attempts) == []
        assert len(await sandbox_charges(suite)) == 1

        update = rpb.UpdateSubscriptionRequest(
            subscription_id=invoice.subscription_id,
            subscription=rpb.Subscription(
                payment_method=common.PaymentMethod(
                    type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                )
            ),
            idempotency_key="new-card",
        )
        update.update_mask.paths.append("payment_method")
        await suite.stub("recurring").UpdateSubscription(update)
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RECOVERED)
        await invoice_status(suite, invoice.invoice_id, rpb.INVOICE_STATUS_PAID)
        charges = await sandbox_charges(suite)
        assert [c["token"] for c in charges] == ["tok_stolen_card", "tok_success"]


@pytest.mark.timeout(240)
async def test_a_merchant_failure_is_held(env: InfraEnv) -> None:
    async with (
        suite_with_dunning(env) as suite,
        EventCollector(env.infra.amqp_url, env.exchange, ["dunning.*"]) as events,
    ):
        invoice = await failed_invoice(suite, "acct-m", "tok_merchant_invalid_credentials")
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_HELD)
        [held] = await events.wait_for("dunning.held")
        assert held.dunning_case.case_id == case.case_id
        assert len(await sandbox_charges(suite)) == 1


@pytest.mark.timeout(300)
async def test_a_pod_killed_during_an_attempt_and_duplicated_events_charge_once(env: InfraEnv) -> None:
    # A slow gateway keeps the attempt in flight long enough to be seen, and killed, mid-way.
    async with suite_with_dunning(env, gateway_latency="2s") as suite:
        invoice = await failed_invoice(suite, "acct-kill", "tok_flaky_1")
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RETRY_SCHEDULED)
        await retry_now(suite, case.case_id)
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_ATTEMPTING, timeout=10)
        await suite.processes["dunning"].kill()

        # A new pod with the same database takes the attempt over when its lease runs out.
        settings = env.settings(CommonSettings, "dunning")
        wiring = {"DUNNING_RECURRING_ADDR": suite.processes["recurring"].address, **FAST_DUNNING}
        suite.processes["dunning"] = await start_process("dunning", "DUNNING", settings, wiring)
        recovered = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RECOVERED)
        assert len(recovered.attempts) == 1
        await invoice_status(suite, invoice.invoice_id, rpb.INVOICE_STATUS_PAID)
        # The run's charge and exactly one for the attempt, though two pods made it.
        assert len(await sandbox_charges(suite)) == 2
        # A redelivered failure event opens nothing more and charges nothing more.
        listed = await suite.stub("dunning").ListCases(dpb.ListCasesRequest(account_id="acct-kill"))
        assert [c.case_id for c in listed.cases] == [case.case_id]


@pytest.mark.timeout(240)
async def test_a_payment_made_elsewhere_closes_the_case(env: InfraEnv) -> None:
    async with suite_with_dunning(env) as suite:
        invoice = await failed_invoice(suite, "acct-else", "tok_flaky_1")
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RETRY_SCHEDULED)
        # The customer pays through another channel: an operator charges the invoice directly.
        await suite.stub("recurring").RetryInvoicePayment(
            rpb.RetryInvoicePaymentRequest(invoice_id=invoice.invoice_id, idempotency_key="support-desk-1")
        )
        closed = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_CLOSED)
        assert closed.history[-1].cause == "invoice_paid_elsewhere"
        assert closed.attempts[0].outcome == dpb.ATTEMPT_OUTCOME_CANCELLED
        assert len(await sandbox_charges(suite)) == 2  # the run's and the support desk's, no attempt


@pytest.mark.timeout(240)
async def test_a_card_number_stored_as_token_is_held_for_an_operator_and_the_customer_is_not_past_due(
    env: InfraEnv,
) -> None:
    async with suite_with_dunning(env) as suite:
        recurring = suite.stub("recurring")
        created = await recurring.CreateSubscription(
            rpb.CreateSubscriptionRequest(
                account_id="acct-pan",
                merchant_id="merchant-1",
                custom_amount=common.Money(amount_minor=2500, currency="USD"),
                frequency=common.BILLING_FREQUENCY_WEEKLY,
                start_date=common.Date(year=DAY.year, month=DAY.month, day=DAY.day),
                payment_method=common.PaymentMethod(
                    type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                ),
                idempotency_key="create-acct-pan",
            )
        )
        subscription_id = created.subscription.subscription_id
        # Stored past the RPC edge, as data from another path would be.
        conn = await asyncpg.connect(suite.env.infra.postgres_admin_url)
        try:
            table = f"{db.quote_ident(f'recurring_{env.run_id}')}.subscriptions"
            await conn.execute(
                f"UPDATE {table} SET gateway_token = '4242424242424242' WHERE subscription_id = $1",
                subscription_id,
            )
        finally:
            await conn.close()
        run = (
            await recurring.RunBilling(
                rpb.RunBillingRequest(
                    billing_date=common.Date(year=DAY.year, month=DAY.month, day=DAY.day),
                    kind=rpb.RUN_KIND_DAILY,
                )
            )
        ).run

        async def completed() -> bool:
            found = (await recurring.GetRun(rpb.GetRunRequest(run_id=run.run_id))).run
            return found.state == rpb.RUN_STATE_COMPLETED and found.counts.failed == 1

        await eventually(completed, timeout=60)
        [invoice] = (await recurring.ListInvoices(rpb.ListInvoicesRequest(account_id="acct-pan"))).invoices
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_HELD)
        assert case.failure_type == common.FAILURE_TYPE_MERCHANT
        assert list(case.attempts) == []  # never retried on the customer
        await subscription_status(suite, subscription_id, rpb.SUBSCRIPTION_STATUS_ACTIVE)
        assert await sandbox_charges(suite) == []

        # An operator fixes the payment method and retries the held case.
        update = rpb.UpdateSubscriptionRequest(
            subscription_id=subscription_id,
            subscription=rpb.Subscription(
                payment_method=common.PaymentMethod(
                    type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                )
            ),
            idempotency_key="fixed-card",
        )
        update.update_mask.paths.append("payment_method")
        await recurring.UpdateSubscription(update)
        await retry_now(suite, case.case_id)
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RECOVERED)
        await invoice_status(suite, invoice.invoice_id, rpb.INVOICE_STATUS_PAID)
        assert [c["token"] for c in await sandbox_charges(suite)] == ["tok_success"]
