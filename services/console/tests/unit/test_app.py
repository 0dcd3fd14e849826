"""The console's use cases on a fake of the services: the cache spares the services a second round
of reads, events and actions make exactly what they changed stale, finance cannot act."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_common.errors import NotFound, PermissionDenied
from console.app.actions import Actions
from console.app.cache import ReadCache
from console.app.pages import Pages
from console.app.reads import CachedReads
from console.domain.people import Person, Role

ALICE = Person("alice", Role.OPERATOR)
BOB = Person("bob", Role.FINANCE)
PAGE_SIZE = 500


class FakeClock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return datetime(2031, 5, 5, tzinfo=UTC)


class FakeServices:
    """Answers every read with an empty message (or NOT_FOUND for tier reads) and counts calls;
    recurring has billed the accounts in BILLED (one ledger transaction each), and no other."""

    BILLED = ("acme", "globex")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []
        self.gate: asyncio.Event | None = None

    async def call(
        self, service: str, method: str, request: Mapping[str, Any], acting_for: str = ""
    ) -> dict[str, Any]:
        self.calls.append((service, method, dict(request), acting_for))
        if self.gate is not None:
            await self.gate.wait()
        if service == "tier":
            raise NotFound("no such account")
        if method == "ListLedgerEntries" and request.get("account_id") in self.BILLED:
            return {"entries": [{"ledger_transaction_id": "t1", "account": "receivable"}]}
        if method == "GetCase" or method.endswith("Case") or method == "RetryNow":
            return {
                "dunning_case": {
                    "case_id": request.get("case_id", "c1"),
                    "account_id": "acme",
                    "state": "HELD",
                }
            }
        return {}


class NoDeadLetters:
    async def depths(self) -> dict[str, int | None]:
        return {}


def console(ttl_s: float = 60) -> tuple[FakeServices, FakeClock, CachedReads, Pages, Actions]:
    services, clock = FakeServices(), FakeClock()
    reads = CachedReads(services, ReadCache(ttl_s, clock.monotonic), PAGE_SIZE)
    return (
        services,
        clock,
        reads,
        Pages(reads, NoDeadLetters(), clock, ["sandbox-card"]),
        Actions(services, reads),
    )


async def test_an_account_page_seen_twice_within_the_cache_lifetime_reads_the_services_once() -> None:
    services, clock, _, pages, _ = console(ttl_s=60)
    await pages.account("acme")
    first_round = len(services.calls)
    assert (
        first_round == 8
    )  # tier x3, recurring x3, quota, dunning (no currency, no period: no balance, no usage)
    clock.seconds = 59
    await pages.account("acme")
    assert len(services.calls) == first_round
    clock.seconds = 60
    await pages.account("acme")
    assert len(services.calls) == 2 * first_round


async def test_an_account_no_service_knows_is_not_found_and_one_billed_without_a_tier_is_shown() -> None:
    _, _, _, pages, _ = console()
    with pytest.raises(NotFound):
        await pages.account("nobody")
    shown = await pages.account("acme")
    assert shown["tier"] is None and len(shown["ledger"]) == 1


async def test_an_event_about_the_account_refetches_only_that_accounts_reads() -> None:
    services, _, reads, pages, _ = console()
    await pages.account("acme")
    await pages.account("globex")
    before = len(services.calls)
    reads.stale(
        "invoice.paid", {"facts": {"invoice_id": "i1", "account_id": "acme", "subscription_id": "s1"}}
    )
    await pages.account("acme")
    await pages.account("globex")
    refetched = services.calls[before:]
    assert refetched and all(
        (request.get("account_id") or request.get("tenant_id")) == "acme" for _, _, request, _ in refetched
    )


async def test_concurrent_misses_of_one_read_make_one_call() -> None:
    services, _, reads, _, _ = console()
    services.gate = asyncio.Event()
    waiting = [asyncio.create_task(reads.read("recurring", "GetRun", {"run_id": "r1"})) for _ in range(5)]
    await asyncio.sleep(0)
    services.gate.set()
    await asyncio.gather(*waiting)
    assert len(services.calls) == 1


async def test_an_answer_that_arrives_after_its_invalidation_is_not_kept() -> None:
    services, _, reads, _, _ = console()
    services.gate = asyncio.Event()
    loading = asyncio.create_task(reads.read("recurring", "GetRun", {"run_id": "r1"}))
    await asyncio.sleep(0)
    reads.stale("run.completed", {"run_id": "r1"})
    services.gate.set()
    await loading
    services.gate = None
    await reads.read("recurring", "GetRun", {"run_id": "r1"})
    assert len(services.calls) == 2


async def test_a_failed_read_is_not_cached_but_a_missing_thing_is() -> None:
    services, _, reads, _, _ = console()
    for _ in range(2):
        with pytest.raises(NotFound):
            await reads.read("tier", "GetAccountTier", {"account_id": "acme"})
    assert len(services.calls) == 2
    for _ in range(2):
        assert await reads.maybe("tier", "GetAccountTier", {"account_id": "acme"}) is None
    assert len(services.calls) == 3


async def test_an_operators_action_is_sent_in_her_name_and_stales_the_case_at_once() -> None:
    services, _, _, pages, actions = console()
    await pages.case("c1")
    await actions.case(ALICE, "c1", "pause", "customer called")
    assert services.calls[-1] == (
        "dunning",
        "PauseCase",
        {"case_id": "c1", "reason": "customer called"},
        "operator:alice",
    )
    calls = len(services.calls)
    await pages.case("c1")
    assert len(services.calls) == calls + 1


async def test_finance_cannot_act_and_the_services_are_not_even_asked() -> None:
    services, _, _, _, actions = console()
    with pytest.raises(PermissionDenied):
        await actions.case(BOB, "c1", "retry")
    with pytest.raises(PermissionDenied):
        await actions.resume_run(BOB, "r1", "sandbox-card")
    assert services.calls == []


async def test_an_unknown_action_changes_nothing() -> None:
    services, _, _, _, actions = console()
    with pytest.raises(Exception, match="action"):
        await actions.case(ALICE, "c1", "delete")
    assert services.calls == []


class MeteredServices(FakeServices):
    """An account with a monthly and a daily entitlement, and usage counted in each period."""

    MONTH = (datetime(2031, 3, 5, tzinfo=UTC), datetime(2031, 4, 5, tzinfo=UTC))
    DAY = (datetime(2031, 3, 31, tzinfo=UTC), datetime(2031, 4, 1, tzinfo=UTC))

    async def call(
        self, service: str, method: str, request: Mapping[str, Any], acting_for: str = ""
    ) -> dict[str, Any]:
        answer = await super().call(service, method, request, acting_for)
        if method == "GetEntitlements":
            return {
                "entitlements": [
                    {
                        "entitlement": {"key": "api.calls", "unlimited": True},
                        "period_start": self.MONTH[0],
                        "period_end": self.MONTH[1],
                    },
                    {
                        "entitlement": {"key": "exports.daily", "limit": 5},
                        "period_start": self.DAY[0],
                        "period_end": self.DAY[1],
                    },
                ]
            }
        if method == "GetUsageSummary":
            month = (request["period_start"], request["period_end"]) == self.MONTH
            return {"totals": [{"key": "exports.daily", "quantity": 65 if month else 2}]}
        return answer


async def test_an_account_page_reads_usage_once_for_each_entitlement_period() -> None:
    services = MeteredServices()
    reads = CachedReads(services, ReadCache(60, FakeClock().monotonic), PAGE_SIZE)
    page = await Pages(reads, NoDeadLetters(), FakeClock(), ["sandbox-card"]).account("acme")
    summaries = [request for _, method, request, _ in services.calls if method == "GetUsageSummary"]
    assert [(r["period_start"], r["period_end"]) for r in summaries] == [services.MONTH, services.DAY]
    exports = next(row for row in page["usage"] if row.key == "exports.daily")
    assert (exports.used, exports.percent) == (2, 40.0)


class PagedServices(FakeServices):
    """Invoices over two pages: the services give at most one page per call, oldest first."""

    async def call(
        self, service: str, method: str, request: Mapping[str, Any], acting_for: str = ""
    ) -> dict[str, Any]:
        if method == "ListTierChanges":
            return {}
        answer = await super().call(service, method, request, acting_for)
        if method != "ListInvoices":
            return answer
        day = "2031-03-31" if request.get("page_token") else "2031-01-01"
        invoice = {"total": {"amount_minor": 2900, "currency": "USD"}, "billing_date": day, "status": "PAID"}
        return {"invoices": [invoice], "next_page_token": "" if request.get("page_token") else "p2"}


async def test_the_overviews_revenue_covers_every_page_of_invoices_not_only_the_first() -> None:
    services = PagedServices()
    reads = CachedReads(services, ReadCache(60, FakeClock().monotonic), PAGE_SIZE)
    overview = await Pages(reads, NoDeadLetters(), FakeClock(), ["sandbox-card"]).overview()
    assert [str(day) for day, _ in overview["charts"]["revenue"]["USD"]] == ["2031-01-01", "2031-03-31"]
    invoice_reads = [request for _, method, request, _ in services.calls if method == "ListInvoices"]
    assert [r.get("page_token", "") for r in invoice_reads] == ["", "p2"]
    assert all(r["page_size"] == PAGE_SIZE for r in invoice_reads)
