"""What must hold once the system has settled, read the way an auditor would: the gateway's own
ledger of charges, then each customer's invoices, subscription, dunning cases, ledger and quota.

Every broken promise becomes a finding that names the customer, card, invoice and counts, so a
failure says what went wrong without reading logs."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from billing.common.v1 import common_pb2 as common
from billing.dunning.v1 import dunning_pb2 as dpb
from billing.gateway.v1 import gateway_pb2 as gpb
from billing.quota.v1 import quota_pb2 as qpb
from billing.recurring.v1 import recurring_pb2 as rpb
from tests.chaos.harness import ChaosSuite
from tests.chaos.workload import HARD, HEALTHY, NO_ANSWER, PLAN, SOFT, USAGE_KEY, Customer, UsageLoad

T = TypeVar("T")
APPROVED = "approved"
NO_ANSWER_NAMES = {code.name for code in NO_ANSWER}
EXPECTED_CASE = {SOFT: dpb.CASE_STATE_RETRY_SCHEDULED, HARD: dpb.CASE_STATE_AWAITING_PAYMENT_METHOD}


@dataclass(frozen=True)
class SandboxCharge:
    """One request that reached the sandbox gateway, as its own table records it."""

    idempotency_key: str
    merchant: str
    token: str
    amount_minor: int
    outcome: str
    created_at: datetime

    @property
    def invoice_id(self) -> str:
        return self.idempotency_key.rpartition(":")[0]


@dataclass
class Findings:
    """Broken promises by kind; the test fails when there is any."""

    by_kind: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, detail: str) -> None:
        self.by_kind[kind].append(detail)

    def __bool__(self) -> bool:
        return any(self.by_kind.values())

    def report(self, per_kind: int = 12) -> str:
        lines = []
        for kind, details in self.by_kind.items():
            lines.append(f"{kind}: {len(details)}")
            lines += [f"  - {detail}" for detail in details[:per_kind]]
            if len(details) > per_kind:
                lines.append(f"  - ... and {len(details) - per_kind} more")
        return "\n".join(lines)


@dataclass
class Observed:
    """One customer as the services describe it after the chaos."""

    customer: Customer
    invoices: list[rpb.Invoice]
    subscription: rpb.Subscription | None
    cases: list[dpb.DunningCase]
    ledger: list[rpb.LedgerEntry]
    plan_in_quota: str
    usage_counter: int
    usage_ledger: int
    # gateway-adapter's payment for each attempt of an invoice that is not paid, by idempotency key.
    payments: dict[str, gpb.Payment] = field(default_factory=dict)
    # Which events the usage ledger and the answers disagree about, when they do.
    usage_story: str = ""


async def bounded(calls: Iterable[Callable[[], Awaitable[T]]], limit: int = 16) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def sandbox_charges(suite: ChaosSuite) -> list[SandboxCharge]:
    async with suite.admin() as conn:
        rows = await conn.fetch(
            f"""SELECT idempotency_key, merchant_id, token, amount_minor, outcome, created_at
                FROM {suite.table("gateway-adapter", "sandbox_charges")} ORDER BY created_at"""
        )
    return [SandboxCharge(*row) for row in rows]


async def _all_pages(fetch: Callable[[str], Awaitable[Any]], items: str) -> list[Any]:
    found: list[Any] = []
    token = ""
    while True:
        reply = await fetch(token)
        found += list(getattr(reply, items))
        token = reply.next_page_token
        if not token:
            return found


async def observe(suite: ChaosSuite, customer: Customer) -> Observed:
    recurring, dunning, quota = suite.stub("recurring"), suite.stub("dunning"), suite.stub("quota")
    account = customer.account
    invoices = await _all_pages(
        lambda token: recurring.ListInvoices(
            rpb.ListInvoicesRequest(account_id=account, page_token=token), timeout=30
        ),
        "invoices",
    )
    subscription = None
    if customer.subscription_id:
        subscription = (
            await recurring.GetSubscription(
                rpb.GetSubscriptionRequest(subscription_id=customer.subscription_id), timeout=30
            )
        ).subscription
    cases = await _all_pages(
        lambda token: dunning.ListCases(
            dpb.ListCasesRequest(account_id=account, page_token=token), timeout=30
        ),
        "cases",
    )
    ledger = await _all_pages(
        lambda token: recurring.ListLedgerEntries(
            rpb.ListLedgerEntriesRequest(account_id=account, page_token=token), timeout=30
        ),
        "entries",
    )
    entitlements = await quota.GetEntitlements(qpb.GetEntitlementsRequest(tenant_id=account), timeout=30)
    counter = await quota.CheckQuota(
        qpb.CheckQuotaRequest(tenant_id=account, key=USAGE_KEY, amount=1), timeout=30
    )
    now = datetime.now(UTC)
    summary_request = qpb.GetUsageSummaryRequest(tenant_id=account)
    summary_request.period_start.FromDatetime(now - timedelta(days=7))
    summary_request.period_end.FromDatetime(now + timedelta(days=1))
    summary = await quota.GetUsageSummary(summary_request, timeout=30)
    in_ledger = sum(total.quantity for total in summary.totals if total.key == USAGE_KEY)
    payments = {}
    gateway = suite.stub("gateway-adapter")
    for invoice in invoices:
        if invoice.status != rpb.INVOICE_STATUS_PAID:
            for txn in invoice.transactions:
                reply = await gateway.GetPayment(
                    gpb.GetPaymentRequest(idempotency_key=txn.idempotency_key), timeout=30
                )
                payments[txn.idempotency_key] = reply.payment
    return Observed(
        customer,
        invoices,
        subscription,
        cases,
        ledger,
        entitlements.plan_code,
        counter.used,
        in_ledger,
        payments,
    )


def _clock(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def _story(invoice: rpb.Invoice, seen: Observed, charges: list[SandboxCharge]) -> str:
    """What each attempt of the invoice was, at gateway-adapter and at the sandbox gateway, with times."""
    parts = [_describe_invoice(invoice)]
    for txn in invoice.transactions:
        payment = seen.payments.get(txn.idempotency_key)
        if payment is not None:
            status = common.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")
            parts.append(
                f"gateway-adapter {txn.idempotency_key}: {status} {payment.normalized_code} "
                f"(created {_clock(payment.created_at.ToDatetime(UTC))}, "
                f"updated {_clock(payment.updated_at.ToDatetime(UTC))})"
            )
        at_gateway = [c for c in charges if c.idempotency_key == txn.idempotency_key]
        parts.append(
            f"sandbox {txn.idempotency_key}: "
            + (", ".join(f"{c.outcome} at {_clock(c.created_at)}" for c in at_gateway) or "never reached")
        )
    return "; ".join(parts)


def _describe_invoice(invoice: rpb.Invoice) -> str:
    attempts = ", ".join(
        f"#{t.attempt} {common.PaymentStatus.Name(t.status).removeprefix('PAYMENT_STATUS_')}"
        + (
            f" {common.FailureType.Name(t.failure_type).removeprefix('FAILURE_TYPE_')} {t.decline_code}"
            if t.failure_type not in (common.FAILURE_TYPE_UNSPECIFIED, common.FAILURE_TYPE_NONE)
            else ""
        )
        for t in invoice.transactions
    )
    status = rpb.InvoiceStatus.Name(invoice.status).removeprefix("INVOICE_STATUS_")
    return f"invoice {invoice.invoice_id} {status} [{attempts or 'no attempt'}]"


def _who(customer: Customer) -> str:
    return f"{customer.account} ({customer.card}, {customer.token}, billed {customer.billing_date})"


def check_customer(seen: Observed, charges: list[SandboxCharge], usage: int, findings: Findings) -> None:
    customer = seen.customer
    who = _who(customer)
    approved = [c for c in charges if c.outcome == APPROVED]
    occurrence = [i for i in seen.invoices if _date(i.billing_date) == customer.billing_date]

    # Exactly-once, counted on the gateway's side.
    if len(approved) > 1:
        findings.add(
            "charged more than once (sandbox ledger)",
            f"{who}: {len(approved)} successful charges, keys {[c.idempotency_key for c in approved]}",
        )
    if customer.card == HEALTHY and not approved:
        findings.add(
            "healthy card never charged (sandbox ledger)",
            f"{who}: 0 successful charges; "
            + ("; ".join(_describe_invoice(i) for i in occurrence) or "no invoice"),
        )
    if customer.card != HEALTHY and approved:
        findings.add("declining card charged", f"{who}: {[c.idempotency_key for c in approved]}")
    if len(occurrence) != 1:
        findings.add(
            "not exactly one invoice for the due occurrence",
            f"{who}: {len(occurrence)} invoices ({[i.invoice_id for i in occurrence]})",
        )
    ours = {i.invoice_id for i in seen.invoices}
    for charge in charges:
        if charge.invoice_id not in ours:
            findings.add("sandbox charge for an invoice the customer does not have", f"{who}: {charge}")

    # The customer's state follows what the card did, never what our pods did.
    for invoice in occurrence:
        expected = rpb.INVOICE_STATUS_PAID if customer.card == HEALTHY else rpb.INVOICE_STATUS_PAYMENT_FAILED
        if invoice.status != expected:
            kind = (
                "healthy card's invoice not paid"
                if customer.card == HEALTHY
                else "declined invoice not failed"
            )
            findings.add(kind, f"{who}: {_story(invoice, seen, charges)}")
    if seen.subscription is not None:
        expected_status = (
            rpb.SUBSCRIPTION_STATUS_ACTIVE if customer.card == HEALTHY else rpb.SUBSCRIPTION_STATUS_PAST_DUE
        )
        if seen.subscription.status != expected_status:
            status = rpb.SubscriptionStatus.Name(seen.subscription.status)
            findings.add(
                "healthy card's subscription not ACTIVE"
                if customer.card == HEALTHY
                else "declined card's subscription not PAST_DUE",
                f"{who}: subscription {seen.subscription.subscription_id} is {status}",
            )

    # No lost events: every failed invoice has exactly one case; no healthy card is in dunning.
    cases_by_invoice: dict[str, list[dpb.DunningCase]] = defaultdict(list)
    for case in seen.cases:
        cases_by_invoice[case.invoice_id].append(case)
    if customer.card == HEALTHY:
        for case in seen.cases:
            failed = next((i for i in seen.invoices if i.invoice_id == case.invoice_id), None)
            findings.add(
                "healthy card sent to dunning",
                f"{who}: case {case.case_id} {dpb.CaseState.Name(case.state)} "
                f"{common.FailureType.Name(case.failure_type)} {case.decline_code!r}; "
                + (_story(failed, seen, charges) if failed else f"invoice {case.invoice_id}"),
            )
    for invoice in seen.invoices:
        found = cases_by_invoice.get(invoice.invoice_id, [])
        if invoice.status == rpb.INVOICE_STATUS_PAYMENT_FAILED and len(found) != 1:
            findings.add(
                "failed invoice without exactly one dunning case (lost or doubled event)",
                f"{who}: {_describe_invoice(invoice)} has {len(found)} cases",
            )
    if customer.card in EXPECTED_CASE:
        own_decline = customer.token.removeprefix("tok_")
        for invoice in occurrence:
            last = invoice.transactions[-1] if invoice.transactions else None
            if last is not None and (
                last.failure_type != common.FAILURE_TYPE_CARDHOLDER or last.decline_code != own_decline
            ):
                findings.add(
                    "declining card failed for a reason of ours, not its own decline",
                    f"{who}: expected {own_decline}; {_story(invoice, seen, charges)}",
                )
        for case in seen.cases:
            if case.state != EXPECTED_CASE[customer.card]:
                findings.add(
                    "dunning case in the wrong state for the decline",
                    f"{who}: case {case.case_id} is {dpb.CaseState.Name(case.state)}, "
                    f"expected {dpb.CaseState.Name(EXPECTED_CASE[customer.card])}",
                )

    # The ledger: every transaction balances; its cash is what the gateway took; the receivable
    # is what the unpaid invoices say is owed.
    sums: Counter[tuple[str, str]] = Counter()
    cash = receivable = 0
    for entry in seen.ledger:
        sums[entry.ledger_transaction_id, entry.amount.currency] += entry.amount.amount_minor
        if entry.account.startswith("cash:"):
            cash += entry.amount.amount_minor
        if entry.account == f"receivable:{customer.account}":
            receivable += entry.amount.amount_minor
    for (transaction, currency), total in sums.items():
        if total:
            findings.add("unbalanced ledger transaction", f"{who}: {transaction} sums to {total} {currency}")
    taken = sum(c.amount_minor for c in approved)
    if cash != taken:
        findings.add(
            "ledger cash differs from what the gateway took", f"{who}: ledger {cash}, sandbox {taken}"
        )
    owed = sum(
        i.amount_due.amount_minor
        for i in seen.invoices
        if i.status in (rpb.INVOICE_STATUS_OPEN, rpb.INVOICE_STATUS_PAYMENT_FAILED)
    )
    if receivable != owed:
        findings.add(
            "receivable differs from the unpaid invoices", f"{who}: ledger {receivable}, invoices {owed}"
        )

    # Quota: the subscription reached it, and its counter is its usage ledger is what it accepted.
    if seen.plan_in_quota != PLAN:
        findings.add(
            "subscription never reached quota (lost subscription.created)",
            f"{who}: quota's plan is {seen.plan_in_quota!r}",
        )
    if not seen.usage_counter == seen.usage_ledger == usage:
        findings.add(
            "quota counter, usage ledger and accepted usage differ",
            f"{customer.account}: counter {seen.usage_counter}, ledger {seen.usage_ledger}, "
            f"accepted {usage}{seen.usage_story}",
        )


async def _usage_story(suite: ChaosSuite, account: str, usage: UsageLoad) -> str:
    """The events quota answered about one way and stored another, with every answer each one got."""
    async with suite.admin() as conn:
        stored = {
            row["idempotency_key"]
            for row in await conn.fetch(
                f"SELECT idempotency_key FROM {suite.table('quota', 'usage_records')} WHERE tenant_id = $1",
                account,
            )
        }
    accepted = {k for k, e in usage.accepted.items() if e.tenant_id == account}
    missing = sorted(accepted - stored)
    unasked = sorted(stored - accepted)

    def told(key: str) -> str:
        return f"{key} ({', then '.join(usage.history.get(key, []))})"

    text = f"; answered OK but not in the usage ledger: {', '.join(map(told, missing))}" if missing else ""
    if unasked:
        text += f"; in the usage ledger but never answered OK: {', '.join(unasked)}"
    if not missing and not unasked:
        # The counter alone is off: the events that had no answer at first are the ones it may hold twice.
        doubtful = sorted(k for k in accepted if usage.history.get(k, ["OK"])[0] in NO_ANSWER_NAMES)
        text += f"; events first answered with an error: {', '.join(map(told, doubtful)) or 'none'}"
    return text


def _date(value: common.Date) -> date:
    return date(value.year, value.month, value.day)


async def check_everything(
    suite: ChaosSuite, everyone: list[Customer], usage: UsageLoad, findings: Findings
) -> list[Observed]:
    charges = await sandbox_charges(suite)
    seen = await bounded(functools.partial(observe, suite, c) for c in everyone)
    by_invoice: dict[str, list[SandboxCharge]] = defaultdict(list)
    for charge in charges:
        by_invoice[charge.invoice_id].append(charge)
    accepted = usage.accepted_by_tenant()
    known_invoices: set[str] = set()
    for observed in seen:
        ids = {i.invoice_id for i in observed.invoices}
        known_invoices |= ids
        mine = [c for invoice_id in ids for c in by_invoice.get(invoice_id, [])]
        account = observed.customer.account
        if not observed.usage_counter == observed.usage_ledger == accepted[account]:
            observed.usage_story = await _usage_story(suite, account, usage)
        check_customer(observed, mine, accepted[account], findings)
    for charge in charges:
        if charge.invoice_id not in known_invoices:
            findings.add("sandbox charge that matches no invoice", str(charge))
    for key, reason in usage.refused.items():
        findings.add("usage event refused", f"{key}: {reason}")
    for key, event in usage.waiting.items():
        findings.add("usage event never answered", f"{key} for {event.tenant_id}")
    return seen
