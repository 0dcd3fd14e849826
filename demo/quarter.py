"""Bill the demo company day by day on the suite's test clock, then read the outcome back.

Each simulated day: the load generator records the day's usage (metered API calls, and daily
exports that quota refuses beyond the plan's limit), some customers turn on SSO or API clients
(a tier scan follows), then `AdvanceClock` moves the whole suite a day and returns once the day's
runs, payments, dunning attempts and events are done.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration

from billing.common.v1 import common_pb2 as common
from billing.dunning.v1 import dunning_pb2 as dpb
from billing.quota.v1 import quota_pb2 as qpb
from billing.recurring.v1 import recurring_pb2 as rpb
from billing.tier.v1 import tier_pb2 as tpb
from demo.company import API_CALLS, EXPORTS, MERCHANT, RESOLD_END_USERS, Customer, signals
from demo.stubs import Stubs, pages

DAY = timedelta(days=1)
# The longest one simulated day may take to catch up before the demo says what is still running.
DAY_TIMEOUT_S = 120.0


@dataclass
class Timings:
    """Wall seconds of each phase of the demo, and of each simulated day's AdvanceClock."""

    seeding: float = 0.0
    usage: float = 0.0
    scans: float = 0.0
    advances: list[float] = field(default_factory=list)
    read_back: float = 0.0

    def line(self) -> str:
        advancing = sum(self.advances)
        per_day = (
            f" (median {statistics.median(self.advances):.2f} s, max {max(self.advances):.2f} s a day)"
            if self.advances
            else ""
        )
        return (
            f"seeding {self.seeding:.1f} s, usage {self.usage:.1f} s, tier scans {self.scans:.1f} s, "
            f"advancing {advancing:.1f} s{per_day}, summary {self.read_back:.1f} s"
        )


@dataclass
class Summary:
    days: int = 0
    seconds: float = 0.0
    timings: Timings = field(default_factory=Timings)
    invoices: Counter[str] = field(default_factory=Counter)
    charged_minor: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    cases: Counter[str] = field(default_factory=Counter)
    tier_changes: Counter[str] = field(default_factory=Counter)
    # The plans the tier-mapped subscriptions ended on (all started on lite).
    tier_plans: Counter[str] = field(default_factory=Counter)
    quota_denials: int = 0
    ledger_transactions: int = 0
    ledger_unbalanced: int = 0
    still_running: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def counts(counter: Counter[str]) -> str:
            return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "none"

        return [
            f"billed {self.days} days in {self.seconds:.1f} s of wall time",
            f"time went to: {self.timings.line()}",
            f"invoices: {sum(self.invoices.values())} ({counts(self.invoices)})",
            f"charged: {self.charged_minor / 100:,.2f} USD",
            f"failures by type: {counts(self.failures)}",
            f"dunning: {counts(self.cases)}",
            f"tier changes: {counts(self.tier_changes)}",
            f"tier-mapped subscriptions on plan: {counts(self.tier_plans)}",
            f"quota denials: {self.quota_denials}",
            f"ledger: {self.ledger_transactions} transactions, "
            + ("balanced" if not self.ledger_unbalanced else f"{self.ledger_unbalanced} UNBALANCED"),
            *(f"still running: {line}" for line in self.still_running),
        ]


async def clock_now(stubs: Stubs) -> datetime:
    reply = await stubs.recurring.GetClock(rpb.GetClockRequest())
    return reply.now.ToDatetime(tzinfo=UTC)


async def record_day(stubs: Stubs, customers: list[Customer], now: datetime, rng: random.Random) -> int:
    """The day's usage for the tier-mapped customers, in one batch; how many exports quota refused."""
    occurred = now - timedelta(minutes=1)
    events = []
    for c in customers:
        if not c.tier_mapped:
            continue
        events.append(qpb.UsageEvent(tenant_id=c.account_id, key=API_CALLS, delta=rng.randint(200, 1500)))
        for _ in range(rng.choice((0, 1, 2, 4, 8))):
            events.append(qpb.UsageEvent(tenant_id=c.account_id, key=EXPORTS, delta=1))
    for n, event in enumerate(events):
        event.occurred_at.FromDatetime(occurred)
        event.idempotency_key = f"demo-{occurred.date()}-{n}"
    reply = await stubs.quota.RecordUsageBatch(qpb.RecordUsageBatchRequest(events=events))
    return sum(1 for r in reply.results if r.outcome == qpb.USAGE_OUTCOME_DENIED)


async def grow(stubs: Stubs, customers: list[Customer], day: int, days: int, now: datetime) -> None:
    """A third of the way in some customers turn on API clients, half way others SSO (and so does
    one of the distributor's end users): a scan finds it, tier moves them up, and recurring moves
    the subscriptions of those that pay for themselves to their tier's plan with proration."""
    mapped = [c for c in customers if c.tier_mapped]
    if day == days // 3:
        changed = [s for c in mapped[1::6] for s in signals(c.account_id, now, sso=False, api_clients=2)]
    elif day == days // 2:
        accounts = [c.account_id for c in mapped[2::6]] + RESOLD_END_USERS[:1]
        changed = [s for account in accounts for s in signals(account, now, sso=True, api_clients=0)]
    else:
        return
    await stubs.tier.ReportSignals(tpb.ReportSignalsRequest(signals=changed))
    await stubs.scan(f"demo-scan-{now.date()}")


async def bill(
    stubs: Stubs, customers: list[Customer], eve: datetime, end: datetime, summary: Summary
) -> None:
    """Bill day by day from where the suite clock stands until it reaches `end`; which day of the
    quarter it is, and when the demo stops, are read from the clock (an advance that moved it
    further than asked, or a demo run again after it stopped half-way, bills no extra day)."""
    rng = random.Random(7)  # the same quarter every time
    timings = summary.timings
    days = (end - eve) // DAY
    started = time.monotonic()
    now = first = await clock_now(stubs)
    while now < end:
        mark = time.monotonic()
        summary.quota_denials += await record_day(stubs, customers, now, rng)
        timings.usage += time.monotonic() - mark
        mark = time.monotonic()
        await grow(stubs, customers, (now - eve) // DAY, days, now)
        timings.scans += time.monotonic() - mark
        mark = time.monotonic()
        reply = await stubs.recurring.AdvanceClock(
            rpb.AdvanceClockRequest(by=Duration(seconds=86_400)), timeout=DAY_TIMEOUT_S
        )
        timings.advances.append(time.monotonic() - mark)
        now = reply.now.ToDatetime(tzinfo=UTC)
        before, summary.days = summary.days, (now - first) // DAY
        if summary.days // 15 > before // 15:
            recent = " ".join(f"{s:.1f}" for s in timings.advances[-15:])
            print(
                f"  {now:%Y-%m-%d}: {summary.days} days billed "
                f"({time.monotonic() - started:.0f} s); seconds per day: {recent}",
                flush=True,
            )
        if not reply.caught_up:
            summary.still_running = list(reply.still_running)
            break
    summary.seconds = time.monotonic() - started


async def read_back(stubs: Stubs, customers: list[Customer], since: datetime, summary: Summary) -> None:
    """The outcome as the services themselves report it."""
    ours = {c.account_id for c in customers}
    invoices = [
        i
        for i in await pages(
            stubs.recurring.ListInvoices, rpb.ListInvoicesRequest(page_size=1000), "invoices"
        )
        if i.account_id in ours
    ]
    for invoice in invoices:
        summary.invoices[rpb.InvoiceStatus.Name(invoice.status).removeprefix("INVOICE_STATUS_").lower()] += 1
        if invoice.status == rpb.INVOICE_STATUS_PAID:
            summary.charged_minor += invoice.total.amount_minor
    cases = await pages(
        stubs.dunning.ListCases, dpb.ListCasesRequest(merchant_id=MERCHANT, page_size=1000), "cases"
    )
    for case in cases:
        summary.failures[case.decline_code or common.FailureType.Name(case.failure_type)] += 1
        summary.cases[dpb.CaseState.Name(case.state).removeprefix("CASE_STATE_").lower()] += 1
    request = tpb.ListTierChangesRequest(page_size=1000)
    request.since.FromDatetime(since)
    for change in await pages(stubs.tier.ListTierChanges, request, "changes"):
        # Databases move by the rule that fired, end users and the distributor by roll-up.
        if change.previous_tier != common.TIER_UNSPECIFIED:
            summary.tier_changes[change.rule_id] += 1
    for c in customers:
        if not c.tier_mapped:
            continue
        subscribed = rpb.ListSubscriptionsRequest(account_id=c.account_id)
        for subscription in (await stubs.recurring.ListSubscriptions(subscribed)).subscriptions:
            summary.tier_plans[subscription.plan_code] += 1
    for account in sorted(ours):
        entries = await pages(
            stubs.recurring.ListLedgerEntries,
            rpb.ListLedgerEntriesRequest(account_id=account, page_size=1000),
            "entries",
        )
        sums: Counter[str] = Counter()
        for entry in entries:
            sums[entry.ledger_transaction_id] += entry.amount.amount_minor
        summary.ledger_transactions += len(sums)
        summary.ledger_unbalanced += sum(1 for total in sums.values() if total != 0)
