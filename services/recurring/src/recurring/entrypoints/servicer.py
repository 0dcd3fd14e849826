"""The gRPC servicer: thin, maps messages to use cases and answers back."""

from __future__ import annotations

from datetime import timedelta

from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common import context
from billing_common.auth import CONSOLE, OPERATOR, READERS
from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument
from billing_common.grpc_server import Context
from billing_common.idempotency import IdempotencyKey
from billing_common.paging import PageTokens
from billing_common.protos import FREQUENCIES, money_of, money_pb, to_datetime
from billing_common.suite_clock import ClockControl, ClockRefused
from recurring.adapters.codec import INVOICE_STATUSES, RUN_KINDS, SUBSCRIPTION_STATUSES
from recurring.adapters.views import Views
from recurring.app.invoices import Invoices
from recurring.app.runs import Runs
from recurring.app.subscriptions import Subscriptions
from recurring.domain.amendments import Changes, CreateCommand
from recurring.domain.invoicing import InvoiceFilter
from recurring.domain.subscription import Cause, SubscriptionFilter
from recurring.entrypoints import mappers as m

# AdvanceClock's longest wait for the suite to catch up, when the call sets no shorter deadline.
CATCH_UP_LIMIT = timedelta(minutes=10)
ACTIONS = {OPERATOR, CONSOLE}
# Who may call what: roles or callers named in tokens. Defaults; a deployment changes them with
# RECURRING_AUTH_ACCESS, e.g. `CreateSubscription+=signup` for a product service that sells plans.
ACCESS: dict[str, set[str] | frozenset[str]] = {
    "CreateSubscription": ACTIONS,
    "GetSubscription": READERS,
    "ListSubscriptions": READERS,
    "UpdateSubscription": ACTIONS,
    "PauseSubscription": ACTIONS,
    "ResumeSubscription": ACTIONS,
    "CancelSubscription": ACTIONS,
    "GetSubscriptionHistory": READERS,
    "RunBilling": {OPERATOR},
    "GetRun": READERS,
    "ListRuns": READERS,
    "ListRunItems": READERS,
    "ResumeRun": ACTIONS,
    "GetInvoice": READERS,
    "ListInvoices": READERS,
    "VoidInvoice": ACTIONS,
    "RetryInvoicePayment": {"dunning", *ACTIONS},
    "GetAccountBalance": READERS,
    "ListLedgerEntries": READERS,
    "AddAccountCredit": ACTIONS,
    "GetClock": READERS,
    "SetClock": ACTIONS,
    "AdvanceClock": ACTIONS,
}


def _cause() -> Cause:
    return Cause(context.caller.get() or "unknown")


class RecurringServicer(recurring_pb2_grpc.RecurringServiceServicer):
    def __init__(
        self,
        subscriptions: Subscriptions,
        runs: Runs,
        invoices: Invoices,
        views: Views,
        clock: Clock,
        clock_control: ClockControl | None,
        pages: PageTokens,
    ) -> None:
        self._subscriptions = subscriptions
        self._runs = runs
        self._invoices = invoices
        self._views = views
        self._clock = clock
        self._clock_control = clock_control
        self._pages = pages

    # ------------------------------------------------------------ subscriptions

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Context
    ) -> pb.CreateSubscriptionResponse:
        pricing = request.WhichOneof("pricing")
        frequency = FREQUENCIES.get(request.frequency, None)
        if request.frequency and frequency is None:
            raise InvalidArgument.of("frequency", "is not a known frequency")
        command = CreateCommand(
            account_id=request.account_id,
            merchant_id=request.merchant_id,
            plan_code=request.plan_code if pricing == "plan_code" else "",
            custom_amount=money_of(request.custom_amount, "custom_amount")
            if pricing == "custom_amount"
            else None,
            frequency=frequency,
            start_date=m.optional_date(request, "start_date", "start_date"),
            anchor_day=request.billing_anchor_day,
            payment_method=(
                m.payment_method(request.payment_method, "payment_method")
                if request.HasField("payment_method")
                else None
            ),
            tier_mapped=request.tier_mapped,
        )
        sub = await self._subscriptions.create(
            command, IdempotencyKey.of("CreateSubscription", request), _cause()
        )
        return pb.CreateSubscriptionResponse(subscription=m.subscription_pb(sub))

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: Context
    ) -> pb.GetSubscriptionResponse:
        sub = await self._views.subscription(request.subscription_id)
        return pb.GetSubscriptionResponse(subscription=m.subscription_pb(sub))

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Context
    ) -> pb.ListSubscriptionsResponse:
        where = SubscriptionFilter(
            request.account_id,
            SUBSCRIPTION_STATUSES.get(request.status, None),
            FREQUENCIES.get(request.frequency, None),
        )
        page = await self._views.subscriptions(where, self._pages.read(request, start=""))
        return pb.ListSubscriptionsResponse(
            subscriptions=[m.subscription_pb(s) for s in page.items],
            next_page_token=self._pages.next_token(request, page),
        )

    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: Context
    ) -> pb.UpdateSubscriptionResponse:
        mask = frozenset(request.update_mask.paths)
        given = request.subscription
        changes = Changes(
            mask=mask,
            amount=money_of(given.amount, "subscription.amount") if "amount" in mask else None,
            payment_method=(
                m.payment_method(given.payment_method, "subscription.payment_method")
                if "payment_method" in mask
                else None
            ),
            anchor_day=given.billing_anchor_day,
            plan_code=given.plan_code,
        )
        sub = await self._subscriptions.update(
            request.subscription_id, changes, IdempotencyKey.of("UpdateSubscription", request), _cause()
        )
        return pb.UpdateSubscriptionResponse(subscription=m.subscription_pb(sub))

    async def PauseSubscription(
        self, request: pb.PauseSubscriptionRequest, context: Context
    ) -> pb.PauseSubscriptionResponse:
        sub = await self._subscriptions.pause(
            request.subscription_id, IdempotencyKey.of("PauseSubscription", request), _cause()
        )
        return pb.PauseSubscriptionResponse(subscription=m.subscription_pb(sub))

    async def ResumeSubscription(
        self, request: pb.ResumeSubscriptionRequest, context: Context
    ) -> pb.ResumeSubscriptionResponse:
        sub = await self._subscriptions.resume(
            request.subscription_id, IdempotencyKey.of("ResumeSubscription", request), _cause()
        )
        return pb.ResumeSubscriptionResponse(subscription=m.subscription_pb(sub))

    async def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, context: Context
    ) -> pb.CancelSubscriptionResponse:
        sub = await self._subscriptions.cancel(
            request.subscription_id,
            request.at_period_end,
            IdempotencyKey.of("CancelSubscription", request),
            _cause(),
        )
        return pb.CancelSubscriptionResponse(subscription=m.subscription_pb(sub))

    async def GetSubscriptionHistory(
        self, request: pb.GetSubscriptionHistoryRequest, context: Context
    ) -> pb.GetSubscriptionHistoryResponse:
        entries = await self._views.history(request.subscription_id)
        return pb.GetSubscriptionHistoryResponse(entries=[m.history_pb(e) for e in entries])

    # ------------------------------------------------------------ runs

    async def RunBilling(self, request: pb.RunBillingRequest, context: Context) -> pb.RunBillingResponse:
        run = await self._runs.run_billing(
            m.optional_date(request, "billing_date", "billing_date"),
            RUN_KINDS.get(request.kind, None),
            request.dry_run,
        )
        return pb.RunBillingResponse(run=m.run_pb(run))

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=m.run_pb(await self._runs.get(request.run_id)))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        page = await self._views.runs(self._pages.read(request, start=0))
        return pb.ListRunsResponse(
            runs=[m.run_pb(r) for r in page.items], next_page_token=self._pages.next_token(request, page)
        )

    async def ListRunItems(
        self, request: pb.ListRunItemsRequest, context: Context
    ) -> pb.ListRunItemsResponse:
        page = await self._views.run_items(request.run_id, self._pages.read(request, start=0))
        items = [m.run_item_pb(item) for item in page.items]
        return pb.ListRunItemsResponse(items=items, next_page_token=self._pages.next_token(request, page))

    async def ResumeRun(self, request: pb.ResumeRunRequest, context: Context) -> pb.ResumeRunResponse:
        return pb.ResumeRunResponse(run=m.run_pb(await self._runs.resume(request.run_id, request.gateway)))

    # ------------------------------------------------------------ invoices and the ledger

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Context) -> pb.GetInvoiceResponse:
        invoice, transactions = await self._views.invoice(request.invoice_id)
        return pb.GetInvoiceResponse(invoice=m.invoice_pb(invoice, transactions))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: Context
    ) -> pb.ListInvoicesResponse:
        where = InvoiceFilter(
            request.subscription_id, request.account_id, INVOICE_STATUSES.get(request.status, None)
        )
        page = await self._views.invoices(where, self._pages.read(request, start=0))
        return pb.ListInvoicesResponse(
            invoices=[m.invoice_pb(i, t) for i, t in page.items],
            next_page_token=self._pages.next_token(request, page),
        )

    async def VoidInvoice(self, request: pb.VoidInvoiceRequest, context: Context) -> pb.VoidInvoiceResponse:
        await self._invoices.void(
            request.invoice_id, request.reason, IdempotencyKey.of("VoidInvoice", request)
        )
        invoice, transactions = await self._views.invoice(request.invoice_id)
        return pb.VoidInvoiceResponse(invoice=m.invoice_pb(invoice, transactions))

    async def RetryInvoicePayment(
        self, request: pb.RetryInvoicePaymentRequest, context: Context
    ) -> pb.RetryInvoicePaymentResponse:
        txn_id, replayed = await self._invoices.retry_payment(request.invoice_id, request.idempotency_key)
        invoice, transactions = await self._views.invoice(request.invoice_id)
        (txn,) = [t for t in transactions if t.transaction_id == txn_id]
        return pb.RetryInvoicePaymentResponse(
            invoice=m.invoice_pb(invoice, transactions), transaction=m.transaction_pb(txn), replayed=replayed
        )

    async def GetAccountBalance(
        self, request: pb.GetAccountBalanceRequest, context: Context
    ) -> pb.GetAccountBalanceResponse:
        balance, credit = await self._views.balance(request.account_id, request.currency)
        return pb.GetAccountBalanceResponse(balance=money_pb(balance), credit_available=money_pb(credit))

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        page = await self._views.ledger_entries(request.account_id, self._pages.read(request, start=0))
        return pb.ListLedgerEntriesResponse(
            entries=[m.ledger_entry_pb(e) for e in page.items],
            next_page_token=self._pages.next_token(request, page),
        )

    async def AddAccountCredit(
        self, request: pb.AddAccountCreditRequest, context: Context
    ) -> pb.AddAccountCreditResponse:
        amount = money_of(request.amount, "amount") if request.HasField("amount") else None
        available = await self._invoices.add_credit(
            request.account_id, amount, request.reason, IdempotencyKey.of("AddAccountCredit", request)
        )
        return pb.AddAccountCreditResponse(credit_available=money_pb(available))

    # ------------------------------------------------------------ test clock

    def _control(self) -> ClockControl:
        if self._clock_control is None:
            raise FailedPrecondition("the test clock is not enabled on this service")
        return self._clock_control

    async def GetClock(self, request: pb.GetClockRequest, context: Context) -> pb.GetClockResponse:
        reply = pb.GetClockResponse(test_clock=self._clock_control is not None)
        reply.now.FromDatetime(self._clock.now())
        return reply

    async def SetClock(self, request: pb.SetClockRequest, context: Context) -> pb.SetClockResponse:
        control = self._control()
        if not request.HasField("now"):
            raise InvalidArgument.of("now", "required")
        try:
            now = await control.set(to_datetime(request.now))
        except ClockRefused as refused:
            raise InvalidArgument.of("now", str(refused)) from None
        reply = pb.SetClockResponse()
        reply.now.FromDatetime(now)
        return reply

    async def AdvanceClock(
        self, request: pb.AdvanceClockRequest, context: Context
    ) -> pb.AdvanceClockResponse:
        control = self._control()
        step = request.step.ToTimedelta() if request.HasField("step") else timedelta(0)
        remaining = context.time_remaining()
        limit = (
            CATCH_UP_LIMIT if remaining is None else min(CATCH_UP_LIMIT, timedelta(seconds=remaining * 0.9))
        )
        try:
            outcome = await control.advance(request.by.ToTimedelta(), step or timedelta(days=1), limit)
        except ClockRefused as refused:
            raise InvalidArgument.of("by", str(refused)) from None
        reply = pb.AdvanceClockResponse(caught_up=outcome.caught_up, still_running=outcome.still_running)
        reply.now.FromDatetime(outcome.now)
        return reply
