"""gRPC clients of quota (plans, tier mapping, usage) and gateway-adapter (charges)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
from prometheus_client import Counter

from billing.common.v1 import common_pb2
from billing.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from billing.quota.v1 import quota_pb2, quota_pb2_grpc
from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from billing_common.money import Money
from billing_common.protos import to_datetime
from recurring.app.ports import ChargeNotAnswered, PlanInfo
from recurring.domain.invoicing import AddOnUse, PeriodUsage, UsageCharge
from recurring.domain.payments import (
    CallFailure,
    ChargeRequest,
    ChargeResult,
    DeclineKind,
    FailureType,
    NoAnswer,
    PaymentStatus,
    call_failure,
    refusal,
)
from recurring.domain.schedule import Frequency, Period

CHARGES = Counter(
    "recurring_charges_total", "Charges sent to gateway-adapter, by gateway and status", ["gateway", "status"]
)

FREQUENCIES = {
    common_pb2.BILLING_FREQUENCY_MONTHLY: Frequency.MONTHLY,
    common_pb2.BILLING_FREQUENCY_WEEKLY: Frequency.WEEKLY,
    common_pb2.BILLING_FREQUENCY_BIWEEKLY: Frequency.BIWEEKLY,
    common_pb2.BILLING_FREQUENCY_FOUR_WEEKLY: Frequency.FOUR_WEEKLY,
    common_pb2.BILLING_FREQUENCY_ONE_TIME: Frequency.ONE_TIME,
}
TIERS = {"lite": common_pb2.TIER_LITE, "plus": common_pb2.TIER_PLUS, "pro": common_pb2.TIER_PRO}
METHOD_TYPES = {
    "card": common_pb2.PAYMENT_METHOD_TYPE_CARD,
    "ach": common_pb2.PAYMENT_METHOD_TYPE_ACH,
    "stripe": common_pb2.PAYMENT_METHOD_TYPE_STRIPE,
}
PAYMENT_STATUSES = {
    common_pb2.PAYMENT_STATUS_SUCCEEDED: PaymentStatus.SUCCEEDED,
    common_pb2.PAYMENT_STATUS_DECLINED: PaymentStatus.DECLINED,
    common_pb2.PAYMENT_STATUS_PENDING: PaymentStatus.PENDING,
    common_pb2.PAYMENT_STATUS_UNKNOWN: PaymentStatus.UNKNOWN,
    common_pb2.PAYMENT_STATUS_FAILED: PaymentStatus.FAILED,
    common_pb2.PAYMENT_STATUS_SETTLED: PaymentStatus.SETTLED,
    common_pb2.PAYMENT_STATUS_RETURNED: PaymentStatus.RETURNED,
    common_pb2.PAYMENT_STATUS_REFUNDED: PaymentStatus.REFUNDED,
    common_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED: PaymentStatus.REFUNDED,
}
FAILURE_TYPES = {
    common_pb2.FAILURE_TYPE_NONE: FailureType.NONE,
    common_pb2.FAILURE_TYPE_CARDHOLDER: FailureType.CARDHOLDER,
    common_pb2.FAILURE_TYPE_MERCHANT: FailureType.MERCHANT,
    common_pb2.FAILURE_TYPE_GATEWAY_UNREACHABLE: FailureType.GATEWAY_UNREACHABLE,
    common_pb2.FAILURE_TYPE_UNKNOWN_OUTCOME: FailureType.UNKNOWN_OUTCOME,
}
DECLINE_KINDS = {
    common_pb2.DECLINE_KIND_NONE: DeclineKind.NONE,
    common_pb2.DECLINE_KIND_SOFT: DeclineKind.SOFT,
    common_pb2.DECLINE_KIND_HARD: DeclineKind.HARD,
}
_UNAVAILABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def _translate(error: grpc.aio.AioRpcError, what: str) -> Exception:
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {error.details()}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument.of(what, error.details() or "refused")
    if code in _UNAVAILABLE:
        return Unavailable(f"{what}: {error.details()}")
    return FailedPrecondition(f"{what}: {error.details()}")


class QuotaClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: timedelta, zone: ZoneInfo) -> None:
        self._stub = quota_pb2_grpc.QuotaServiceStub(channel)
        self._timeout = timeout.total_seconds()
        # Billing days are days of this zone: an add-on's instants become the days it was held.
        self._zone = zone

    async def get_plan(self, code: str, version: int = 0) -> PlanInfo:
        try:
            reply = await self._stub.GetPlan(
                quota_pb2.GetPlanRequest(code=code, version=version), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error, "plan_code") from None
        plan = reply.plan
        if plan.retired:
            raise FailedPrecondition(f"plan {code} is retired")
        if plan.frequency not in FREQUENCIES:
            raise FailedPrecondition(f"plan {code} has no billing frequency")
        return PlanInfo(
            plan.code,
            plan.version,
            plan.name,
            Money(plan.price.amount_minor, plan.price.currency),
            FREQUENCIES[plan.frequency],
            plan.trial_days,
        )

    async def plan_for_tier(self, tier: str) -> str | None:
        try:
            reply = await self._stub.GetTierPlanMapping(
                quota_pb2.GetTierPlanMappingRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error, "tier") from None
        return next((m.plan_code for m in reply.mappings if m.tier == TIERS.get(tier)), None)

    async def usage(self, tenant: str, start: datetime, end: datetime) -> PeriodUsage:
        """Billable usage of [start, end) and the add-ons held in it; none when quota has no plan to
        price it with."""
        request = quota_pb2.GetUsageSummaryRequest(tenant_id=tenant)
        request.period_start.FromDatetime(start)
        request.period_end.FromDatetime(end)
        try:
            reply = await self._stub.GetUsageSummary(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return PeriodUsage()
            raise _translate(error, "usage") from None
        return self._period_usage(reply, start, end)

    def _period_usage(
        self, summary: quota_pb2.GetUsageSummaryResponse, start: datetime, end: datetime
    ) -> PeriodUsage:
        """A summary of [start, end) as the biller takes it: billable usage, and each stretch an
        add-on was held as the days of the billing time zone it covers."""
        period = Period(self._day(start), self._day(end))
        charges = tuple(
            UsageCharge(
                t.key,
                t.billable_quantity,
                t.unit_price.value,
                Money(t.amount.amount_minor, t.amount.currency),
            )
            for t in summary.totals
            if t.amount.amount_minor
        )
        add_ons = tuple(
            AddOnUse(
                a.code,
                a.name,
                Money(a.price.amount_minor, a.price.currency),
                period,
                Period(self._day(to_datetime(a.active_from)), self._day(to_datetime(a.active_until))),
            )
            for a in summary.add_ons
        )
        return PeriodUsage(charges, add_ons)

    def _day(self, instant: datetime) -> date:
        return instant.astimezone(self._zone).date()


class GatewayClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: timedelta) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._timeout = timeout.total_seconds()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        message = gateway_pb2.ChargeRequest(
            merchant_id=request.merchant_id,
            payment_method=common_pb2.PaymentMethod(
                type=METHOD_TYPES[request.method_type], gateway_token=request.token
            ),
            amount=common_pb2.Money(
                amount_minor=request.amount.amount_minor, currency=request.amount.currency
            ),
            idempotency_key=request.idempotency_key,
            caller_reference=request.invoice_id,
            metadata={"invoice_id": request.invoice_id},
        )
        try:
            reply = await self._stub.Charge(message, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            failure = call_failure(code)
            if failure is CallFailure.REFUSED:
                CHARGES.labels("", "refused").inc()
                return refusal(code, error.details() or "")
            CHARGES.labels("", "no_answer").inc()
            answer = NoAnswer(code, error.details() or "", ours=failure is CallFailure.BROKEN)
            raise ChargeNotAnswered(answer) from None
        payment = reply.payment
        result = ChargeResult(
            payment_id=payment.payment_id,
            status=PAYMENT_STATUSES.get(payment.status, PaymentStatus.UNKNOWN),
            gateway=payment.gateway,
            failure_type=FAILURE_TYPES.get(payment.failure_type, FailureType.NONE),
            decline_kind=DECLINE_KINDS.get(payment.decline_kind, DeclineKind.NONE),
            decline_code=payment.normalized_code or payment.gateway_code,
            retryable=payment.retryable,
        )
        CHARGES.labels(result.gateway, result.status.value).inc()
        return result
