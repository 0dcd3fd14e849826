"""What each page shows, assembled from the services' answers (through the cache)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from billing_common.clock import Clock
from billing_common.errors import NotFound
from billing_common.money import MINOR_DIGITS
from console.app.ports import DeadLetters, Record
from console.app.reads import CachedReads
from console.domain import billing, dunning, history, tiers

# Lists are read page after page, up to this many pages of the services' largest size: the
# overview's figures and charts, and each list a page shows, cover at most the first 10,000 records.
MOST_PAGES = 20
RECENT_RUNS = 30
BREAKER_MERCHANTS = 10


@dataclass(frozen=True)
class Breaker:
    merchant_id: str
    gateway: str
    state: str
    consecutive_failures: int


class Pages:
    def __init__(
        self, reads: CachedReads, dead_letters: DeadLetters, clock: Clock, gateways: Sequence[str]
    ) -> None:
        self._reads = reads
        self._dead_letters = dead_letters
        self._clock = clock
        self._gateways = tuple(gateways)

    # ------------------------------------------------------------------------- overview

    async def overview(self) -> dict[str, Any]:
        runs_answer, cases, invoices, changes, depths = await asyncio.gather(
            self._reads.read("recurring", "ListRuns", {"page_size": RECENT_RUNS}),
            self._all("dunning", "ListCases", {}, "cases"),
            self._all("recurring", "ListInvoices", {}, "invoices"),
            self._all("tier", "ListTierChanges", {}, "changes"),
            self._dead_letters.depths(),
        )
        runs = [billing.run_summary(r) for r in runs_answer.get("runs", ())]
        today = self._clock.now().date()
        latest_day = max((r.billing_date for r in runs if r.billing_date), default=today)
        revenue = billing.revenue_by_day(invoices)
        return {
            "today": today,
            "runs_day": today if billing.runs_of_day(runs, today) else latest_day,
            "todays_runs": billing.runs_of_day(runs, today) or billing.runs_of_day(runs, latest_day),
            "recent_runs": runs,
            "halted": [(r, gateway) for r in runs for gateway in r.halted_gateways],
            "backlog": dunning.backlog(cases),
            "recovery_rate": dunning.recovery_rate(cases),
            "dead_letters": depths,
            "breakers": await self._breakers(),
            "charts": {
                "revenue": revenue,
                # For drawing only: the chart shows major units; the table beside it, minor units.
                "digits": {currency: MINOR_DIGITS.get(currency, 2) for currency in revenue},
                "recovery": dunning.recovery_by_day(cases),
                "durations": billing.run_durations(runs),
                "tiers": tiers.distribution(changes),
            },
        }

    async def _all(self, service: str, method: str, request: dict[str, Any], field: str) -> list[Record]:
        return await self._reads.read_all(service, method, request, field, MOST_PAGES)

    async def _breakers(self) -> list[Breaker]:
        subscriptions = await self._all("recurring", "ListSubscriptions", {}, "subscriptions")
        merchants = sorted({s["merchant_id"] for s in subscriptions if s["merchant_id"]})
        pairs = [(m, g) for m in merchants[:BREAKER_MERCHANTS] for g in self._gateways]
        states = await asyncio.gather(
            *(
                self._reads.read("gateway-adapter", "GetCircuitState", {"merchant_id": m, "gateway": g})
                for m, g in pairs
            )
        )
        return [
            Breaker(m, g, str(s.get("state", "")), s.get("consecutive_failures", 0))
            for (m, g), s in zip(pairs, states, strict=True)
        ]

    # ------------------------------------------------------------------------- accounts

    async def accounts(self) -> list[str]:
        subscriptions = await self._all("recurring", "ListSubscriptions", {}, "subscriptions")
        return sorted({s["account_id"] for s in subscriptions})

    async def account(self, account_id: str) -> dict[str, Any]:
        by_account = {"account_id": account_id}
        (
            (tier, tier_history, hierarchy, entitlements),
            (subscribed, billed, ledger, cases),
        ) = await asyncio.gather(
            asyncio.gather(
                self._reads.maybe("tier", "GetAccountTier", by_account),
                self._reads.maybe("tier", "GetTierHistory", by_account),
                self._reads.maybe("tier", "GetHierarchy", by_account),
                self._reads.maybe("quota", "GetEntitlements", {"tenant_id": account_id}),
            ),
            asyncio.gather(
                self._all("recurring", "ListSubscriptions", by_account, "subscriptions"),
                self._all("recurring", "ListInvoices", by_account, "invoices"),
                self._all("recurring", "ListLedgerEntries", by_account, "entries"),
                self._all("dunning", "ListCases", by_account, "cases"),
            ),
        )
        # Tier knows every account of the hierarchy; recurring and dunning, every account they billed.
        if tier is None and hierarchy is None and not (subscribed or billed or ledger or cases):
            raise NotFound("no service knows this account")
        # A balance is per currency: one for each currency the account is billed in.
        currencies = sorted({s["amount"]["currency"] for s in subscribed if s.get("amount")})
        balances = await asyncio.gather(
            *(
                self._reads.read("recurring", "GetAccountBalance", {**by_account, "currency": currency})
                for currency in currencies
            )
        )
        resolved = (entitlements or {}).get("entitlements", ())
        periods = billing.usage_periods(resolved)
        summaries = await asyncio.gather(
            *(
                self._reads.maybe(
                    "quota",
                    "GetUsageSummary",
                    {"tenant_id": account_id, "period_start": start, "period_end": end},
                )
                for start, end in periods
            )
        )
        steps = tiers.timeline((tier_history or {}).get("changes", ()))
        current = (tier or {}).get("account_tier")
        current_tier = tiers.tier_name(current.get("tier")) if current else ""
        return {
            "account_id": account_id,
            "tier": current,
            "timeline": steps,
            "became": tiers.when_became(steps, current_tier) if current_tier else None,
            "hierarchy": (hierarchy or {}).get("root"),
            "subscriptions": subscribed,
            "invoices": billed,
            "balances": balances,
            "ledger": ledger,
            "entitlements": entitlements,
            "usage": billing.usage_against_entitlements(
                resolved,
                {p: (s or {}).get("totals", ()) for p, s in zip(periods, summaries, strict=True)},
            ),
            "cases": cases,
        }

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        by_id = {"subscription_id": subscription_id}
        found, changes, invoices = await asyncio.gather(
            self._reads.read("recurring", "GetSubscription", by_id),
            self._reads.read("recurring", "GetSubscriptionHistory", by_id),
            self._all("recurring", "ListInvoices", by_id, "invoices"),
        )
        return {
            "subscription": found["subscription"],
            "history": history.history_diffs(changes.get("entries", ())),
            "invoices": invoices,
        }

    # ------------------------------------------------------------------------- runs

    async def runs(self) -> list[billing.RunSummary]:
        answer = await self._reads.read("recurring", "ListRuns", {"page_size": 100})
        return [billing.run_summary(r) for r in answer.get("runs", ())]

    async def run(self, run_id: str) -> dict[str, Any]:
        answer, items = await asyncio.gather(
            self._reads.read("recurring", "GetRun", {"run_id": run_id}),
            self._reads.read(
                "recurring", "ListRunItems", {"run_id": run_id, "page_size": self._reads.page_size}
            ),
        )
        return {
            "run": billing.run_summary(answer["run"]),
            "counts": answer["run"].get("counts") or {},
            "items": billing.run_items(items.get("items", ())),
            "more_items": bool(items.get("next_page_token")),
        }

    # ------------------------------------------------------------------------- invoices

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        by_id = {"invoice_id": invoice_id}
        found, case = await asyncio.gather(
            self._reads.read("recurring", "GetInvoice", by_id), self._reads.maybe("dunning", "GetCase", by_id)
        )
        invoice = found["invoice"]
        payment_ids = sorted(
            {t["payment_id"] for t in invoice.get("transactions", ()) if t.get("payment_id")}
        )
        payments = await asyncio.gather(
            *(self._reads.maybe("gateway-adapter", "GetPayment", {"payment_id": p}) for p in payment_ids)
        )
        return {
            "invoice": invoice,
            "payments": [p["payment"] for p in payments if p],
            "case": (case or {}).get("dunning_case"),
        }

    # ------------------------------------------------------------------------- dunning

    async def cases(self, state: str = "") -> dict[str, Any]:
        request: dict[str, Any] = {"state": f"CASE_STATE_{state}"} if state else {}
        return {
            "cases": await self._all("dunning", "ListCases", request, "cases"),
            "states": dunning.ALL_STATES,
        }

    async def case(self, case_id: str) -> dict[str, Any]:
        answer = await self._reads.read("dunning", "GetCase", {"case_id": case_id})
        case: Record = answer["dunning_case"]
        return {
            "case": case,
            "timeline": dunning.timeline(case),
            "actions": dunning.ACTIONS_BY_STATE.get(str(case.get("state")), ()),
        }

    # ------------------------------------------------------------------------- tier changes

    async def tier_changes(self, where: tiers.ReviewFilter) -> dict[str, Any]:
        request: dict[str, Any] = {}
        if where.since is not None:
            request["since"] = datetime.combine(where.since, time.min, self._clock.now().tzinfo)
        changes = await self._all("tier", "ListTierChanges", request, "changes")
        return {
            "changes": tiers.for_review(changes, where),
            "rules": sorted({c.get("rule_id", "") for c in changes if c.get("rule_id")}),
            "tiers": tiers.TIERS,
        }
