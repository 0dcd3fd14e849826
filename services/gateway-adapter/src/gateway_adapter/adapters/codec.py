"""Our payment types in the contracts' protobuf words (shared by events and the gRPC answers)."""

from __future__ import annotations

from billing.common.v1 import common_pb2
from billing.events.v1 import payment_pb2 as events
from billing_common.payments import DeclineKind, FailureType, MethodType
from billing_common.protos import DECLINE_KINDS, FAILURE_TYPES, METHOD_TYPES, ProtoEnum, money_pb
from gateway_adapter.domain.payments import Payment, Status

# A call still in flight has no known outcome yet.
STATUSES = ProtoEnum(Status, common_pb2.PaymentStatus, "PAYMENT_STATUS_", {Status.PROCESSING: "UNKNOWN"})


def payment_status_pb(status: Status) -> common_pb2.PaymentStatus.ValueType:
    return STATUSES.pb(status)


def method_type_pb(method: MethodType) -> common_pb2.PaymentMethodType.ValueType:
    return METHOD_TYPES.pb(method)


def failure_type_pb(failure: FailureType) -> common_pb2.FailureType.ValueType:
    return FAILURE_TYPES.pb(failure)


def decline_kind_pb(kind: DeclineKind) -> common_pb2.DeclineKind.ValueType:
    return DECLINE_KINDS.pb(kind)


def facts(payment: Payment) -> events.PaymentFacts:
    return events.PaymentFacts(
        payment_id=payment.payment_id,
        merchant_id=payment.request.merchant_id,
        caller_reference=payment.request.caller_reference,
        idempotency_key=payment.request.idempotency_key,
        amount=money_pb(payment.request.amount),
        method_type=method_type_pb(payment.request.method_type),
        gateway=payment.gateway,
        status=payment_status_pb(payment.status),
        failure_type=failure_type_pb(payment.failure_type),
        decline_kind=decline_kind_pb(payment.decline_kind),
        retryable=payment.retryable,
        gateway_code=payment.gateway_code,
        normalized_code=payment.normalized_code,
        metadata=dict(payment.request.metadata),
    )
