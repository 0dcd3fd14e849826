"""recurring.RetryInvoicePayment over gRPC, its answer turned into an attempt result."""

from __future__ import annotations

from datetime import timedelta

import grpc

from billing.common.v1 import common_pb2
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from dunning.adapters.codec import failure_of
from dunning.domain.cases import AttemptResult, ResultKind

SUCCEEDED = {common_pb2.PAYMENT_STATUS_SUCCEEDED, common_pb2.PAYMENT_STATUS_SETTLED}
NOT_FINAL = {common_pb2.PAYMENT_STATUS_PENDING, common_pb2.PAYMENT_STATUS_UNKNOWN}
FAILED = {
    common_pb2.PAYMENT_STATUS_DECLINED,
    common_pb2.PAYMENT_STATUS_FAILED,
    common_pb2.PAYMENT_STATUS_RETURNED,
}
# Answers that mean "this invoice cannot be charged by this request". FAILED_PRECONDITION is not
# one: recurring answers it while an earlier charge awaits its outcome ("retry with the same key"),
# and when the invoice is no longer open, which its invoice.paid/voided event settles anyway.
REFUSALS = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}


class GrpcRecurring:
    def __init__(self, channel: grpc.aio.Channel, timeout: timedelta) -> None:
        self._stub = recurring_pb2_grpc.RecurringServiceStub(channel)
        self._timeout = timeout.total_seconds()

    async def retry_invoice_payment(self, invoice_id: str, idempotency_key: str) -> AttemptResult:
        request = pb.RetryInvoicePaymentRequest(invoice_id=invoice_id, idempotency_key=idempotency_key)
        try:
            reply = await self._stub.RetryInvoicePayment(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            kind = ResultKind.REFUSED if exc.code() in REFUSALS else ResultKind.UNAVAILABLE
            return AttemptResult(kind, detail=f"{exc.code().name}: {exc.details()}")
        return attempt_result(reply)


def attempt_result(reply: pb.RetryInvoicePaymentResponse) -> AttemptResult:
    transaction = reply.transaction
    status = transaction.status
    if reply.invoice.status == pb.INVOICE_STATUS_PAID or status in SUCCEEDED:
        return AttemptResult(ResultKind.SUCCEEDED)
    if status in NOT_FINAL:
        return AttemptResult(ResultKind.PENDING, detail=common_pb2.PaymentStatus.Name(status))
    if status in FAILED:
        failure = failure_of(
            transaction.failure_type,
            transaction.decline_kind,
            transaction.decline_code,
            transaction.decline_kind != common_pb2.DECLINE_KIND_HARD,
        )
        return AttemptResult(ResultKind.DECLINED, failure, transaction.decline_code)
    if reply.invoice.status in (pb.INVOICE_STATUS_VOID, pb.INVOICE_STATUS_UNCOLLECTIBLE):
        return AttemptResult(ResultKind.REFUSED, detail=pb.InvoiceStatus.Name(reply.invoice.status))
    return AttemptResult(ResultKind.UNAVAILABLE, detail="recurring answered without a payment status")
