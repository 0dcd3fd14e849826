"""The gRPC servicer: thin, maps messages to the payment use cases and answers back."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from google.rpc import error_details_pb2

from billing.gateway.v1 import gateway_pb2 as pb
from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.auth import OPERATOR, READERS
from billing_common.errors import BillingError, FailedPrecondition, InvalidArgument, Unavailable
from billing_common.grpc_server import Context
from billing_common.protos import METHOD_TYPES, ProtoEnum, money_of, money_pb
from gateway_adapter.adapters.codec import decline_kind_pb, failure_type_pb, method_type_pb, payment_status_pb
from gateway_adapter.app.payments import BackPressure, ChargeAnswer, Payments
from gateway_adapter.app.ports import StoredRefund
from gateway_adapter.domain.payments import ChargeRequest, Lane, Payment, RefundRequest

# Who may call what: roles or callers named in tokens. Defaults; a deployment changes them with
# GATEWAY_AUTH_ACCESS. Only recurring charges: a payment made around it would miss the ledger.
ACCESS: dict[str, set[str] | frozenset[str]] = {
    "Charge": {"recurring"},
    "ChargeBatch": {"recurring"},
    "Refund": {"recurring", OPERATOR},
    "GetPayment": {"recurring", *READERS},
    "GetCircuitState": {"recurring", *READERS},
}
LANES = ProtoEnum(Lane, pb.Lane, "LANE_")
CIRCUIT_STATES = {
    "closed": pb.CIRCUIT_STATE_CLOSED,
    "open": pb.CIRCUIT_STATE_OPEN,
    "half-open": pb.CIRCUIT_STATE_HALF_OPEN,
}


def payment_pb(payment: Payment) -> pb.Payment:
    request = payment.request
    message = pb.Payment(
        payment_id=payment.payment_id,
        merchant_id=request.merchant_id,
        method_type=method_type_pb(request.method_type),
        amount=money_pb(request.amount),
        refunded=money_pb(payment.refunded),
        status=payment_status_pb(payment.status),
        failure_type=failure_type_pb(payment.failure_type),
        decline_kind=decline_kind_pb(payment.decline_kind),
        retryable=payment.retryable,
        gateway=payment.gateway,
        gateway_code=payment.gateway_code,
        gateway_message=payment.gateway_message,
        normalized_code=payment.normalized_code,
        caller_reference=request.caller_reference,
        idempotency_key=request.idempotency_key,
        metadata=dict(request.metadata),
        gateway_reference=payment.gateway_reference,
    )
    message.created_at.FromDatetime(payment.created_at)
    message.updated_at.FromDatetime(payment.updated_at)
    return message


def refund_pb(refund: StoredRefund) -> pb.Refund:
    message = pb.Refund(
        refund_id=refund.refund_id,
        payment_id=refund.payment_id,
        amount=money_pb(refund.amount),
    )
    message.created_at.FromDatetime(refund.created_at)
    return message


REFUSALS: tuple[tuple[type[BillingError], pb.ChargeRefusal.ValueType], ...] = (
    (BackPressure, pb.CHARGE_REFUSAL_BACK_PRESSURE),
    (InvalidArgument, pb.CHARGE_REFUSAL_INVALID_ARGUMENT),
    (FailedPrecondition, pb.CHARGE_REFUSAL_KEY_REUSED),
    (Unavailable, pb.CHARGE_REFUSAL_IN_PROGRESS),
)
# A charge still in progress elsewhere is worth asking about again after about this long.
IN_PROGRESS_RETRY_AFTER = timedelta(seconds=1)


def _charge(request: pb.ChargeRequest, default_lane: Lane) -> tuple[ChargeRequest | InvalidArgument, Lane]:
    lane = LANES.get(request.lane, default_lane)
    try:
        method = METHOD_TYPES.ours(request.payment_method.type)
    except ValueError:
        return InvalidArgument.of("payment_method.type", "must be CARD, ACH or STRIPE"), lane
    try:
        amount = money_of(request.amount, "amount")
    except InvalidArgument as refusal:
        return refusal, lane
    return (
        ChargeRequest(
            merchant_id=request.merchant_id,
            method_type=method,
            token=request.payment_method.gateway_token,
            amount=amount,
            idempotency_key=request.idempotency_key,
            caller_reference=request.caller_reference,
            metadata=dict(request.metadata),
        ),
        lane,
    )


class _WithRetryInfo(Unavailable):
    """Back-pressure as gRPC says it: UNAVAILABLE with a google.rpc.RetryInfo detail."""

    def __init__(self, error: BackPressure) -> None:
        super().__init__(error.message)
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromTimedelta(error.retry_after)
        self.attachments = [info]


def _charge_result(key: str, answer: ChargeAnswer) -> pb.ChargeResult:
    result = pb.ChargeResult(idempotency_key=key, replayed=answer.replayed)
    if answer.payment is not None:
        result.payment.CopyFrom(payment_pb(answer.payment))
        return result
    error = answer.error
    assert error is not None  # an answer has a payment or an error
    result.refusal = next(refusal for kind, refusal in REFUSALS if isinstance(error, kind))
    result.message = error.message
    if isinstance(error, BackPressure):
        result.retry_after.FromTimedelta(error.retry_after)
    elif result.refusal == pb.CHARGE_REFUSAL_IN_PROGRESS:
        result.retry_after.FromTimedelta(IN_PROGRESS_RETRY_AFTER)
    return result


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def Charge(self, request: pb.ChargeRequest, context: Context) -> pb.ChargeResponse:
        charge, lane = _charge(request, Lane.INTERACTIVE)
        if isinstance(charge, InvalidArgument):
            raise charge
        # Shielded: a caller that hangs up must not cut a gateway call short and leave its outcome unknown.
        try:
            payment, replayed = await asyncio.shield(self._payments.charge(charge, lane))
        except BackPressure as error:
            raise _WithRetryInfo(error) from error
        return pb.ChargeResponse(payment=payment_pb(payment), replayed=replayed)

    async def ChargeBatch(self, request: pb.ChargeBatchRequest, context: Context) -> pb.ChargeBatchResponse:
        decoded = [_charge(charge, Lane.BATCH) for charge in request.charges]
        answers: list[ChargeAnswer | None] = [
            ChargeAnswer(None, error=charge) if isinstance(charge, InvalidArgument) else None
            for charge, _ in decoded
        ]

        async def make(lane: Lane) -> None:
            indexes = [i for i, (charge, of) in enumerate(decoded) if of is lane and answers[i] is None]
            charges = [charge for i in indexes if isinstance(charge := decoded[i][0], ChargeRequest)]
            made = await self._payments.charge_batch(charges, lane)
            for index, answer in zip(indexes, made, strict=True):
                answers[index] = answer

        # Shielded as Charge is: a caller that hangs up does not cut gateway calls short.
        await asyncio.shield(asyncio.gather(*(make(lane) for lane in {lane for _, lane in decoded})))
        return pb.ChargeBatchResponse(
            results=[
                _charge_result(charge.idempotency_key, answer)
                for charge, answer in zip(request.charges, answers, strict=True)
                if answer is not None
            ]
        )

    async def Refund(self, request: pb.RefundRequest, context: Context) -> pb.RefundResponse:
        partial = request.HasField("amount")
        refund, payment, replayed = await self._payments.refund(
            RefundRequest(
                payment_id=request.payment_id,
                amount=money_of(request.amount, "amount") if partial else None,
                idempotency_key=request.idempotency_key,
                reason=request.reason,
            )
        )
        return pb.RefundResponse(refund=refund_pb(refund), payment=payment_pb(payment), replayed=replayed)

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> pb.GetPaymentResponse:
        lookup = request.WhichOneof("lookup")
        if lookup is None or not getattr(request, lookup):
            raise InvalidArgument.of("lookup", "give a payment_id or an idempotency_key")
        payment = await self._payments.get(
            payment_id=request.payment_id if lookup == "payment_id" else "",
            idempotency_key=request.idempotency_key if lookup == "idempotency_key" else "",
        )
        return pb.GetPaymentResponse(payment=payment_pb(payment))

    async def GetCircuitState(
        self, request: pb.GetCircuitStateRequest, context: Context
    ) -> pb.GetCircuitStateResponse:
        if not request.merchant_id or not request.gateway:
            raise InvalidArgument.of("merchant_id" if not request.merchant_id else "gateway", "is required")
        view = self._payments.circuit(request.merchant_id, request.gateway)
        response = pb.GetCircuitStateResponse(
            state=CIRCUIT_STATES[view.state], consecutive_failures=view.consecutive_failures
        )
        if view.opened_at is not None:
            response.opened_at.FromDatetime(view.opened_at)
        return response
