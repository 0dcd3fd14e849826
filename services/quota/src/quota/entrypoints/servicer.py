"""The gRPC servicer: thin, maps messages to use cases and answers back."""

from __future__ import annotations

from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.auth import OPERATOR, READERS
from billing_common.clock import Clock
from billing_common.errors import (
    BillingError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)
from billing_common.grpc_server import Context, status_code_for
from billing_common.idempotency import IdempotencyKey
from billing_common.paging import PageTokens
from billing_common.protos import TIERS, ProtoEnum, optional_datetime
from billing_common.tiers import Tier
from quota.app.catalog import Catalog
from quota.app.entitlements import Entitlements, GrantRequest
from quota.app.usage import RecordResult, Summary, Usage, UsageEventIn, UsageOutcome
from quota.entrypoints import mappers as m

# Who may call what: roles or callers named in tokens. Defaults; a deployment changes them with
# QUOTA_AUTH_ACCESS, e.g. `CheckQuota,CheckQuotaBatch,RecordUsage,RecordUsageBatch+=storefront` for a
# product service that meters its usage here.
ACCESS: dict[str, set[str] | frozenset[str]] = {
    "CheckQuota": {OPERATOR},
    "CheckQuotaBatch": {OPERATOR},
    "RecordUsage": {OPERATOR},
    "RecordUsageBatch": {OPERATOR},
    "GetPlan": {"recurring", *READERS},
    "ListPlans": READERS,
    "ListAddOns": READERS,
    "GetTierPlanMapping": {"recurring", *READERS},
    "GetUsageSummary": {"recurring", *READERS},
    "GetUsageSummaries": {"recurring", *READERS},
    "GetEntitlements": READERS,
    "CreatePlan": {OPERATOR},
    "UpdatePlan": {OPERATOR},
    "RetirePlan": {OPERATOR},
    "CreateAddOn": {OPERATOR},
    "SetTierPlanMapping": {OPERATOR},
    "SetTenantAddOn": {OPERATOR},
    "SetOverride": {OPERATOR},
    "CreateGrant": {OPERATOR},
}
MAX_BATCH = 10_000
OUTCOMES = ProtoEnum(UsageOutcome, pb.UsageOutcome, "USAGE_OUTCOME_")


class QuotaExceeded(ResourceExhausted):
    """Over quota; the check result travels in the status details."""

    def __init__(self, message: str, check: pb.CheckQuotaResponse) -> None:
        super().__init__(message)
        self.attachments = [check]


def _usage_event(event: pb.UsageEvent) -> UsageEventIn:
    return UsageEventIn(
        event.tenant_id,
        event.key,
        event.delta,
        event.idempotency_key,
        optional_datetime(event, "occurred_at"),
    )


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(
        self, catalog: Catalog, entitlements: Entitlements, usage: Usage, clock: Clock, pages: PageTokens
    ) -> None:
        self._catalog = catalog
        self._entitlements = entitlements
        self._usage = usage
        self._clock = clock
        self._pages = pages

    # ------------------------------------------------------------ catalog

    async def CreatePlan(self, request: pb.CreatePlanRequest, context: Context) -> pb.CreatePlanResponse:
        plan = await self._catalog.create_plan(
            request.code, m.plan_draft(request.spec), IdempotencyKey.of("CreatePlan", request)
        )
        return pb.CreatePlanResponse(plan=m.plan_pb(plan))

    async def UpdatePlan(self, request: pb.UpdatePlanRequest, context: Context) -> pb.UpdatePlanResponse:
        plan = await self._catalog.update_plan(
            request.code, m.plan_draft(request.spec), IdempotencyKey.of("UpdatePlan", request)
        )
        return pb.UpdatePlanResponse(plan=m.plan_pb(plan))

    async def GetPlan(self, request: pb.GetPlanRequest, context: Context) -> pb.GetPlanResponse:
        return pb.GetPlanResponse(plan=m.plan_pb(await self._catalog.get_plan(request.code, request.version)))

    async def ListPlans(self, request: pb.ListPlansRequest, context: Context) -> pb.ListPlansResponse:
        page = await self._catalog.list_plans(self._pages.read(request, start=""), request.include_retired)
        return pb.ListPlansResponse(
            plans=[m.plan_pb(p) for p in page.items], next_page_token=self._pages.next_token(request, page)
        )

    async def RetirePlan(self, request: pb.RetirePlanRequest, context: Context) -> pb.RetirePlanResponse:
        return pb.RetirePlanResponse(plan=m.plan_pb(await self._catalog.retire_plan(request.code)))

    async def CreateAddOn(self, request: pb.CreateAddOnRequest, context: Context) -> pb.CreateAddOnResponse:
        add_on = await self._catalog.create_add_on(
            m.add_on_draft(request.add_on), IdempotencyKey.of("CreateAddOn", request)
        )
        return pb.CreateAddOnResponse(add_on=m.add_on_pb(add_on))

    async def ListAddOns(self, request: pb.ListAddOnsRequest, context: Context) -> pb.ListAddOnsResponse:
        return pb.ListAddOnsResponse(add_ons=[m.add_on_pb(a) for a in await self._catalog.list_add_ons()])

    async def SetTierPlanMapping(
        self, request: pb.SetTierPlanMappingRequest, context: Context
    ) -> pb.SetTierPlanMappingResponse:
        mapping: dict[str, str] = {}
        for index, item in enumerate(request.mappings):
            tier = TIERS.get(item.tier, None)
            if tier is None:
                raise InvalidArgument.of(f"mappings[{index}].tier", "must be LITE, PLUS or PRO")
            mapping[tier] = item.plan_code
        stored = await self._catalog.set_tier_plans(mapping)
        return pb.SetTierPlanMappingResponse(mappings=_tier_plans(stored))

    async def GetTierPlanMapping(
        self, request: pb.GetTierPlanMappingRequest, context: Context
    ) -> pb.GetTierPlanMappingResponse:
        return pb.GetTierPlanMappingResponse(mappings=_tier_plans(await self._catalog.tier_plans()))

    # ------------------------------------------------------------ entitlements

    async def SetTenantAddOn(
        self, request: pb.SetTenantAddOnRequest, context: Context
    ) -> pb.SetTenantAddOnResponse:
        resolution = await self._entitlements.attach_add_on(
            request.tenant_id, request.add_on_code, request.attached
        )
        return pb.SetTenantAddOnResponse(entitlements=m.entitlements_pb(resolution, self._clock.now()))

    async def SetOverride(self, request: pb.SetOverrideRequest, context: Context) -> pb.SetOverrideResponse:
        resolution = await self._entitlements.set_override(
            request.tenant_id,
            request.key,
            request.limit,
            request.unlimited,
            m.BEHAVIOURS.get(request.behaviour, None),
            request.remove,
        )
        return pb.SetOverrideResponse(entitlements=m.entitlements_pb(resolution, self._clock.now()))

    async def CreateGrant(self, request: pb.CreateGrantRequest, context: Context) -> pb.CreateGrantResponse:
        grant = await self._entitlements.create_grant(
            GrantRequest(
                request.tenant_id, request.key, request.quantity, optional_datetime(request, "expires_at")
            ),
            IdempotencyKey.of("CreateGrant", request),
        )
        return pb.CreateGrantResponse(grant=m.grant_pb(grant))

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: Context
    ) -> pb.GetEntitlementsResponse:
        if not request.tenant_id:
            raise InvalidArgument.of("tenant_id", "is required")
        resolution = await self._entitlements.resolution(request.tenant_id)
        return m.entitlements_pb(resolution, self._clock.now())

    # ------------------------------------------------------------ usage (the hot path)

    async def CheckQuota(self, request: pb.CheckQuotaRequest, context: Context) -> pb.CheckQuotaResponse:
        result = await self._usage.check_one(request.tenant_id, request.key, request.amount)
        return m.check_pb(result)

    async def CheckQuotaBatch(
        self, request: pb.CheckQuotaBatchRequest, context: Context
    ) -> pb.CheckQuotaBatchResponse:
        results = await self._usage.check(request.tenant_id, [(c.key, c.amount) for c in request.checks])
        response = pb.CheckQuotaBatchResponse()
        for result in results:
            m.fill_check(response.results.add(), result)
        return response

    async def RecordUsage(self, request: pb.RecordUsageRequest, context: Context) -> pb.RecordUsageResponse:
        (result,) = await self._usage.record([_usage_event(request.event)], group_commit=True)
        if result.outcome is UsageOutcome.INVALID:
            if result.conflict:
                raise FailedPrecondition(f"idempotency_key {result.error}")
            raise InvalidArgument(FieldViolation(f"event.{result.error_field}", result.error))
        assert result.check is not None
        check = m.check_pb(result.check)
        if result.outcome is UsageOutcome.DENIED:
            raise QuotaExceeded(f"{request.event.key}: {result.error}", check)
        return pb.RecordUsageResponse(counted=result.outcome is UsageOutcome.COUNTED, quota=check)

    async def RecordUsageBatch(
        self, request: pb.RecordUsageBatchRequest, context: Context
    ) -> pb.RecordUsageBatchResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument.of("events", f"at most {MAX_BATCH} events per call")
        results = await self._usage.record([_usage_event(e) for e in request.events], group_commit=False)
        return pb.RecordUsageBatchResponse(results=[_usage_result(r) for r in results])

    async def GetUsageSummary(
        self, request: pb.GetUsageSummaryRequest, context: Context
    ) -> pb.GetUsageSummaryResponse:
        summary = await self._usage.summary(
            request.tenant_id,
            optional_datetime(request, "period_start"),
            optional_datetime(request, "period_end"),
        )
        return _summary_pb(request.tenant_id, summary)

    async def GetUsageSummaries(
        self, request: pb.GetUsageSummariesRequest, context: Context
    ) -> pb.GetUsageSummariesResponse:
        summaries = await self._usage.summaries(
            [
                (
                    asked.tenant_id,
                    optional_datetime(asked, "period_start"),
                    optional_datetime(asked, "period_end"),
                )
                for asked in request.requests
            ]
        )
        response = pb.GetUsageSummariesResponse()
        for asked, summary in zip(request.requests, summaries, strict=True):
            if isinstance(summary, BillingError):
                code = status_code_for(summary).value[0]
                response.results.add(error=summary.message, code=code)
            else:
                response.results.add(summary=_summary_pb(asked.tenant_id, summary))
        return response


def _summary_pb(tenant_id: str, summary: Summary) -> pb.GetUsageSummaryResponse:
    currency = summary.currency
    response = pb.GetUsageSummaryResponse(
        tenant_id=tenant_id, add_ons=[m.active_add_on_pb(held) for held in summary.add_ons]
    )
    total = 0
    for key, charge in zip(summary.keys, summary.charges, strict=True):
        item = response.totals.add(
            key=key,
            quantity=charge.quantity,
            included_quantity=charge.included_quantity,
            billable_quantity=charge.billable_quantity,
        )
        if charge.unit_price is not None:
            item.unit_price.value = str(charge.unit_price)
        item.amount.amount_minor = charge.amount.amount_minor
        item.amount.currency = currency
        total += charge.amount.amount_minor
    response.total_amount.amount_minor = total
    response.total_amount.currency = currency
    return response


def _usage_result(result: RecordResult) -> pb.UsageResult:
    message = pb.UsageResult(
        idempotency_key=result.idempotency_key,
        outcome=OUTCOMES.pb(result.outcome),
        error=f"{result.error_field}: {result.error}" if result.error else "",
    )
    if result.check is not None:
        m.fill_check(message.quota, result.check)
    return message


def _tier_plans(mapping: dict[str, str]) -> list[pb.TierPlan]:
    return [pb.TierPlan(tier=TIERS.pb(Tier(tier)), plan_code=code) for tier, code in sorted(mapping.items())]
