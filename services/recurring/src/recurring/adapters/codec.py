"""recurring's enums and the contracts' enums, matched once by member name (ProtoEnum)."""

from __future__ import annotations

from billing.common.v1 import common_pb2
from billing.events.v1 import run_pb2
from billing.recurring.v1 import recurring_pb2
from billing_common.payments import DeclineKind, FailureType
from billing_common.protos import ProtoEnum
from billing_common.subscriptions import SubscriptionStatus
from recurring.domain.invoicing import LineKind
from recurring.domain.payments import PaymentStatus
from recurring.domain.runs import ItemStatus, RunKind, RunState
from recurring.domain.status import InvoiceStatus

PAYMENT_STATUSES = ProtoEnum(PaymentStatus, common_pb2.PaymentStatus, "PAYMENT_STATUS_")
# A payment that does not state why it failed did not fail, for recurring: it stores "none".
FAILURE_TYPES_OR_NONE = ProtoEnum(
    FailureType, common_pb2.FailureType, "FAILURE_TYPE_", {FailureType.UNSPECIFIED: "NONE"}
)
DECLINE_KINDS_OR_NONE = ProtoEnum(
    DeclineKind, common_pb2.DeclineKind, "DECLINE_KIND_", {DeclineKind.UNSPECIFIED: "NONE"}
)
SUBSCRIPTION_STATUSES = ProtoEnum(
    SubscriptionStatus, recurring_pb2.SubscriptionStatus, "SUBSCRIPTION_STATUS_"
)
INVOICE_STATUSES = ProtoEnum(InvoiceStatus, recurring_pb2.InvoiceStatus, "INVOICE_STATUS_")
LINE_KINDS = ProtoEnum(LineKind, recurring_pb2.InvoiceLineKind, "INVOICE_LINE_KIND_")
RUN_KINDS = ProtoEnum(RunKind, recurring_pb2.RunKind, "RUN_KIND_")
RUN_KINDS_EVENT = ProtoEnum(RunKind, run_pb2.RunKind, "RUN_KIND_")
RUN_STATES = ProtoEnum(RunState, recurring_pb2.RunState, "RUN_STATE_")
RUN_ITEM_STATUSES = ProtoEnum(ItemStatus, recurring_pb2.RunItemStatus, "RUN_ITEM_STATUS_")


def payment_status(number: int) -> PaymentStatus:
    """A payment's status as recurring keeps it: it tracks no partial refund (the ledger holds the
    amounts), so a partially refunded payment reads as refunded; a status it does not know is unknown."""
    if number == common_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED:
        return PaymentStatus.REFUNDED
    return PAYMENT_STATUSES.get(number, PaymentStatus.UNKNOWN)


def failure_type(number: int) -> FailureType:
    return FAILURE_TYPES_OR_NONE.get(number, FailureType.NONE)


def decline_kind(number: int) -> DeclineKind:
    return DECLINE_KINDS_OR_NONE.get(number, DeclineKind.NONE)
