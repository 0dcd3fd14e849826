"""Batches of attempts: workers draining together make each attempt once, and answers recorded
together leave every case, its history and its events as recording them one by one would."""

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from billing.dunning.v1 import dunning_pb2 as pb
from billing_common.payments import DeclineKind, FailureType
from dunning.app.worker import AttemptWorker
from dunning.domain.cases import AttemptResult, ResultKind
from dunning.domain.model import Failure

from .conftest import Dunning
from .test_worker import open_cases

SOFT_DECLINE = AttemptResult(
    ResultKind.DECLINED,
    Failure(FailureType.CARDHOLDER, DeclineKind.SOFT, "insufficient_funds", True),
    "insufficient_funds",
)
HARD_DECLINE = AttemptResult(
    ResultKind.DECLINED,
    Failure(FailureType.CARDHOLDER, DeclineKind.HARD, "stolen_card", False),
    "stolen_card",
)


class AnsweringRecurring:
    """recurring as the worker sees it: an answer chosen by invoice, every call counted by key."""

    def __init__(self, answer: Callable[[str], AttemptResult]) -> None:
        self._answer = answer
        self.calls: Counter[str] = Counter()

    async def retry_invoice_payment(self, invoice_id: str, idempotency_key: str) -> AttemptResult:
        self.calls[idempotency_key] += 1
        await asyncio.sleep(0.01)  # the answers of a batch arrive interleaved
        return self._answer(invoice_id)


def by_invoice_number(invoice_id: str) -> AttemptResult:
    """Every kind of answer in turn: recovered, soft decline, hard decline, pending, refused."""
    answers = [
        AttemptResult(ResultKind.SUCCEEDED),
        SOFT_DECLINE,
        HARD_DECLINE,
        AttemptResult(ResultKind.PENDING, detail="PAYMENT_STATUS_PENDING"),
        AttemptResult(ResultKind.REFUSED, detail="NOT_FOUND"),
    ]
    return answers[int(invoice_id.rsplit("-", 1)[1]) % len(answers)]


async def drain(worker: AttemptWorker) -> None:
    while await worker.run_once():
        pass


async def test_two_workers_draining_together_make_each_due_attempt_exactly_once(dunning: Dunning) -> None:
    await open_cases(dunning, 40)
    dunning.clock.advance(timedelta(days=1, minutes=1))
    recurring = AnsweringRecurring(lambda _: SOFT_DECLINE)
    first, second = (dunning.worker(recurring, batch_size=8, concurrency=4) for _ in range(2))

    await asyncio.gather(drain(first), drain(second))

    cases = [await dunning.case(f"inv-{n}") for n in range(40)]
    assert recurring.calls == Counter({f"{case.case_id}:1": 1 for case in cases})
    for case in cases:
        assert case.state == pb.CASE_STATE_RETRY_SCHEDULED
        assert [(a.number, a.outcome) for a in case.attempts] == [
            (1, pb.ATTEMPT_OUTCOME_FAILED),
            (2, pb.ATTEMPT_OUTCOME_SCHEDULED),
        ]


def _without_ids(message: Any) -> Any:
    """A case or an event as it would read for another invoice: no ids, no event header."""
    copy = type(message)()
    copy.CopyFrom(message)
    is_event = "header" in copy.DESCRIPTOR.fields_by_name
    facts = copy.dunning_case if is_event else copy
    for name in ("case_id", "invoice_id", "subscription_id"):
        facts.ClearField(name)
    if is_event:
        copy.ClearField("header")
    return copy


async def test_answers_recorded_as_one_batch_leave_the_cases_as_recording_them_one_by_one(
    dunning: Dunning,
) -> None:
    count = 10
    await open_cases(dunning, count, prefix="batch")
    await open_cases(dunning, count, prefix="single")
    dunning.clock.advance(timedelta(days=1, minutes=1))
    # The outcome counts are read once, so the estimates do not depend on which set went first.
    worker = dunning.worker(
        AnsweringRecurring(by_invoice_number), statistics_refresh=timedelta(hours=1), batch_size=2 * count
    )
    claims = await worker.claim()
    assert len(claims) == 2 * count

    await worker.attempt_all([c for c in claims if c.invoice_id.startswith("batch-")])
    for claim in [c for c in claims if c.invoice_id.startswith("single-")]:
        await worker.attempt(claim)

    # Per set: 2 recovered, 2 held (refused), and 4 failed attempts of which 2 are retried.
    await dunning.events.wait_for("dunning.recovered", count=4)
    await dunning.events.wait_for("dunning.held", count=4)
    await dunning.events.wait_for("dunning.attempt_failed", count=8)
    await dunning.events.wait_for("dunning.retry_scheduled", count=2 * count + 4)

    def events_of(invoice_id: str) -> list[tuple[str, bytes]]:
        return sorted(
            (kind, _without_ids(event).SerializeToString(deterministic=True))
            for kind, event in dunning.events.events
            if event.dunning_case.invoice_id == invoice_id
        )

    states = set()
    for n in range(count):
        batch, single = await dunning.case(f"batch-{n}"), await dunning.case(f"single-{n}")
        assert _without_ids(batch) == _without_ids(single)
        assert events_of(f"batch-{n}") == events_of(f"single-{n}")
        states.add(batch.state)
    assert states == {
        pb.CASE_STATE_RECOVERED,
        pb.CASE_STATE_RETRY_SCHEDULED,
        pb.CASE_STATE_AWAITING_PAYMENT_METHOD,
        pb.CASE_STATE_ATTEMPTING,  # pending: asked again later
        pb.CASE_STATE_HELD,
    }
