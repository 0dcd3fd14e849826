"""The attempt worker on real PostgreSQL and Redis: claims, leases, take-over, windows, reminders.

Recurring is not running here (its address answers nothing), which is what these tests need: the
worker must leave the attempt in flight, never count an outcome, and try the same attempt again.
The recovery paths with a running recurring are in tests/integration/test_dunning_flows.py.
"""

import asyncio
from datetime import timedelta

from prometheus_client import REGISTRY

from billing.dunning.v1 import dunning_pb2 as pb
from billing.events.v1 import invoice_pb2 as invoice_events
from billing_devtools.testing.plugin import InfraEnv

from .conftest import START, Dunning, dunning_service, fixed_policy, invoice, payment_failed


def recurring_calls() -> float:
    return sum(
        REGISTRY.get_sample_value("dunning_attempts_total", {"outcome": outcome}) or 0.0
        for outcome in ("succeeded", "declined", "pending", "refused", "unavailable")
    )


async def open_cases(dunning: Dunning, count: int, prefix: str = "inv") -> None:
    await dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=fixed_policy("merchant-1", 1, 3, 5)))
    for n in range(count):
        await dunning.env.publish(payment_failed(f"{prefix}-{n}"))
    await dunning.case_in_state(f"{prefix}-{count - 1}", pb.CASE_STATE_RETRY_SCHEDULED)
    for n in range(count):
        await dunning.case_in_state(f"{prefix}-{n}", pb.CASE_STATE_RETRY_SCHEDULED)


async def test_nothing_is_claimed_before_its_time(dunning: Dunning) -> None:
    await open_cases(dunning, 3)
    assert await dunning.worker().claim() == []


async def test_two_workers_claim_disjoint_batches_and_a_lapsed_lease_is_taken_over(dunning: Dunning) -> None:
    await open_cases(dunning, 30)
    dunning.clock.advance(timedelta(days=1, minutes=1))
    first, second = dunning.worker(batch_size=20), dunning.worker(batch_size=20)
    a, b = await asyncio.gather(first.claim(), second.claim())
    assert len(a) + len(b) == 30
    assert not {c.case_id for c in a} & {c.case_id for c in b}
    assert {c.attempt for c in a + b} == {1}
    case = await dunning.case("inv-0")
    assert case.state == pb.CASE_STATE_ATTEMPTING
    assert case.attempts[0].attempted_at.ToDatetime().replace(tzinfo=START.tzinfo) == dunning.clock.now()
    assert await first.claim() == []  # all leased

    # The pods that claimed them died; after the lease the same attempts (same keys) are taken over.
    dunning.clock.advance(timedelta(minutes=3))
    again = await first.claim() + await first.claim()
    assert sorted(c.idempotency_key for c in again) == sorted(c.idempotency_key for c in a + b)
    still = await dunning.case("inv-0")
    assert still.state == pb.CASE_STATE_ATTEMPTING and len(still.attempts) == 1


async def test_with_recurring_down_the_attempt_stays_in_flight_and_is_tried_again(dunning: Dunning) -> None:
    await open_cases(dunning, 1)
    dunning.clock.advance(timedelta(days=1))
    calls = recurring_calls()
    worker = dunning.worker(unavailable_backoff=timedelta(minutes=5))
    assert await worker.run_once() == 1
    assert recurring_calls() == calls + 1
    case = await dunning.case("inv-0")
    assert case.state == pb.CASE_STATE_ATTEMPTING
    assert case.attempts[0].outcome == pb.ATTEMPT_OUTCOME_SCHEDULED
    assert [t.cause.split(":")[0] for t in case.history] == ["payment_failed", "attempt_started"]
    assert await worker.run_once() == 0
    dunning.clock.advance(timedelta(minutes=5))
    assert await worker.run_once() == 1
    assert recurring_calls() == calls + 2
    assert len((await dunning.case("inv-0")).attempts) == 1


async def test_a_case_paid_after_the_claim_is_not_charged(dunning: Dunning) -> None:
    await open_cases(dunning, 1)
    dunning.clock.advance(timedelta(days=1))
    worker = dunning.worker()
    [claim] = await worker.claim()
    await dunning.env.publish(invoice_events.InvoicePaid(invoice=invoice("inv-0"), payment_id="p-1"))
    recovered = await dunning.case_in_state("inv-0", pb.CASE_STATE_RECOVERED)
    assert recovered.history[-1].cause == "invoice_paid"
    calls = recurring_calls()
    await worker.attempt(claim)
    assert recurring_calls() == calls  # recurring was not asked
    after = await dunning.case("inv-0")
    assert after.version == recovered.version
    [event] = await dunning.events.wait_for("dunning.recovered")
    assert event.attempts == 1


async def test_reset_returns_a_stuck_attempt_with_its_key(dunning: Dunning) -> None:
    await open_cases(dunning, 1)
    dunning.clock.advance(timedelta(days=1))
    [claim] = await dunning.worker().claim()
    case = await dunning.case("inv-0")
    reset = (
        await dunning.operator.ResetCase(pb.ResetCaseRequest(case_id=case.case_id, reason="stuck"))
    ).dunning_case
    assert reset.state == pb.CASE_STATE_RETRY_SCHEDULED
    assert [a.number for a in reset.attempts] == [1]
    assert reset.history[-1].cause.startswith("operator_reset: attempt 1")
    [again] = await dunning.worker().claim()
    assert again.idempotency_key == claim.idempotency_key == f"{case.case_id}:1"


async def test_a_case_waiting_for_a_method_is_exhausted_at_the_end_of_its_window(dunning: Dunning) -> None:
    await dunning.env.publish(payment_failed("inv-hard", "hard"))
    await dunning.case_in_state("inv-hard", pb.CASE_STATE_AWAITING_PAYMENT_METHOD)
    worker = dunning.worker()
    dunning.clock.advance(timedelta(days=13))
    assert await worker.claim() == []
    dunning.clock.advance(timedelta(days=1, minutes=1))
    assert await worker.claim() == []
    case = await dunning.case("inv-hard")
    assert case.state == pb.CASE_STATE_EXHAUSTED
    assert case.history[-1].cause == "window_elapsed"
    [exhausted] = await dunning.events.wait_for("dunning.exhausted")
    assert exhausted.dunning_case.invoice_id == "inv-hard"
    assert exhausted.action == 1 and exhausted.attempts == 0


async def test_a_reminder_goes_out_before_the_attempt(dunning: Dunning) -> None:
    await dunning.operator.SetPolicy(
        pb.SetPolicyRequest(policy=fixed_policy("merchant-1", 2, 4, reminder_hours=24))
    )
    await dunning.env.publish(payment_failed("inv-r"))
    await dunning.case_in_state("inv-r", pb.CASE_STATE_RETRY_SCHEDULED)
    worker = dunning.worker()
    assert await worker.send_reminders() == 0
    dunning.clock.advance(timedelta(days=1))
    assert await worker.send_reminders() == 1
    assert await worker.send_reminders() == 0
    [reminder] = await dunning.events.wait_for("dunning.reminder_due")
    assert reminder.attempt == 1
    assert reminder.attempt_at.ToDatetime().replace(tzinfo=START.tzinfo) == START + timedelta(days=2)


async def test_more_answers_at_once_than_the_connection_pool_holds_are_all_recorded(env: InfraEnv) -> None:
    """Each answer is recorded in a transaction that plans the case's next step; the outcome
    statistics were read on a second connection, so a batch of answers held the whole pool and
    waited for one more, forever (a simulated day of `make run` stopped dunning that way)."""
    async with dunning_service(env, db_pool_max=3) as dunning:
        await open_cases(dunning, 12)
        dunning.clock.advance(timedelta(days=1, minutes=1))
        worker = dunning.worker(batch_size=12, unavailable_backoff=timedelta(minutes=5))

        assert await asyncio.wait_for(worker.run_once(), 30) == 12

        dunning.clock.advance(timedelta(minutes=5))
        assert await asyncio.wait_for(worker.run_once(), 30) == 12  # all recorded, and due again
