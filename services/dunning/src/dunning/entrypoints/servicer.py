"""The gRPC servicer: thin, maps messages to use cases and answers back."""

from __future__ import annotations

from billing.dunning.v1 import dunning_pb2 as pb
from billing.dunning.v1 import dunning_pb2_grpc
from billing_common import context as call
from billing_common.auth import CONSOLE, OPERATOR, READERS
from billing_common.errors import InvalidArgument
from billing_common.grpc_server import Context
from billing_common.paging import PageTokens
from dunning.app.cases import CaseService
from dunning.app.policies import Policies
from dunning.app.ports import CaseFilter
from dunning.entrypoints import mappers as m

ACTIONS = {OPERATOR, CONSOLE}
# Who may call what: roles or callers named in tokens. Defaults; a deployment changes them with
# DUNNING_AUTH_ACCESS.
ACCESS: dict[str, set[str] | frozenset[str]] = {
    "GetCase": READERS,
    "ListCases": READERS,
    "PauseCase": ACTIONS,
    "ResumeCase": ACTIONS,
    "RetryNow": ACTIONS,
    "ResetCase": ACTIONS,
    "GetPolicy": READERS,
    "SetPolicy": {OPERATOR},
}


class DunningServicer(dunning_pb2_grpc.DunningServiceServicer):
    def __init__(self, cases: CaseService, policies: Policies, pages: PageTokens) -> None:
        self._cases = cases
        self._policies = policies
        self._pages = pages

    async def GetCase(self, request: pb.GetCaseRequest, context: Context) -> pb.GetCaseResponse:
        lookup = request.WhichOneof("lookup")
        if lookup is None or not getattr(request, lookup):
            raise InvalidArgument.of("lookup", "give a case_id or an invoice_id")
        view = await self._cases.get(request.case_id, request.invoice_id)
        return pb.GetCaseResponse(dunning_case=m.view_pb(view))

    async def ListCases(self, request: pb.ListCasesRequest, context: Context) -> pb.ListCasesResponse:
        state = None
        if request.state != pb.CASE_STATE_UNSPECIFIED:
            try:
                state = m.STATES.ours(request.state)
            except ValueError:
                raise InvalidArgument.of("state", "is not a case state") from None
        where = CaseFilter(state, request.merchant_id, request.account_id)
        page = await self._cases.list(where, self._pages.read(request, start=0))
        return pb.ListCasesResponse(
            cases=[m.case_pb(c) for c in page.items], next_page_token=self._pages.next_token(request, page)
        )

    async def PauseCase(self, request: pb.PauseCaseRequest, context: Context) -> pb.PauseCaseResponse:
        view = await self._cases.pause(request.case_id, request.reason, call.caller.get())
        return pb.PauseCaseResponse(dunning_case=m.view_pb(view))

    async def ResumeCase(self, request: pb.ResumeCaseRequest, context: Context) -> pb.ResumeCaseResponse:
        return pb.ResumeCaseResponse(
            dunning_case=m.view_pb(await self._cases.resume(request.case_id, call.caller.get()))
        )

    async def RetryNow(self, request: pb.RetryNowRequest, context: Context) -> pb.RetryNowResponse:
        return pb.RetryNowResponse(
            dunning_case=m.view_pb(await self._cases.retry_now(request.case_id, call.caller.get()))
        )

    async def ResetCase(self, request: pb.ResetCaseRequest, context: Context) -> pb.ResetCaseResponse:
        view = await self._cases.reset(request.case_id, request.reason, call.caller.get())
        return pb.ResetCaseResponse(dunning_case=m.view_pb(view))

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Context) -> pb.GetPolicyResponse:
        policy, is_default = await self._policies.get(request.merchant_id)
        return pb.GetPolicyResponse(policy=m.policy_pb(policy), is_default=is_default)

    async def SetPolicy(self, request: pb.SetPolicyRequest, context: Context) -> pb.SetPolicyResponse:
        if not request.HasField("policy"):
            raise InvalidArgument.of("policy", "is required")
        policy = await self._policies.set(m.policy_from_pb(request.policy))
        return pb.SetPolicyResponse(policy=m.policy_pb(policy))
