"""Every List RPC of every service takes only page tokens it issued for the same listing."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from billing.common.v1 import common_pb2
from billing.dunning.v1 import dunning_pb2
from billing.quota.v1 import quota_pb2
from billing.recurring.v1 import recurring_pb2
from billing.tier.v1 import tier_pb2
from billing_common.paging import MAX_TOKEN_CHARS, NOT_ISSUED, PageTokens
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import PAGE_TOKEN_KEY, InfraEnv
from billing_devtools.testing.processes import start_process
from billing_devtools.testing.rpc import field_violations

from .suite import SERVICES, Suite

ISSUER = PageTokens([PAGE_TOKEN_KEY])
ANOTHER_DEPLOYMENT = PageTokens(["a-key-of-another-deployment-of-the-suite"])
SCAN_ID = "3f0d7a52-8c1e-4f57-9f3c-2a6b1e0c9d41"


@dataclass(frozen=True)
class Listing:
    """A List RPC: a request it answers, the same with another filter, and the type of its cursor."""

    service: str
    method: str
    request: Callable[[], Any]
    other_filter: Callable[[], Any] | None
    start: int | str


def _since() -> tier_pb2.ListTierChangesRequest:
    request = tier_pb2.ListTierChangesRequest()
    request.since.FromSeconds(1_767_225_600)
    return request


# Two dry runs, made by the paging test before it lists, whose items ListRunItems pages through.
RUNS: list[str] = []


def _items_of(which: int) -> Callable[[], recurring_pb2.ListRunItemsRequest]:
    return lambda: recurring_pb2.ListRunItemsRequest(run_id=RUNS[which])


LISTINGS = [
    Listing(
        "quota",
        "ListPlans",
        quota_pb2.ListPlansRequest,
        lambda: quota_pb2.ListPlansRequest(include_retired=True),
        "",
    ),
    Listing(
        "recurring",
        "ListSubscriptions",
        recurring_pb2.ListSubscriptionsRequest,
        lambda: recurring_pb2.ListSubscriptionsRequest(account_id="acct-1"),
        "",
    ),
    Listing("recurring", "ListRuns", recurring_pb2.ListRunsRequest, None, 0),
    Listing(
        "recurring",
        "ListInvoices",
        recurring_pb2.ListInvoicesRequest,
        lambda: recurring_pb2.ListInvoicesRequest(status=recurring_pb2.INVOICE_STATUS_PAID),
        0,
    ),
    Listing("recurring", "ListRunItems", _items_of(0), _items_of(1), 0),
    Listing(
        "recurring",
        "ListLedgerEntries",
        lambda: recurring_pb2.ListLedgerEntriesRequest(account_id="acct-1"),
        lambda: recurring_pb2.ListLedgerEntriesRequest(account_id="acct-2"),
        0,
    ),
    Listing(
        "dunning",
        "ListCases",
        dunning_pb2.ListCasesRequest,
        lambda: dunning_pb2.ListCasesRequest(merchant_id="merchant-1"),
        0,
    ),
    Listing("tier", "ListScans", tier_pb2.ListScansRequest, None, 0),
    Listing("tier", "ListTierChanges", tier_pb2.ListTierChangesRequest, _since, 0),
    Listing(
        "tier",
        "ListTierChanges",
        tier_pb2.ListTierChangesRequest,
        lambda: tier_pb2.ListTierChangesRequest(scan_id=SCAN_ID),
        0,
    ),
]
NEVER_ISSUED = [
    "1" * 40,
    "-5",
    "garbage!",
    "a\x00b",
    base64.urlsafe_b64encode(b"after:" + b"9" * 40).decode(),
    "plan-zzz",
    "A" * 5000,
]


def _tampered(token: str) -> list[str]:
    raw = base64.urlsafe_b64decode(token + "==")
    edits = [raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :] for i in range(len(raw))]
    return [base64.urlsafe_b64encode(edit).rstrip(b"=").decode() for edit in edits]


def _list_rpcs() -> set[tuple[str, str]]:
    """Every method of every service whose request carries a page token."""
    found = set()
    for name, (_, _, stub) in SERVICES.items():
        module = __import__(stub.__module__.removesuffix("_grpc"), fromlist=["DESCRIPTOR"])
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if "page_token" in method.input_type.fields_by_name:
                    found.add((name, method.name))
    return found


@pytest.fixture
async def suite(env: InfraEnv) -> AsyncIterator[Suite]:
    """The four services that list, started side by side (their List RPCs call no other service)."""
    running = Suite(env)
    names = sorted({listing.service for listing in LISTINGS})
    try:
        started = await asyncio.gather(
            *(start_process(SERVICES[n][0], SERVICES[n][1], env.settings(CommonSettings, n)) for n in names)
        )
        running.processes.update(zip(names, started, strict=True))
        yield running
    finally:
        for channel in running.channels:
            await channel.close()
        await asyncio.gather(*(process.terminate() for process in running.processes.values()))


async def _listed(suite: Suite, listing: Listing, request: Any, token: str) -> None:
    request.page_token = token
    await getattr(suite.stub(listing.service), listing.method)(request)


async def _refusal(suite: Suite, listing: Listing, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(suite.stub(listing.service), listing.method)(request)
    return refused.value


def test_the_listings_below_are_every_list_rpc_of_every_service() -> None:
    assert {(listing.service, listing.method) for listing in LISTINGS} == _list_rpcs()


@pytest.mark.timeout(300)
async def test_every_list_rpc_takes_the_tokens_issued_for_its_listing_and_filter_and_refuses_others(
    suite: Suite,
) -> None:
    RUNS.clear()
    for _ in range(2):
        dry_run = recurring_pb2.RunBillingRequest(
            billing_date=common_pb2.Date(year=2027, month=1, day=5),
            kind=recurring_pb2.RUN_KIND_DAILY,
            dry_run=True,
        )
        RUNS.append((await suite.stub("recurring").RunBilling(dry_run)).run.run_id)
    for listing in LISTINGS:
        issued = ISSUER.issue(listing.request(), listing.start)
        await _listed(suite, listing, listing.request(), issued)
        if listing.other_filter is not None:
            await _listed(
                suite, listing, listing.other_filter(), ISSUER.issue(listing.other_filter(), listing.start)
            )

        other_list = next(
            o for o in LISTINGS if o.method != listing.method and type(o.start) is type(listing.start)
        )
        refused = [
            *NEVER_ISSUED,
            *_tampered(issued),
            ANOTHER_DEPLOYMENT.issue(listing.request(), listing.start),
            ISSUER.issue(other_list.request(), listing.start),
        ]
        if listing.other_filter is not None:
            refused.append(ISSUER.issue(listing.other_filter(), listing.start))
        for token in refused:
            request = listing.request()
            request.page_token = token
            error = await _refusal(suite, listing, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (listing.method, token)
            # A token with a control character, or longer than any we issue, is refused by the
            # boundary's rules before paging sees it; every other one by paging.
            violations = field_violations(error)
            assert list(violations) == ["page_token"], (listing.method, token)
            by_boundary = not token.isprintable() or len(token) > MAX_TOKEN_CHARS
            assert violations["page_token"] == NOT_ISSUED or by_boundary, (listing.method, token)
            assert token[:8] not in (error.details() or "")
