"""Our payment types in the contracts' protobuf words (shared by events and the gRPC answers)."""

from __future__ import annotations

from billing.common.v1 import common_pb2
from billing.events.v1 import payment_pb2 as events
from gateway_adapter.domain.classification import DeclineKind, FailureType
from gateway_adapter.domain.payments import MethodType, Payment, Status

_METHOD = {
    MethodType.CARD: common_pb2.PAYMENT_METHOD_TYPE_CARD,
    MethodType.ACH: common_pb2.PAYMENT_METHOD_TYPE_ACH,
    MethodType.STRIPE: common_pb2.PAYMENT_METHOD_TYPE_STRIPE,
}


def payment_status_pb(status: Status) -> common_pb2.PaymentStatus.ValueType:
    # A call still in flight has no known outcome yet.
    name = "UNKNOWN" if status is Status.PROCESSING else status.value
    return common_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{name}")


def method_type_pb(method: MethodType) -> common_pb2.PaymentMethodType.ValueType:
    return _METHOD[method]


def failure_type_pb(failure: FailureType) -> common_pb2.FailureType.ValueType:
    return common_pb2.FailureType.Value(f"FAILURE_TYPE_{failure.value}")


def decline_kind_pb(kind: DeclineKind) -> common_pb2.DeclineKind.ValueType:
    return common_pb2.DeclineKind.Value(f"DECLINE_KIND_{kind.value}")


def facts(payment: Payment) -> events.PaymentFacts:
    return events.PaymentFacts(
        payment_id=payment.payment_id,
        merchant_id=payment.request.merchant_id,
        caller_reference=payment.request.caller_reference,
        idempotency_key=payment.request.idempotency_key,
        amount=common_pb2.Money(amount_minor=payment.request.amount_minor, currency=payment.request.currency),
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
