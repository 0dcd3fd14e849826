"""The console against the five real services: navigation is served from the cache, actions carry
the person's name into the services' histories, and the services refuse finance's actions too."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from billing.dunning.v1 import dunning_pb2 as d
from billing_common.auth import ACTING_FOR_HEADER

from .conftest import PASSWORDS, RunningConsole

pytestmark = pytest.mark.timeout(300)


@contextlib.asynccontextmanager
async def signed_in(console: RunningConsole, name: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console.url) as client:
        form = (await client.get("/signin")).text
        answer = await client.post(
            "/signin",
            data={"csrf_token": csrf_of(form), "name": name, "password": PASSWORDS[name], "next": "/"},
        )
        assert answer.status_code == 303
        yield client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def test_an_account_page_seen_twice_makes_no_second_round_of_service_reads(
    running_console: RunningConsole,
) -> None:
    async with signed_in(running_console, "bob") as client:
        for _ in range(3):  # an event about the account may land between two visits: then try again
            first = await running_console.service_reads()
            page = await client.get("/accounts/acme")
            assert page.status_code == 200 and "Became Pro" in page.text
            after_first = await running_console.service_reads()
            await client.get("/accounts/acme")
            if await running_console.service_reads() == after_first:
                break
        else:
            pytest.fail("every second visit of the account page read the services again")
    assert after_first > first or first > 0  # the first visit of all did read


async def test_an_unknown_account_is_not_found_like_an_unknown_run(running_console: RunningConsole) -> None:
    async with signed_in(running_console, "bob") as client:
        assert (await client.get("/runs/no-such-run")).status_code == 404
        assert (await client.get("/accounts/no-such-account")).status_code == 404
        assert (await client.get("/accounts/acme")).status_code == 200


async def test_a_form_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    running_console: RunningConsole,
) -> None:
    case_id = running_console.seeded.case_id
    async with signed_in(running_console, "alice") as client:
        refused = await client.post(f"/dunning/{case_id}/pause", data={"csrf_token": "forged", "reason": "x"})
        assert refused.status_code == 403
        page = await client.get(f"/dunning/{case_id}")
        assert "Pause" in page.text and 'data-testid="case-state">held' not in page.text


async def test_the_services_refuse_finance_even_through_the_console(running_console: RunningConsole) -> None:
    dunning = running_console.suite.stub("dunning", caller="console")
    case_id = running_console.seeded.case_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dunning.PauseCase(
            d.PauseCaseRequest(case_id=case_id), metadata=((ACTING_FOR_HEADER, "finance:bob"),)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    found = await dunning.GetCase(
        d.GetCaseRequest(case_id=case_id), metadata=((ACTING_FOR_HEADER, "finance:bob"),)
    )
    assert found.dunning_case.state != d.CASE_STATE_HELD


async def test_a_signed_out_visitor_is_sent_to_sign_in(running_console: RunningConsole) -> None:
    async with httpx.AsyncClient(base_url=running_console.url) as client:
        answer = await client.get("/accounts/acme")
        assert answer.status_code == 303 and answer.headers["location"].startswith(
            "/signin?next=%2Faccounts%2Facme"
        )
        wrong = await client.post(
            "/signin",
            data={"csrf_token": csrf_of((await client.get("/signin")).text), "name": "bob", "password": "x"},
        )
        assert wrong.status_code == 401
