"""Refunds reach the books: a partial and then a full refund of a paid invoice show on the invoice
and move cash and revenue back in the ledger, each once, however often the event is heard."""

from __future__ import annotations

from datetime import date

from billing.common.v1 import common_pb2 as common
from billing.gateway.v1 import gateway_pb2 as g
from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually, issue_token

from .conftest import Deps, custom, recurring_service, run_until_settled
from .test_payments import invoice_of

DAY = date(2031, 7, 7)


async def test_a_partial_then_a_full_refund_change_the_invoice_and_the_ledger_once_each(
    env: InfraEnv, deps: Deps
) -> None:
    async with (
        recurring_service(deps.recurring_settings()) as recurring,
        open_channel(deps.gateway.address, issue_token("operator")) as channel,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.refunded"]) as events,
    ):
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        sub = (
            await recurring.operator.CreateSubscription(
                custom("refunded", 5000, common.BILLING_FREQUENCY_WEEKLY, DAY)
            )
        ).subscription
        await run_until_settled(recurring.operator, DAY)
        paid = await invoice_of(recurring.operator, sub.subscription_id)
        (payment,) = paid.transactions
        assert paid.refunded.amount_minor == 0

        async def refunded(total: int) -> bool:
            found = await invoice_of(recurring.operator, sub.subscription_id)
            return found.refunded.amount_minor == total

        partial = common.Money(amount_minor=1500, currency="USD")
        await gateway.Refund(
            g.RefundRequest(payment_id=payment.payment_id, amount=partial, idempotency_key="r-1")
        )
        await eventually(lambda: refunded(1500), timeout=20)
        await gateway.Refund(g.RefundRequest(payment_id=payment.payment_id, idempotency_key="r-2"))
        await eventually(lambda: refunded(5000), timeout=20)

        # The first refund's event heard again (a redelivery, or a duplicate relay) changes nothing.
        (first, _) = await events.wait_for("payment.refunded", count=2)
        await env.publish(first, "gateway-adapter")

        async def handled_again() -> bool:
            rows = await deps.recurring_rows(
                "SELECT count(*) AS n FROM inbox WHERE event_id = $1::uuid", first.header.event_id
            )
            return bool(rows[0]["n"])

        await eventually(handled_again, timeout=20)

        async def refunds_posted() -> bool:
            rows = await deps.recurring_rows(
                """SELECT amount_minor FROM ledger_entries
                   WHERE kind = 'refund' AND account LIKE 'cash:%' ORDER BY entry_id"""
            )
            return [r["amount_minor"] for r in rows] == [-1500, -3500]

        await eventually(refunds_posted, timeout=20)
        cash = await deps.recurring_rows(
            "SELECT sum(amount_minor) AS s FROM ledger_entries WHERE customer = $1 AND account LIKE 'cash:%'",
            "refunded",
        )
        assert cash[0]["s"] == 0  # paid 5000, given back 5000
        final = await invoice_of(recurring.operator, sub.subscription_id)
        assert final.refunded.amount_minor == 5000
