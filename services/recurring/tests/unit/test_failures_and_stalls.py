"""What a failed charge call, a failing item and a run that does not move come to: pure rules."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_common.payments import DeclineKind, FailureType
from recurring.domain.events import RunStalled
from recurring.domain.payments import (
    CALL_FAILURES,
    CallFailure,
    ChargeResult,
    NoAnswer,
    Outcome,
    PaymentStatus,
    call_failure,
    final_word_applies,
    outcome_of,
    past_due_after,
    refusal,
)
from recurring.domain.runs import (
    MAX_BACKOFF_DOUBLINGS,
    Progress,
    RunKind,
    RunState,
    after_failure,
    blocks_next_date,
    looked_at,
    new_run,
    watch,
)

T0 = datetime(2031, 5, 5, 3, 6, tzinfo=UTC)
BASE = timedelta(seconds=30)
NOT_RECEIVED = ChargeResult(
    "pay-1",
    PaymentStatus.FAILED,
    "sandbox-card",
    FailureType.GATEWAY_UNREACHABLE,
    decline_code="not_received",
)
SUCCEEDED = ChargeResult("pay-1", PaymentStatus.SUCCEEDED, "sandbox-card")
DECLINED = ChargeResult(
    "pay-1", PaymentStatus.DECLINED, "sandbox-card", FailureType.CARDHOLDER, DeclineKind.SOFT, "do_not_honor"
)

# ---------------------------------------------------------------- charge calls without a payment


def test_every_grpc_status_but_ok_has_a_meaning_for_a_charge() -> None:
    codes = {code.name for code in grpc.StatusCode} - {"OK"}
    assert codes == set(CALL_FAILURES)


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "UNIMPLEMENTED"])
def test_a_refused_request_is_an_answer(code: str) -> None:
    assert call_failure(code) is CallFailure.REFUSED


@pytest.mark.parametrize(
    "code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "UNAUTHENTICATED"]
)
def test_a_service_that_did_not_answer_about_the_charge_is_no_answer(code: str) -> None:
    assert call_failure(code) is CallFailure.NO_ANSWER


def test_permission_denied_waits_for_the_configuration_instead_of_failing_every_customer() -> None:
    assert call_failure("PERMISSION_DENIED") is CallFailure.NO_ANSWER


@pytest.mark.parametrize("code", ["INTERNAL", "UNKNOWN", "DATA_LOSS", "SOMETHING_NEW"])
def test_a_broken_call_is_ours_and_counts_towards_parking(code: str) -> None:
    assert call_failure(code) is CallFailure.BROKEN


def test_a_key_whose_earlier_charge_conflicts_is_never_failed_on_the_customer() -> None:
    """That charge may have gone through: a failed invoice would invite a second one."""
    assert call_failure("FAILED_PRECONDITION") is CallFailure.BROKEN


def test_a_refusal_fails_the_invoice_as_a_merchant_failure_never_retried_on_the_customer() -> None:
    result = refusal("INVALID_ARGUMENT", "payment_method.gateway_token: must be a gateway token")
    assert outcome_of(result) is Outcome.FAILED
    assert result.failure_type is FailureType.MERCHANT
    assert result.decline_code == "refused_invalid_argument"
    assert not result.retryable and result.payment_id == ""
    assert result.reason.startswith("refused by the payment service (INVALID_ARGUMENT)")
    assert not past_due_after(result.failure_type)


def test_reasons_are_kept_short() -> None:
    assert len(refusal("INVALID_ARGUMENT", "x" * 10_000).reason) == 200
    assert len(NoAnswer("UNAVAILABLE", "y" * 10_000, ours=False).reason) == 200


@pytest.mark.parametrize(
    ("failure", "past_due"),
    [
        (FailureType.CARDHOLDER, True),
        (FailureType.GATEWAY_UNREACHABLE, True),
        (FailureType.UNKNOWN_OUTCOME, True),
        (FailureType.MERCHANT, False),
    ],
)
def test_only_a_failure_that_is_not_the_merchants_makes_the_customer_past_due(
    failure: FailureType, past_due: bool
) -> None:
    assert past_due_after(failure) is past_due


# ---------------------------------------------------------------- final words from gateway-adapter


def test_never_received_leaves_an_unanswered_attempt_to_its_holder_who_sends_the_same_key() -> None:
    assert not final_word_applies(answered=False, awaiting=False, result=NOT_RECEIVED)


@pytest.mark.parametrize("result", [SUCCEEDED, DECLINED])
def test_a_real_answer_settles_an_unanswered_attempt(result: ChargeResult) -> None:
    assert final_word_applies(answered=False, awaiting=False, result=result)


@pytest.mark.parametrize("result", [SUCCEEDED, DECLINED, NOT_RECEIVED])
def test_an_attempt_awaiting_its_final_word_takes_it(result: ChargeResult) -> None:
    assert final_word_applies(answered=True, awaiting=True, result=result)


@pytest.mark.parametrize("result", [SUCCEEDED, DECLINED, NOT_RECEIVED])
def test_an_attempt_with_its_final_answer_changes_no_more(result: ChargeResult) -> None:
    assert not final_word_applies(answered=True, awaiting=False, result=result)


# ---------------------------------------------------------------- items that fail for a reason of ours


@given(st.integers(1, 20), st.integers(1, 40))
def test_an_item_is_parked_exactly_when_its_failures_reach_the_limit(limit: int, failures: int) -> None:
    after = after_failure(failures, limit, BASE)
    assert after.park is (failures >= limit)
    assert after.failures == failures


@given(st.integers(1, 60))
def test_the_wait_doubles_per_failure_up_to_a_cap(failures: int) -> None:
    after = after_failure(failures, 100, BASE)
    assert after.retry_in == BASE * 2 ** min(failures - 1, MAX_BACKOFF_DOUBLINGS)
    assert BASE <= after.retry_in <= BASE * 2**MAX_BACKOFF_DOUBLINGS


def test_the_default_limit_gives_a_short_outage_room_before_parking() -> None:
    waits = [after_failure(n, 5, BASE).retry_in for n in range(1, 5)]
    assert waits == [BASE, 2 * BASE, 4 * BASE, 8 * BASE]
    assert after_failure(5, 5, BASE).park


# ---------------------------------------------------------------- runs that do not move


def test_the_first_look_starts_the_watch() -> None:
    progress, stalled = watch(Progress(), 7, T0, timedelta(minutes=30))
    assert progress == Progress(7, T0) and not stalled


def test_a_run_whose_open_items_stand_for_the_limit_is_reported_stalled_once() -> None:
    seen = Progress(7, T0)
    still, stalled = watch(seen, 7, T0 + timedelta(minutes=29), timedelta(minutes=30))
    assert still == seen and not stalled
    late = T0 + timedelta(minutes=30)
    progress, stalled = watch(seen, 7, late, timedelta(minutes=30))
    assert stalled and progress == Progress(7, T0, late)
    again, stalled_again = watch(progress, 7, late + timedelta(hours=5), timedelta(minutes=30))
    assert again == progress and not stalled_again


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 10_000))
def test_any_change_in_open_items_is_progress_and_ends_a_stall(before: int, after: int, minutes: int) -> None:
    seen = Progress(before, T0, T0 + timedelta(hours=1))
    now = T0 + timedelta(hours=1, minutes=minutes)
    progress, stalled = watch(seen, after, now, timedelta(minutes=30))
    assert not stalled
    if after != before:
        assert progress == Progress(after, now)
    else:
        assert progress == seen


@given(st.lists(st.integers(0, 120), max_size=30))
def test_a_run_that_stands_still_is_reported_at_most_once(gaps: list[int]) -> None:
    progress, reports, now = Progress(3, T0), 0, T0
    for gap in gaps:
        now += timedelta(minutes=gap)
        progress, stalled = watch(progress, 3, now, timedelta(minutes=30))
        reports += stalled
    assert reports == (1 if now - T0 >= timedelta(minutes=30) else 0)


def test_a_running_run_is_announced_stalled_once_and_a_finished_one_is_not_watched() -> None:
    run = dataclasses.replace(new_run("run_1", T0.date(), RunKind.DAILY, T0), progress=Progress(7, T0))
    late = T0 + timedelta(minutes=30)

    looked = looked_at(run, 7, late, timedelta(minutes=30))
    assert looked is not None
    stalled, events = looked
    assert (stalled.progress, events) == (Progress(7, T0, late), [RunStalled(stalled)])
    assert looked_at(stalled, 7, late + timedelta(hours=1), timedelta(minutes=30)) == (stalled, [])
    finished = dataclasses.replace(run, state=RunState.COMPLETED)
    assert looked_at(finished, 7, late, timedelta(minutes=30)) is None


def test_the_next_date_waits_for_a_running_run_but_never_for_a_stalled_one() -> None:
    assert blocks_next_date(RunState.RUNNING, Progress(3, T0))
    assert not blocks_next_date(RunState.RUNNING, Progress(3, T0, T0 + timedelta(hours=1)))
    for state in (RunState.COMPLETED, RunState.HALTED):
        assert not blocks_next_date(state, Progress(3, T0))
