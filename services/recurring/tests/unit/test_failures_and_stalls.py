"""What a failed charge call comes to: pure rules."""

from __future__ import annotations

import grpc
import pytest

from recurring.domain.payments import (
    CALL_FAILURES,
    CallFailure,
    ChargeResult,
    DeclineKind,
    FailureType,
    NoAnswer,
    Outcome,
    PaymentStatus,
    call_failure,
    final_word_applies,
    outcome_of,
    past_due_after,
    refusal,
)

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


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE", "UNIMPLEMENTED"]
)
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
