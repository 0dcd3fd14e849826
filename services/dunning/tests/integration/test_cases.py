"""Cases opened, routed and ended by recurring's events, on real PostgreSQL and RabbitMQ."""

from datetime import timedelta

from billing.common.v1 import common_pb2
from billing.dunning.v1 import dunning_pb2 as pb
from billing.events.v1 import invoice_pb2 as invoice_events
from billing_devtools.testing.plugin import eventually

from .conftest import START, Dunning, invoice, payment_failed, payment_method_updated


async def test_a_soft_decline_opens_a_case_with_a_scheduled_retry(dunning: Dunning) -> None:
    await dunning.env.publish(payment_failed("inv-1"))
    case = await dunning.case_in_state("inv-1", pb.CASE_STATE_RETRY_SCHEDULED)
    assert case.merchant_id == "merchant-1" and case.account_id == "acct-1"
    assert case.subscription_id == "sub-inv-1"
    assert case.amount_due.amount_minor == 4900 and case.amount_due.currency == "USD"
    assert case.failure_type == common_pb2.FAILURE_TYPE_CARDHOLDER
    assert case.decline_code == "insufficient_funds"
    assert case.opened_at.ToDatetime().replace(tzinfo=START.tzinfo) == START
    [attempt] = case.attempts
    assert attempt.number == 1 and attempt.outcome == pb.ATTEMPT_OUTCOME_SCHEDULED
    # The default policy is adaptive: a time 1 to 4 days out, with the estimate that chose it.
    scheduled = attempt.scheduled_at.ToDatetime().replace(tzinfo=START.tzinfo)
    assert START + timedelta(days=1) <= scheduled <= START + timedelta(days=4)
    assert case.next_attempt_at == attempt.scheduled_at
    assert 0 < attempt.estimated_success_bp < 10_000 and attempt.sample_size == 0
    assert attempt.reason.startswith("adaptive: best of")
    assert [(t.from_state, t.to_state) for t in case.history] == [
        (pb.CASE_STATE_OPEN, pb.CASE_STATE_RETRY_SCHEDULED)
    ]
    assert case.history[0].cause.startswith("payment_failed")

    opened = await dunning.events.wait_for("dunning.case_opened")
    assert opened[0].dunning_case.case_id == case.case_id and opened[0].decline_code == "insufficient_funds"
    [scheduled_event] = await dunning.events.wait_for("dunning.retry_scheduled")
    assert scheduled_event.attempt == 1
    assert scheduled_event.estimated_success_bp == attempt.estimated_success_bp
    assert scheduled_event.scheduled_at == attempt.scheduled_at


async def test_a_duplicated_or_repeated_failure_opens_one_case(dunning: Dunning) -> None:
    event = payment_failed("inv-dup")
    event_id = await dunning.env.publish(event)
    await dunning.env.publish(event, event_id)  # the same event delivered again
    await dunning.env.publish(payment_failed("inv-dup"))  # another event about the same invoice
    await dunning.env.publish(payment_failed("inv-marker"))
    await dunning.case_in_state("inv-marker", pb.CASE_STATE_RETRY_SCHEDULED)  # handled in order
    listed = await dunning.operator.ListCases(pb.ListCasesRequest(account_id="acct-1"))
    assert sorted(c.invoice_id for c in listed.cases) == ["inv-dup", "inv-marker"]
    await dunning.events.wait_for("dunning.case_opened", count=2)
    opened = [e.dunning_case.invoice_id for e in dunning.events.of_type("dunning.case_opened")]
    assert sorted(opened) == ["inv-dup", "inv-marker"]


async def test_a_hard_decline_waits_and_a_new_payment_method_schedules_an_attempt_now(
    dunning: Dunning,
) -> None:
    await dunning.env.publish(payment_failed("inv-hard", "hard"))
    case = await dunning.case_in_state("inv-hard", pb.CASE_STATE_AWAITING_PAYMENT_METHOD)
    assert list(case.attempts) == []
    assert not case.HasField("next_attempt_at")

    dunning.clock.advance(timedelta(days=2))
    await dunning.env.publish(payment_method_updated("sub-inv-hard"))
    case = await dunning.case_in_state("inv-hard", pb.CASE_STATE_RETRY_SCHEDULED)
    [attempt] = case.attempts
    assert attempt.scheduled_at.ToDatetime().replace(tzinfo=START.tzinfo) == dunning.clock.now()
    assert attempt.reason == "the payment method was updated"
    assert case.history[-1].cause.startswith("payment_method_updated")


async def test_a_merchant_failure_is_held_and_operators_are_told(dunning: Dunning) -> None:
    await dunning.env.publish(payment_failed("inv-merchant", "merchant"))
    case = await dunning.case_in_state("inv-merchant", pb.CASE_STATE_HELD)
    assert list(case.attempts) == []
    [held] = await dunning.events.wait_for("dunning.held")
    assert held.dunning_case.case_id == case.case_id
    assert "invalid_credentials" in held.reason


async def test_an_unreachable_gateway_is_retried(dunning: Dunning) -> None:
    await dunning.env.publish(payment_failed("inv-597", "unreachable"))
    case = await dunning.case_in_state("inv-597", pb.CASE_STATE_RETRY_SCHEDULED)
    assert case.failure_type == common_pb2.FAILURE_TYPE_GATEWAY_UNREACHABLE


async def test_invoice_paid_elsewhere_or_voided_closes_the_case(dunning: Dunning) -> None:
    await dunning.env.publish(payment_failed("inv-paid"))
    await dunning.env.publish(payment_failed("inv-void", "hard"))
    await dunning.case_in_state("inv-void", pb.CASE_STATE_AWAITING_PAYMENT_METHOD)
    await dunning.env.publish(invoice_events.InvoicePaid(invoice=invoice("inv-paid"), payment_id="p-9"))
    await dunning.env.publish(invoice_events.InvoiceVoided(invoice=invoice("inv-void"), reason="duplicate"))
    paid = await dunning.case_in_state("inv-paid", pb.CASE_STATE_CLOSED)
    assert paid.history[-1].cause == "invoice_paid_elsewhere"
    assert paid.attempts[0].outcome == pb.ATTEMPT_OUTCOME_CANCELLED
    assert not paid.HasField("next_attempt_at")
    voided = await dunning.case_in_state("inv-void", pb.CASE_STATE_CLOSED)
    assert voided.history[-1].cause == "invoice_voided: duplicate"

    # A late event about a finished case is refused by the transition table and changes nothing.
    await dunning.env.publish(invoice_events.InvoiceVoided(invoice=invoice("inv-paid"), reason="late"))
    await dunning.env.publish(payment_failed("inv-marker"))
    await dunning.case_in_state("inv-marker", pb.CASE_STATE_RETRY_SCHEDULED)
    again = await dunning.case("inv-paid")
    assert again.state == pb.CASE_STATE_CLOSED and again.version == paid.version


async def test_an_invoice_event_without_a_case_is_ignored(dunning: Dunning) -> None:
    await dunning.env.publish(invoice_events.InvoicePaid(invoice=invoice("inv-never-failed")))
    await dunning.env.publish(payment_failed("inv-marker"))
    await dunning.case_in_state("inv-marker", pb.CASE_STATE_RETRY_SCHEDULED)

    async def one_case() -> bool:
        listed = await dunning.operator.ListCases(pb.ListCasesRequest())
        return [c.invoice_id for c in listed.cases] == ["inv-marker"]

    assert await eventually(one_case)
