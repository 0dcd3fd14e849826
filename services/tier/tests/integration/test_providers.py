"""Signal providers against local HTTP servers that answer in the real formats."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from workos import AsyncWorkOSClient

from billing.common.v1 import common_pb2
from billing.tier.v1 import tier_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv
from tier.adapters.api_registry import ApiClientRegistryProvider
from tier.adapters.metrics import PROVIDER_ERRORS
from tier.adapters.workos_sso import WorkOsSsoProvider
from tier.app.ports import ProviderError

from .conftest import build_estate, run_scan, tier_of, tier_service

API_KEY = "sk_test_local"
STAMP = "2026-02-03T10:20:30.123Z"


def organization(org_id: str, external_id: str | None) -> dict[str, Any]:
    return {
        "object": "organization",
        "id": org_id,
        "name": f"{external_id or org_id} Corp",
        "allow_profiles_outside_organization": False,
        "domains": [
            {
                "object": "organization_domain",
                "id": f"org_domain_{org_id}",
                "organization_id": org_id,
                "domain": f"{org_id}.example.com",
                "state": "verified",
                "verification_strategy": "dns",
                "verification_token": "m5Oztg3jdK4NJLgs8uIlIprMw",
                "created_at": STAMP,
                "updated_at": STAMP,
            }
        ],
        "metadata": {},
        "external_id": external_id,
        "stripe_customer_id": None,
        "created_at": STAMP,
        "updated_at": STAMP,
    }


def connection(conn_id: str, org_id: str, state: str) -> dict[str, Any]:
    return {
        "object": "connection",
        "id": conn_id,
        "organization_id": org_id,
        "connection_type": "OktaSAML",
        "name": f"{org_id} SSO",
        "state": state,
        "status": "linked" if state == "active" else "unlinked",
        "domains": [{"object": "connection_domain", "id": f"conn_domain_{conn_id}", "domain": "example.com"}],
        "created_at": STAMP,
        "updated_at": STAMP,
    }


class FakeWorkOS:
    """WorkOS's list endpoints: bearer auth, `limit`/`after` cursors, `list_metadata` in the reply."""

    def __init__(self) -> None:
        self.organizations = [
            organization("org_01ALPHA", "alpha"),
            organization("org_02BETA", "beta"),
            organization("org_03SOLO", "solo"),
            organization("org_04OTHER", None),  # not one of ours
        ]
        self.connections = [
            connection("conn_01", "org_02BETA", "active"),
            connection("conn_02", "org_01ALPHA", "inactive"),
            connection("conn_03", "org_03SOLO", "draft"),
        ]
        self.requests: list[tuple[str, dict[str, str], str]] = []
        self.fail_with = 0

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        self.requests.append((request.path, dict(request.query), request.headers.get("Authorization", "")))
        if self.fail_with:
            return web.json_response(
                {"message": "Unauthorized", "code": "unauthorized"}, status=self.fail_with
            )
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        limit = int(request.query.get("limit", "10"))
        after = request.query.get("after")
        start = next((i + 1 for i, item in enumerate(items) if item["id"] == after), 0)
        page = items[start : start + limit]
        more = start + limit < len(items)
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "list_metadata": {"before": None, "after": page[-1]["id"] if more and page else None},
            }
        )

    async def list_organizations(self, request: web.Request) -> web.Response:
        return self._page(request, self.organizations)

    async def list_connections(self, request: web.Request) -> web.Response:
        return self._page(request, self.connections)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def workos_server(fake: FakeWorkOS) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/organizations", fake.list_organizations)
    app.router.add_get("/connections", fake.list_connections)
    async with serve(app) as url:
        yield url


async def test_workos_provider_reads_sso_participation_through_the_sdk() -> None:
    fake = FakeWorkOS()
    fake.organizations += [organization(f"org_9{i:03d}", f"extra-{i}") for i in range(150)]
    async with workos_server(fake) as url:
        client = AsyncWorkOSClient(api_key=API_KEY, base_url=url, max_retries=0)
        try:
            signals = await WorkOsSsoProvider(client).fetch(datetime(2026, 3, 1, tzinfo=UTC))
        finally:
            await client.close()
    values = {s.account_id: s.value for s in signals}
    assert values["beta"] == "true"  # an active connection
    assert values["alpha"] == "false" and values["solo"] == "false"  # inactive, draft
    assert len(values) == 153 and all(s.source == "workos" for s in signals)
    organization_pages = [q for path, q, _ in fake.requests if path == "/organizations"]
    assert len(organization_pages) == 2 and organization_pages[1]["after"] == "org_9095"
    assert all(auth == f"Bearer {API_KEY}" for _, _, auth in fake.requests)
    assert all(q["order"] == "asc" and q["limit"] == "100" for _, q, _ in fake.requests)


async def test_workos_refusal_is_a_provider_error() -> None:
    fake = FakeWorkOS()
    fake.fail_with = 401
    async with workos_server(fake) as url:
        client = AsyncWorkOSClient(api_key=API_KEY, base_url=url, max_retries=0)
        try:
            with pytest.raises(ProviderError):
                await WorkOsSsoProvider(client).fetch(datetime(2026, 3, 1, tzinfo=UTC))
        finally:
            await client.close()


async def test_sso_scan_pulls_workos_and_a_failing_pull_fails_the_scan(env: InfraEnv) -> None:
    fake = FakeWorkOS()
    async with (
        workos_server(fake) as url,
        tier_service(env, workos_api_key=API_KEY, workos_base_url=url) as tier,
    ):
        await build_estate(tier)
        first = await run_scan(tier, pb.SCAN_KIND_SSO, "s1")
        assert first.state == pb.SCAN_STATE_COMPLETED
        assert await tier_of(tier, "beta-db") == common_pb2.TIER_PRO
        assert await tier_of(tier, "alpha") == common_pb2.TIER_LITE
        fake.connections[1]["state"] = "active"  # alpha's connection goes live
        second = await run_scan(tier, pb.SCAN_KIND_SSO, "s2")
        assert second.changes == 2 and await tier_of(tier, "alpha") == common_pb2.TIER_PRO
        signals_written = await tier.count("signals")
        assert (await run_scan(tier, pb.SCAN_KIND_SSO, "s3")).changes == 0
        assert await tier.count("signals", "kind = 'sso_active'") == signals_written  # nothing new to store

        fake.connections[1]["state"] = "inactive"
        fake.fail_with = 401
        errors_before = PROVIDER_ERRORS.labels("workos")._value.get()
        failed = await run_scan(tier, pb.SCAN_KIND_SSO, "s4")
        assert failed.state == pb.SCAN_STATE_FAILED and "workos" in failed.error
        assert PROVIDER_ERRORS.labels("workos")._value.get() == errors_before + 1
        assert await tier_of(tier, "alpha") == common_pb2.TIER_PRO  # never decided on a partial picture


class FakeRegistry:
    def __init__(self, delay: float = 0.0) -> None:
        self.clients = [
            {"id": "cli_1", "account_id": "solo-db", "status": "active"},
            {"id": "cli_2", "account_id": "alpha", "status": "active"},
            {"id": "cli_3", "account_id": "alpha", "status": "active"},
        ]
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""

    async def list_clients(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            limit = int(request.query["limit"])
            start = int(request.query.get("cursor", "0"))
            active = [c for c in self.clients if c["status"] == request.query["status"]]
            page = active[start : start + limit]
            more = start + limit < len(active)
            return web.json_response({"data": page, "next_cursor": str(start + limit) if more else None})
        finally:
            self.in_flight -= 1


@contextlib.asynccontextmanager
async def slow_registry(delay: float = 0.0) -> AsyncIterator[FakeRegistry]:
    fake = FakeRegistry(delay)
    app = web.Application()
    app.router.add_get("/v1/api-clients", fake.list_clients)
    async with serve(app) as url:
        fake.url = url
        yield fake


async def test_api_registry_counts_active_clients_per_account_across_pages(env: InfraEnv) -> None:
    from datetime import timedelta

    async with slow_registry() as registry:
        registry.clients += [
            {"id": f"cli_x{i}", "account_id": "beta-db", "status": "active"} for i in range(600)
        ]
        provider = ApiClientRegistryProvider(registry.url, "token", timedelta(seconds=5))
        counts = {s.account_id: s.value for s in await provider.fetch(datetime(2026, 3, 1, tzinfo=UTC))}
        assert counts == {"solo-db": "1", "alpha": "2", "beta-db": "600"}

        async with tier_service(env, api_registry_url=registry.url) as tier:
            await build_estate(tier)
            await run_scan(tier, pb.SCAN_KIND_API, "a1")
            assert await tier_of(tier, "alpha-db") == common_pb2.TIER_PLUS  # the organization's clients count
            assert await tier_of(tier, "solo-db") == common_pb2.TIER_LITE  # no REST API access on that site
            registry.clients = [c for c in registry.clients if c["account_id"] != "alpha"]
            scan = await run_scan(tier, pb.SCAN_KIND_API, "a2")
            assert scan.changes == 2 and await tier_of(tier, "alpha-db") == common_pb2.TIER_LITE
