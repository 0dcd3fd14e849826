"""gRPC clients of quota (plans, tier mapping, usage) and gateway-adapter (charges)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc

from billing.common.v1 import common_pb2
from billing.events.v1 import payment_pb2
from billing.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from billing.quota.v1 import quota_pb2, quota_pb2_grpc
from billing_common.errors import BillingError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from billing_common.protos import (
    CHARGE_REFUSAL_CODES,
    FREQUENCIES,
    METHOD_TYPES,
    STATUS_CODES,
    TIERS,
    money_of,
    money_pb,
    to_datetime,
)
from recurring.adapters.codec import decline_kind, failure_type, payment_status
from recurring.app.ports import RecurringMetrics
from recurring.domain.invoicing import AddOnUse, PeriodUsage, UsageCharge
from recurring.domain.payments import (
    CallFailure,
    ChargeRequest,
    ChargeResult,
    NoAnswer,
    call_failure,
    described,
    refusal,
)
from recurring.domain.schedule import Period
from recurring.domain.subscription import PlanInfo
from recurring.domain.usage import UsagePeriod

log = logging.getLogger(__name__)

_UNAVAILABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def _translate(error: grpc.aio.AioRpcError, what: str) -> BillingError:
    return _error_of(error.code(), error.details() or "", what)


def _error_of(code: grpc.StatusCode, details: str, what: str) -> BillingError:
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument.of(what, details or "refused")
    if code in _UNAVAILABLE:
        return Unavailable(f"{what}: {details}")
    return FailedPrecondition(f"{what}: {details}")


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
        frequency = FREQUENCIES.get(plan.frequency, None)
        if frequency is None:
            raise FailedPrecondition(f"plan {code} has no billing frequency")
        return PlanInfo(
            plan.code,
            plan.version,
            plan.name,
            money_of(plan.price),
            frequency,
            plan.trial_days,
        )

    async def plan_for_tier(self, tier: str) -> str | None:
        try:
            reply = await self._stub.GetTierPlanMapping(
                quota_pb2.GetTierPlanMappingRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error, "tier") from None
        return next((m.plan_code for m in reply.mappings if TIERS.get(m.tier, None) == tier), None)

    async def usages(self, periods: Sequence[UsagePeriod]) -> list[PeriodUsage | BillingError]:
        """Billable usage of each tenant's [start, end) and the add-ons held in it, in one call; none
        when quota has no plan to price it with, or the error quota gave for that tenant (Unavailable
        for each when quota did not answer)."""
        request = quota_pb2.GetUsageSummariesRequest()
        for period in periods:
            asked = request.requests.add(tenant_id=period.tenant)
            asked.period_start.FromDatetime(period.start)
            asked.period_end.FromDatetime(period.end)
        try:
            reply = await self._stub.GetUsageSummaries(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            failure = _translate(error, "usage")
            if isinstance(failure, Unavailable) or len(periods) == 1:
                return [failure] * len(periods)
            # One tenant's broken record fails the whole call: each alone gets its own answer.
            return [answer for period in periods for answer in await self.usages([period])]
        return [self._usage_of(result, period) for result, period in zip(reply.results, periods, strict=True)]

    def _usage_of(
        self, result: quota_pb2.UsageSummaryResult, period: UsagePeriod
    ) -> PeriodUsage | BillingError:
        if not result.HasField("summary"):
            code = STATUS_CODES.get(result.code, grpc.StatusCode.UNKNOWN)
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return PeriodUsage()
            return _error_of(code, result.error, "usage")
        return self._period_usage(result.summary, period.start, period.end)

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
                money_of(t.amount),
            )
            for t in summary.totals
            if t.amount.amount_minor
        )
        add_ons = tuple(
            AddOnUse(
                a.code,
                a.name,
                money_of(a.price),
                period,
                Period(self._day(to_datetime(a.active_from)), self._day(to_datetime(a.active_until))),
            )
            for a in summary.add_ons
        )
        return PeriodUsage(charges, add_ons)

    def _day(self, instant: datetime) -> date:
        return instant.astimezone(self._zone).date()


# ChargeBatch takes at most this many charges per call (its contract).
BATCH_LIMIT = 1000


def _charge_pb(request: ChargeRequest, lane: gateway_pb2.Lane.ValueType) -> gateway_pb2.ChargeRequest:
    return gateway_pb2.ChargeRequest(
        merchant_id=request.merchant_id,
        payment_method=common_pb2.PaymentMethod(
            type=METHOD_TYPES.pb(request.method_type), gateway_token=request.token
        ),
        amount=money_pb(request.amount),
        idempotency_key=request.idempotency_key,
        caller_reference=request.invoice_id,
        metadata={"invoice_id": request.invoice_id},
        lane=lane,
    )


def charge_result(
    payment: gateway_pb2.Payment | payment_pb2.PaymentFacts, decline_code: str = ""
) -> ChargeResult:
    """A payment as a charge's answer or a payment.* event tells it."""
    return ChargeResult(
        payment_id=payment.payment_id,
        status=payment_status(payment.status),
        gateway=payment.gateway,
        failure_type=failure_type(payment.failure_type),
        decline_kind=decline_kind(payment.decline_kind),
        decline_code=decline_code or payment.normalized_code or payment.gateway_code,
        retryable=payment.retryable,
    )


class GatewayClient:
    """gateway-adapter routes, paces and answers; this client only says which lane a charge is in."""

    def __init__(self, channel: grpc.aio.Channel, timeout: timedelta, metrics: RecurringMetrics) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._timeout = timeout.total_seconds()
        self._metrics = metrics

    async def charge(self, request: ChargeRequest) -> ChargeResult | NoAnswer:
        """One charge someone waits for (a retry), in the interactive lane; its answer is logged."""
        result: ChargeResult | NoAnswer
        try:
            reply = await self._stub.Charge(
                _charge_pb(request, gateway_pb2.LANE_INTERACTIVE), timeout=self._timeout
            )
            result = self._result(reply.payment)
        except grpc.aio.AioRpcError as error:
            result = self._unanswered(error.code().name, error.details() or "")
        log.info(
            "retry charge got no answer" if isinstance(result, NoAnswer) else "retry charge answered",
            extra={"invoice_id": request.invoice_id, "key": request.idempotency_key, **described(result)},
        )
        return result

    async def charge_batch(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | NoAnswer]:
        """A run's charges in the batch lane, one ChargeBatch call per BATCH_LIMIT; one answer each,
        in order."""
        answers: list[ChargeResult | NoAnswer] = []
        for start in range(0, len(requests), BATCH_LIMIT):
            answers += await self._charge_batch(requests[start : start + BATCH_LIMIT])
        return answers

    async def _charge_batch(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | NoAnswer]:
        message = gateway_pb2.ChargeBatchRequest(
            charges=[_charge_pb(request, gateway_pb2.LANE_BATCH) for request in requests]
        )
        try:
            reply = await self._stub.ChargeBatch(message, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            if len(requests) > 1 and call_failure(code) is CallFailure.REFUSED:
                # The edge refuses a whole batch for one malformed charge: each alone gets its own word.
                return [answer for request in requests for answer in await self._charge_batch([request])]
            return [self._unanswered(code, error.details() or "") for _ in requests]
        answers: list[ChargeResult | NoAnswer] = []
        for answer in reply.results:
            if answer.HasField("payment"):
                answers.append(self._result(answer.payment))
                continue
            retry_after = answer.retry_after.ToTimedelta() if answer.HasField("retry_after") else None
            answers.append(
                self._unanswered(
                    CHARGE_REFUSAL_CODES.get(answer.refusal, grpc.StatusCode.UNKNOWN).name,
                    answer.message,
                    retry_after,
                )
            )
        return answers

    def _result(self, payment: gateway_pb2.Payment) -> ChargeResult:
        result = charge_result(payment)
        self._metrics.charge_answered(result.gateway, result.status.value)
        return result

    def _unanswered(
        self, code: str, details: str, retry_after: timedelta | None = None
    ) -> ChargeResult | NoAnswer:
        """A call or a charge that came back without a payment: a refusal of the request, or no word."""
        failure = call_failure(code)
        if failure is CallFailure.REFUSED:
            self._metrics.charge_answered("", "refused")
            return refusal(code, details)
        self._metrics.charge_answered("", "no_answer")
        return NoAnswer(code, details, ours=failure is CallFailure.BROKEN, retry_after=retry_after)
