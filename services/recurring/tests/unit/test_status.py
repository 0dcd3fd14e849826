"""The subscription and invoice state machines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_common.errors import FailedPrecondition
from billing_common.subscriptions import SubscriptionStatus
from recurring.domain.status import (
    INVOICE_TRANSITIONS,
    TERMINAL,
    Action,
    InvoiceStatus,
    can,
    invoice_transition,
    transition,
)


def test_lifecycle_examples() -> None:
    s = SubscriptionStatus
    assert transition(s.TRIALING, Action.ACTIVATE) is s.ACTIVE
    assert transition(s.ACTIVE, Action.PAYMENT_FAILED) is s.PAST_DUE
    assert transition(s.PAST_DUE, Action.PAYMENT_RECOVERED) is s.ACTIVE
    assert transition(s.PAST_DUE, Action.SUSPEND) is s.SUSPENDED
    assert transition(s.PAUSED, Action.RESUME) is s.ACTIVE
    assert transition(s.ACTIVE, Action.COMPLETE) is s.COMPLETED


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (SubscriptionStatus.CANCELLED, Action.RESUME),
        (SubscriptionStatus.ACTIVE, Action.RESUME),
        (SubscriptionStatus.PAUSED, Action.PAUSE),
        (SubscriptionStatus.COMPLETED, Action.CANCEL),
        (SubscriptionStatus.SUSPENDED, Action.PAUSE),
    ],
)
def test_illegal_transitions_are_refused(status: SubscriptionStatus, action: Action) -> None:
    with pytest.raises(FailedPrecondition):
        transition(status, action)


@given(st.sampled_from(list(SubscriptionStatus)), st.lists(st.sampled_from(list(Action)), max_size=30))
def test_any_sequence_either_moves_legally_or_is_refused(
    start: SubscriptionStatus, actions: list[Action]
) -> None:
    status = start
    for action in actions:
        if can(status, action):
            assert status not in TERMINAL
            status = transition(status, action)
        else:
            with pytest.raises(FailedPrecondition):
                transition(status, action)
    assert isinstance(status, SubscriptionStatus)


@given(st.sampled_from(list(InvoiceStatus)), st.sampled_from(list(InvoiceStatus)))
def test_invoice_transitions_follow_the_table(current: InvoiceStatus, target: InvoiceStatus) -> None:
    if (current, target) in INVOICE_TRANSITIONS:
        assert invoice_transition(current, target) is target
    else:
        with pytest.raises(FailedPrecondition):
            invoice_transition(current, target)
    assert (InvoiceStatus.VOID, target) not in INVOICE_TRANSITIONS
    assert (InvoiceStatus.UNCOLLECTIBLE, target) not in INVOICE_TRANSITIONS
