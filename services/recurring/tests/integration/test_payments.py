"""After the run: dunning's retries, write-offs, ACH outcomes, credit, plan changes with proration."""

from __future__ import annotations

from datetime import UTC, date, datetime

from google.protobuf.field_mask_pb2 import FieldMask

from billing.common.v1 import common_pb2 as common
from billing.events.v1 import dunning_pb2, tier_pb2
from billing.quota.v1 import quota_pb2 as q
from billing.quota.v1 import quota_pb2_grpc
from billing.recurring.v1 import recurring_pb2 as pb
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually

from .conftest import ACH, Deps, custom, pb_date, recurring_service, run_until_settled
from .test_test_clock import at

DAY = date(2031, 5, 5)
WEEKLY = common.BILLING_FREQUENCY_WEEKLY
MONTHLY = common.BILLING_FREQUENCY_MONTHLY


async def invoice_of(stub: object, subscription_id: str) -> pb.Invoice:
    invoices = (await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=subscription_id))).invoices  # type: ignore[attr-defined]
    assert len(invoices) == 1
    found: pb.Invoice = invoices[0]
    return found


async def test_a_soft_decline_goes_to_dunning_and_a_retry_pays_once_per_key(
    env: InfraEnv, deps: Deps
) -> None:
    async with (
        recurring_service(deps.recurring_settings()) as recurring,
        EventCollector(env.infra.amqp_url, env.exchange, ["invoice.*", "subscription.*"]) as events,
    ):
        sub = (
            await recurring.operator.CreateSubscription(
                custom("flaky", 2000, WEEKLY, DAY, token="tok_flaky_1")
            )
        ).subscription
        run = await run_until_settled(recurring.operator, DAY)
        assert (run.counts.failed, run.counts.charged) == (1, 0)
        invoice = await invoice_of(recurring.operator, sub.subscription_id)
        assert invoice.status == pb.INVOICE_STATUS_PAYMENT_FAILED
        failed = await events.wait_for("invoice.payment_failed")
        assert failed[0].decline_kind == common.DECLINE_KIND_SOFT and failed[0].attempt == 1
        assert failed[0].retryable
        await events.wait_for("subscription.past_due")

        request = pb.RetryInvoicePaymentRequest(invoice_id=invoice.invoice_id, idempotency_key="case-1:1")
        first = await recurring.dunning.RetryInvoicePayment(request)
        again = await recurring.dunning.RetryInvoicePayment(request)

        assert first.invoice.status == pb.INVOICE_STATUS_PAID and not first.replayed
        assert again.replayed and again.transaction.transaction_id == first.transaction.transaction_id
        assert first.transaction.attempt == 2
        assert first.transaction.idempotency_key == f"{invoice.invoice_id}:2"
        current = (
            await recurring.operator.GetSubscription(
                pb.GetSubscriptionRequest(subscription_id=sub.subscription_id)
            )
        ).subscription
        assert current.status == pb.SUBSCRIPTION_STATUS_ACTIVE
        await events.wait_for("invoice.paid")
        outcomes = sorted(c["outcome"] for c in await deps.sandbox_charges())
        assert len(outcomes) == 2 and "approved" in outcomes


async def test_dunning_exhausted_writes_the_invoice_off_and_suspends(env: InfraEnv, deps: Deps) -> None:
    async with (
        recurring_service(deps.recurring_settings()) as recurring,
        EventCollector(env.infra.amqp_url, env.exchange, ["invoice.*", "subscription.*"]) as events,
    ):
        sub = (
            await recurring.operator.CreateSubscription(
                custom("stolen", 4500, WEEKLY, DAY, token="tok_stolen_card")
            )
        ).subscription
        await run_until_settled(recurring.operator, DAY)
        invoice = await invoice_of(recurring.operator, sub.subscription_id)
        failed = await events.wait_for("invoice.payment_failed")
        assert failed[0].decline_kind == common.DECLINE_KIND_HARD
        owed = await recurring.operator.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_id="stolen", currency="USD")
        )
        assert owed.balance.amount_minor == 4500

        await env.publish(
            dunning_pb2.DunningExhausted(
                dunning_case=dunning_pb2.CaseFacts(
                    case_id="case-9",
                    invoice_id=invoice.invoice_id,
                    subscription_id=sub.subscription_id,
                    account_id="stolen",
                ),
                action=dunning_pb2.EXHAUSTED_ACTION_SUSPEND,
                attempts=4,
            ),
            "dunning",
        )

        written_off = await events.wait_for("invoice.uncollectible")
        assert written_off[0].written_off.amount_minor == 4500
        await events.wait_for("subscription.suspended")
        current = (
            await recurring.operator.GetSubscription(
                pb.GetSubscriptionRequest(subscription_id=sub.subscription_id)
            )
        ).subscription
        assert current.status == pb.SUBSCRIPTION_STATUS_SUSPENDED
        assert (
            await invoice_of(recurring.operator, sub.subscription_id)
        ).status == pb.INVOICE_STATUS_UNCOLLECTIBLE
        after = await recurring.operator.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_id="stolen", currency="USD")
        )
        assert after.balance.amount_minor == 0
        entries = (
            await recurring.operator.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id="stolen"))
        ).entries
        assert sorted({e.kind for e in entries}) == ["invoice", "write_off"]
        history = (
            await recurring.operator.GetSubscriptionHistory(
                pb.GetSubscriptionHistoryRequest(subscription_id=sub.subscription_id)
            )
        ).entries
        assert history[-1].actor == "dunning" and history[-1].cause_event_id
        assert [c.field for c in history[-1].changes] == ["status"]
        assert history[-1].changes[0].new_json == '"suspended"'


async def test_ach_settles_later_and_a_return_reopens_dunning(env: InfraEnv, deps: Deps) -> None:
    async with (
        recurring_service(deps.recurring_settings()) as recurring,
        EventCollector(env.infra.amqp_url, env.exchange, ["invoice.*"]) as events,
    ):
        settles = (
            await recurring.operator.CreateSubscription(
                custom("bank-ok", 3000, WEEKLY, DAY, method=ACH, token="ach_settles")
            )
        ).subscription
        returns = (
            await recurring.operator.CreateSubscription(
                custom("bank-r01", 3100, WEEKLY, DAY, method=ACH, token="ach_returns_r01")
            )
        ).subscription
        run = await run_until_settled(recurring.operator, DAY)
        assert run.counts.charged == 2  # submitted; the bank answers later

        async def status_of(subscription_id: str, wanted: int) -> bool:
            return (await invoice_of(recurring.operator, subscription_id)).status == wanted

        await eventually(lambda: status_of(settles.subscription_id, pb.INVOICE_STATUS_PAID), timeout=30)
        await eventually(
            lambda: status_of(returns.subscription_id, pb.INVOICE_STATUS_PAYMENT_FAILED), timeout=30
        )
        failed = await events.wait_for("invoice.payment_failed")
        assert failed[0].invoice.subscription_id == returns.subscription_id
        assert failed[0].decline_code
        balance = await recurring.operator.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_id="bank-r01", currency="USD")
        )
        assert balance.balance.amount_minor == 3100


async def test_credit_and_plan_changes_prorate_onto_the_next_invoice(env: InfraEnv, deps: Deps) -> None:
    async with open_channel(deps.quota.address, env.token("operator")) as channel:
        quota = quota_pb2_grpc.QuotaServiceStub(channel)
        for code, price in (("basic", 3000), ("pro", 6000)):
            spec = q.PlanSpec(
                name=code, price=common.Money(amount_minor=price, currency="USD"), frequency=MONTHLY
            )
            await quota.CreatePlan(q.CreatePlanRequest(code=code, spec=spec, idempotency_key=code))
        await quota.SetTierPlanMapping(
            q.SetTierPlanMappingRequest(mappings=[q.TierPlan(tier=common.TIER_PRO, plan_code="pro")])
        )
        async with recurring_service(deps.recurring_settings(test_clock=True)) as recurring:
            stub = recurring.operator
            await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 5, 1, tzinfo=UTC))))

            def on_basic(account: str, tier_mapped: bool) -> pb.CreateSubscriptionRequest:
                return pb.CreateSubscriptionRequest(
                    account_id=account,
                    merchant_id="m",
                    plan_code="basic",
                    start_date=pb_date(DAY),
                    billing_anchor_day=5,
                    payment_method=common.PaymentMethod(
                        type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                    ),
                    idempotency_key=f"create-{account}",
                    tier_mapped=tier_mapped,
                )

            by_rpc = (await stub.CreateSubscription(on_basic("upgrader", False))).subscription
            by_tier = (await stub.CreateSubscription(on_basic("tiered", True))).subscription
            assert by_rpc.amount.amount_minor == 3000  # snapshotted from the plan
            await stub.AddAccountCredit(
                pb.AddAccountCreditRequest(
                    account_id="upgrader",
                    amount=common.Money(amount_minor=1000, currency="USD"),
                    idempotency_key="goodwill",
                )
            )
            first = await run_until_settled(stub, DAY, pb.RUN_KIND_MONTHLY)
            assert first.counts.charged == 2
            credited = await invoice_of(stub, by_rpc.subscription_id)
            assert credited.amount_due.amount_minor == 2000
            assert [line.kind for line in credited.lines] == [
                pb.INVOICE_LINE_KIND_BASE,
                pb.INVOICE_LINE_KIND_CREDIT,
            ]

            await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 5, 20, 12, tzinfo=UTC))))
            changed = await stub.UpdateSubscription(
                pb.UpdateSubscriptionRequest(
                    subscription_id=by_rpc.subscription_id,
                    subscription=pb.Subscription(plan_code="pro"),
                    update_mask=FieldMask(paths=["plan_code"]),
                    idempotency_key="upgrade-1",
                )
            )
            assert changed.subscription.amount.amount_minor == 6000
            await env.publish(
                tier_pb2.TierChanged(
                    account_id="tiered", billed_account_id="tiered", new_tier=common.TIER_PRO
                ),
                "tier",
            )

            async def moved() -> bool:
                got = await stub.GetSubscription(
                    pb.GetSubscriptionRequest(subscription_id=by_tier.subscription_id)
                )
                return bool(got.subscription.plan_code == "pro")

            await eventually(moved, timeout=20)
            await run_until_settled(stub, date(2031, 6, 5), pb.RUN_KIND_MONTHLY)

            for sub in (by_rpc, by_tier):
                invoices = (
                    await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.subscription_id))
                ).invoices
                june = invoices[-1]
                prorations = [
                    line.amount.amount_minor
                    for line in june.lines
                    if line.kind == pb.INVOICE_LINE_KIND_PRORATION
                ]
                # 16 of 31 days left: credit round(3000*16/31) = 1548; net round(3000*16/31) = 1548.
                assert prorations == [-1548, 3096]
                assert june.total.amount_minor == 6000 + 1548
                assert june.status == pb.INVOICE_STATUS_PAID
            history = (
                await stub.GetSubscriptionHistory(
                    pb.GetSubscriptionHistoryRequest(subscription_id=by_tier.subscription_id)
                )
            ).entries
            plan_change = next(e for e in reversed(history) if any(c.field == "plan_code" for c in e.changes))
            assert plan_change.actor == "tier.changed" and plan_change.cause_event_id
