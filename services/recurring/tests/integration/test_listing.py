"""Listing subscriptions, runs, invoices and ledger entries page by page, with their filters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing_devtools.testing.rpc import every_page, field_violations

from .conftest import Deps, Recurring, custom, pb_date, recurring_service, run_until_settled

DAY = date(2031, 5, 5)
# subscription n: its account, and whether its card declines
SUBSCRIBERS = [(f"acct-{n % 3}", n % 4 == 0) for n in range(8)]
PAUSED = {1, 6}
CREDITED = "acct-0"


@pytest.fixture
async def billed(deps: Deps) -> AsyncIterator[tuple[Recurring, list[pb.Subscription]]]:
    async with recurring_service(deps.recurring_settings()) as recurring:
        stub = recurring.operator
        subs = []
        for n, (account, declines) in enumerate(SUBSCRIBERS):
            request = custom(
                account,
                1000 + n,
                common.BILLING_FREQUENCY_WEEKLY,
                DAY,
                token="tok_insufficient_funds" if declines else "tok_success",
            )
            request.idempotency_key = f"create-{n}"
            subs.append((await stub.CreateSubscription(request)).subscription)
        await run_until_settled(stub, DAY)
        for offset in range(1, 4):
            later = pb_date(DAY + timedelta(days=offset))
            await stub.RunBilling(pb.RunBillingRequest(billing_date=later, kind=pb.RUN_KIND_DAILY))
        for n in PAUSED:
            await stub.PauseSubscription(
                pb.PauseSubscriptionRequest(subscription_id=subs[n].subscription_id, idempotency_key=f"p-{n}")
            )
        for n in range(3):
            await stub.AddAccountCredit(
                pb.AddAccountCreditRequest(
                    account_id=CREDITED,
                    amount=common.Money(amount_minor=100 + n, currency="USD"),
                    reason="goodwill",
                    idempotency_key=f"credit-{n}",
                )
            )
        yield recurring, subs


LISTINGS = {
    "subscriptions": ("ListSubscriptions", "subscriptions", pb.ListSubscriptionsRequest),
    "runs": ("ListRuns", "runs", pb.ListRunsRequest),
    "invoices": ("ListInvoices", "invoices", pb.ListInvoicesRequest),
    "ledger": ("ListLedgerEntries", "entries", pb.ListLedgerEntriesRequest),
}
FILTERS: dict[str, list[dict[str, Any]]] = {
    "subscriptions": [
        {},
        {"account_id": "acct-1"},
        {"status": pb.SUBSCRIPTION_STATUS_PAUSED},
        {"status": pb.SUBSCRIPTION_STATUS_PAST_DUE},
        {"account_id": "acct-0", "status": pb.SUBSCRIPTION_STATUS_ACTIVE},
    ],
    "runs": [{}],
    "invoices": [
        {},
        {"account_id": "acct-2"},
        {"status": pb.INVOICE_STATUS_PAYMENT_FAILED},
        {"account_id": "acct-0", "status": pb.INVOICE_STATUS_PAID},
    ],
    "ledger": [{"account_id": CREDITED}, {"account_id": "acct-1"}],
}


def _expected_count(listing: str, where: dict[str, Any]) -> int:
    account = where.get("account_id", "")
    status = where.get("status", 0)
    mine = [n for n, (a, _) in enumerate(SUBSCRIBERS) if account in ("", a)]
    if listing == "subscriptions":
        return len([n for n in mine if status in (0, _status(n))])
    if listing == "invoices":
        failed = status == pb.INVOICE_STATUS_PAYMENT_FAILED
        return len([n for n in mine if not status or SUBSCRIBERS[n][1] == failed])
    return -1


def _status(n: int) -> int:
    """Paused by the test, past due after a declined charge, or active."""
    if n in PAUSED:
        return pb.SUBSCRIPTION_STATUS_PAUSED
    return pb.SUBSCRIPTION_STATUS_PAST_DUE if SUBSCRIBERS[n][1] else pb.SUBSCRIPTION_STATUS_ACTIVE


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data(), st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4))
async def test_each_listing_page_by_page_gives_each_row_of_its_filter_once_in_the_order_of_one_page(
    billed: tuple[Recurring, list[pb.Subscription]], data: st.DataObject, sizes: list[int]
) -> None:
    recurring, _ = billed
    listing = data.draw(st.sampled_from(sorted(LISTINGS)))
    where = data.draw(st.sampled_from(FILTERS[listing]))
    method, items, request_type = LISTINGS[listing]
    call = getattr(recurring.operator, method)
    listed = await every_page(call, request_type(**where), items, sizes)
    in_one_page = getattr(await call(request_type(**where, page_size=500)), items)
    assert list(listed) == list(in_one_page)
    expected = _expected_count(listing, where)
    if expected >= 0:
        assert len(listed) == expected
    if listing == "runs":  # the scheduler may add runs of today's date beside the test's four
        dates = [DAY + timedelta(days=offset) for offset in range(4)]
        assert {pb_date(day).SerializeToString() for day in dates} <= {
            r.billing_date.SerializeToString() for r in listed
        }
    if listing == "ledger" and where["account_id"] == CREDITED:
        credits = {e.reference for e in listed if e.reference.startswith("credit:")}
        assert credits == {f"credit:credit-{n} (goodwill)" for n in range(3)}


async def test_the_items_of_a_run_that_does_not_exist_are_not_found_and_a_missing_run_id_is_named(
    billed: tuple[Recurring, list[pb.Subscription]],
) -> None:
    recurring, _ = billed
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await recurring.operator.ListRunItems(pb.ListRunItemsRequest(run_id="no-such-run"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    for request in (pb.ListRunItemsRequest(), pb.ListRunItemsRequest(run_id="r", page_size=1001)):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await recurring.operator.ListRunItems(request)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(invalid.value)) == {"page_size" if request.run_id else "run_id"}
