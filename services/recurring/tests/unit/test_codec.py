"""The contracts' enums as recurring reads and writes them."""

from __future__ import annotations

import pytest

from billing.common.v1 import common_pb2
from billing.events.v1 import dunning_pb2
from billing_common.payments import DeclineKind, FailureType
from billing_common.protos import EXHAUSTED_ACTIONS
from billing_common.subscriptions import ExhaustedAction
from recurring.adapters import codec
from recurring.domain.payments import PaymentStatus


@pytest.mark.parametrize("status", list(PaymentStatus))
def test_every_payment_status_reads_back_as_itself(status: PaymentStatus) -> None:
    assert codec.payment_status(codec.PAYMENT_STATUSES.pb(status)) is status


def test_a_partially_refunded_payment_reads_as_refunded_and_an_unknown_status_as_unknown() -> None:
    assert codec.payment_status(common_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED) is PaymentStatus.REFUNDED
    assert codec.payment_status(common_pb2.PAYMENT_STATUS_UNSPECIFIED) is PaymentStatus.UNKNOWN
    assert codec.PAYMENT_STATUSES.pb(PaymentStatus.REFUNDED) == common_pb2.PAYMENT_STATUS_REFUNDED


def test_a_payment_that_does_not_say_why_it_failed_is_stored_as_not_failed() -> None:
    assert codec.failure_type(common_pb2.FAILURE_TYPE_UNSPECIFIED) is FailureType.NONE
    assert codec.decline_kind(common_pb2.DECLINE_KIND_UNSPECIFIED) is DeclineKind.NONE
    assert codec.failure_type(common_pb2.FAILURE_TYPE_CARDHOLDER) is FailureType.CARDHOLDER
    assert codec.decline_kind(common_pb2.DECLINE_KIND_HARD) is DeclineKind.HARD
    assert codec.FAILURE_TYPES_OR_NONE.pb(FailureType.NONE) == common_pb2.FAILURE_TYPE_NONE


def test_dunning_exhausted_without_an_action_names_none_and_leaves_it_to_the_policy() -> None:
    assert EXHAUSTED_ACTIONS.get(dunning_pb2.EXHAUSTED_ACTION_UNSPECIFIED, None) is None
    assert EXHAUSTED_ACTIONS.get(dunning_pb2.EXHAUSTED_ACTION_CANCEL, None) is ExhaustedAction.CANCEL
    assert EXHAUSTED_ACTIONS.get(dunning_pb2.EXHAUSTED_ACTION_SUSPEND, None) is ExhaustedAction.SUSPEND
