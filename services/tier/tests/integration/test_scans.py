import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.common.v1 import common_pb2
from billing.tier.v1 import tier_pb2 as pb
from billing_common.clock import ControllableClock
from billing_devtools.testing.plugin import EventCollector, InfraEnv
from billing_devtools.testing.rpc import every_page
from tier.domain.scans import Cron

from .conftest import Tier, build_estate, run_scan, signal, tier_of, tier_service

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_sso_turned_on_appends_one_record_per_moved_account_and_one_event(tier: Tier) -> None:
    await build_estate(tier)
    await tier.operator.ReportSignals(
        pb.ReportSignalsRequest(signals=[signal("beta", pb.SIGNAL_KIND_SSO_ACTIVE, "true", NOW)])
    )
    async with EventCollector(tier.env.infra.amqp_url, tier.env.exchange, ["tier.*"]) as events:
        first = await run_scan(tier, pb.SCAN_KIND_FULL, "first")
        assert first.state == pb.SCAN_STATE_COMPLETED
        assert first.accounts_evaluated == 7 and first.changes == 7  # every account gets its first tier
        assert await tier_of(tier, "dist") == common_pb2.TIER_PRO  # beta was on SSO from the start
        assert await tier_of(tier, "alpha") == common_pb2.TIER_LITE
        history_before = await tier.count("tier_history")

        # alpha's organization turns SSO on
        await tier.operator.ReportSignals(
            pb.ReportSignalsRequest(signals=[signal("alpha", pb.SIGNAL_KIND_SSO_ACTIVE, "true", NOW)])
        )
        scan = await run_scan(tier, pb.SCAN_KIND_SSO, "sso-1")
        assert scan.state == pb.SCAN_STATE_COMPLETED and scan.changes == 2  # alpha-db and alpha
        assert await tier.count("tier_history") == history_before + 2
        history = (await tier.caller.GetTierHistory(pb.GetTierHistoryRequest(account_id="alpha"))).changes
        assert [(c.previous_tier, c.new_tier) for c in history] == [
            (common_pb2.TIER_UNSPECIFIED, common_pb2.TIER_LITE),
            (common_pb2.TIER_LITE, common_pb2.TIER_PRO),
        ]
        assert history[1].scan_id == scan.scan_id and history[1].rule_id == "rollup-highest"
        database_change = (
            await tier.caller.GetTierHistory(pb.GetTierHistoryRequest(account_id="alpha-db"))
        ).changes[-1]
        assert database_change.rule_id == "sso-pro"
        assert ("sso_connection_active", "false") in [
            (e.name, e.value) for e in database_change.evidence_before
        ]
        assert ("sso_connection_active", "true") in [
            (e.name, e.value) for e in database_change.evidence_after
        ]

        changed = await events.wait_for("tier.changed", count=2)
        await asyncio.sleep(0.5)  # nothing else arrives: first tiers are not announced
        assert len(events.of_type("tier.changed")) == 2
        by_account = {e.account_id: e for e in changed}
        assert set(by_account) == {"alpha", "alpha-db"}
        alpha = by_account["alpha"]
        assert (alpha.previous_tier, alpha.new_tier) == (common_pb2.TIER_LITE, common_pb2.TIER_PRO)
        assert alpha.billed_account_id == "dist" and alpha.scan_id == scan.scan_id
        assert ("children_pro", "1") in [(e.name, e.value) for e in alpha.evidence_after]
        assert by_account["alpha-db"].rule_id == "sso-pro"
        assert ("sso_access", "true") in [(e.name, e.value) for e in by_account["alpha-db"].evidence_after]

        # the same scan again finds nothing to do and writes nothing
        outbox_before = await tier.count("outbox")
        again = await run_scan(tier, pb.SCAN_KIND_SSO, "sso-2")
        full = await run_scan(tier, pb.SCAN_KIND_FULL, "full-2")
        assert (again.state, again.changes, full.changes) == (pb.SCAN_STATE_COMPLETED, 0, 0)
        assert again.accounts_evaluated == 7
        assert await tier.count("tier_history") == history_before + 2
        assert await tier.count("outbox") == outbox_before
        assert await tier.count("account_tiers", "revision > 0") == 7
        await asyncio.sleep(0.3)
        assert len(events.of_type("tier.changed")) == 2


async def test_run_scan_is_idempotent_and_scans_are_listed(tier: Tier) -> None:
    await build_estate(tier)
    queued = await tier.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="k1"))
    replay = await tier.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="k1"))
    assert queued.scan.scan_id == replay.scan.scan_id
    assert queued.scan.trigger == "rpc:operator" and queued.scan.trace_id
    done = await run_scan(tier, pb.SCAN_KIND_API, "k2")
    listed = await tier.caller.ListScans(pb.ListScansRequest(page_size=1))
    assert [s.scan_id for s in listed.scans] == [done.scan_id] and listed.next_page_token
    rest = await tier.caller.ListScans(pb.ListScansRequest(page_size=5, page_token=listed.next_page_token))
    assert [s.scan_id for s in rest.scans] == [queued.scan.scan_id] and not rest.next_page_token
    first = rest.scans[0]
    assert first.state == pb.SCAN_STATE_COMPLETED and first.started_at.seconds and first.finished_at.seconds
    assert first.duration_ms >= 0 and first.accounts_evaluated == 7


async def test_get_tier_at_answers_for_past_instants(env: InfraEnv) -> None:
    clock = ControllableClock(datetime(2026, 2, 1, 9, 0, tzinfo=UTC))
    async with tier_service(env, clock=clock) as tier:
        await build_estate(tier)
        first = await run_scan(tier, pb.SCAN_KIND_FULL, "feb")
        clock.set(datetime(2026, 3, 10, 9, 0, tzinfo=UTC))
        await tier.operator.ReportSignals(
            pb.ReportSignalsRequest(signals=[signal("alpha", pb.SIGNAL_KIND_SSO_ACTIVE, "true", clock.now())])
        )
        second = await run_scan(tier, pb.SCAN_KIND_SSO, "march")

        async def at(account: str, instant: datetime) -> pb.GetTierAtResponse:
            request = pb.GetTierAtRequest(account_id=account)
            request.at.FromDatetime(instant)
            reply: pb.GetTierAtResponse = await tier.caller.GetTierAt(request)
            return reply

        before_any = await at("alpha", datetime(2026, 1, 15, tzinfo=UTC))
        assert before_any.tier == common_pb2.TIER_UNSPECIFIED and not before_any.HasField("change")
        on_first_march = await at("alpha", datetime(2026, 3, 1, tzinfo=UTC))
        assert on_first_march.tier == common_pb2.TIER_LITE and on_first_march.change.scan_id == first.scan_id
        later = await at("alpha", datetime(2026, 3, 11, tzinfo=UTC))
        assert later.tier == common_pb2.TIER_PRO and later.change.scan_id == second.scan_id
        assert later.change.effective_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 10, 9, 0, tzinfo=UTC)

        by_scan = await tier.caller.ListTierChanges(pb.ListTierChangesRequest(scan_id=second.scan_id))
        assert {c.account_id for c in by_scan.changes} == {"alpha", "alpha-db", "dist"}
        since = pb.ListTierChangesRequest(page_size=2)
        since.since.FromDatetime(datetime(2026, 3, 1, tzinfo=UTC))
        page = await tier.caller.ListTierChanges(since)
        assert len(page.changes) == 2 and page.next_page_token
        since.page_token = page.next_page_token
        rest = await tier.caller.ListTierChanges(since)
        assert len(rest.changes) == 1 and not rest.next_page_token
        assert [c.account_id for c in [*page.changes, *rest.changes]] == [
            c.account_id for c in by_scan.changes
        ]


async def test_deactivated_accounts_leave_the_roll_up(tier: Tier) -> None:
    await build_estate(tier)
    now = datetime.now(UTC)
    await tier.operator.ReportSignals(
        pb.ReportSignalsRequest(signals=[signal("beta", pb.SIGNAL_KIND_SSO_ACTIVE, "true", now)])
    )
    await run_scan(tier, pb.SCAN_KIND_FULL, "one")
    assert await tier_of(tier, "dist") == common_pb2.TIER_PRO
    from .conftest import end_user

    await tier.operator.UpsertEndUsers(
        pb.UpsertEndUsersRequest(end_users=[end_user("beta", "dist", active=False)])
    )
    scan = await run_scan(tier, pb.SCAN_KIND_FULL, "two")
    assert scan.changes == 1
    assert await tier_of(tier, "dist") == common_pb2.TIER_LITE
    assert await tier_of(tier, "beta") == common_pb2.TIER_PRO  # an inactive account keeps its last tier


async def test_pods_see_each_others_writes(env: InfraEnv) -> None:
    async with tier_service(env) as first, tier_service(env) as second:
        await build_estate(first)
        reply = await second.caller.GetAccountTier(pb.GetAccountTierRequest(account_id="alpha-db"))
        assert reply.account_tier.kind == pb.ACCOUNT_KIND_DATABASE
        await run_scan(first, pb.SCAN_KIND_FULL, "a")
        await asyncio.sleep(1.5)  # the second pod's refresher merges the tiers
        assert await tier_of(second, "alpha-db") == common_pb2.TIER_LITE
        hierarchy = await second.caller.GetHierarchy(pb.GetHierarchyRequest(account_id="dist"))
        assert [c.account_id for c in hierarchy.root.children] == ["alpha", "beta"]
        assert [d.account_id for d in hierarchy.root.children[0].children] == ["alpha-db"]


async def test_scans_started_at_once_run_one_at_a_time(env: InfraEnv) -> None:
    """Two pods, both asked for a FULL scan at the same moment: the scans never overlap."""
    from .test_providers import slow_registry

    async with slow_registry(delay=0.4) as registry:
        settings = dict(api_registry_url=registry.url)
        async with tier_service(env, **settings) as first, tier_service(env, **settings) as second:
            await build_estate(first)
            replies = await asyncio.gather(
                first.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="x")),
                second.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="y")),
                first.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="z")),
            )
            from .conftest import finished

            scans = [await finished(first, r.scan.scan_id) for r in replies]
            assert all(s.state == pb.SCAN_STATE_COMPLETED for s in scans)
            spans = sorted((s.started_at.ToDatetime(), s.finished_at.ToDatetime()) for s in scans)
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start
            assert registry.max_in_flight == 1
            assert sum(s.changes for s in scans) == 7  # the first writes every first tier, the others nothing
            conn = await first.admin()
            try:
                tokens = await conn.fetch("SELECT fencing_token FROM scans ORDER BY started_at")
            finally:
                await conn.close()
            assert [t[0] for t in tokens] == sorted({t[0] for t in tokens})


async def test_the_schedule_queues_one_scan_per_fire_time_across_pods(env: InfraEnv) -> None:
    clock = ControllableClock(datetime(2026, 3, 1, 9, 59, 59, 800_000, tzinfo=UTC))  # 0.2 s before a fire
    from .conftest import tier_settings

    settings = tier_settings(env, scan_schedule_full=Cron("0 * * * *"))
    async with (
        tier_service(env, clock=clock, settings=settings) as first,
        tier_service(env, clock=clock, settings=settings) as second,
    ):
        await build_estate(first)
        clock.advance(timedelta(seconds=1))  # the hour strikes for both pods' schedulers

        async def scheduled() -> list[pb.Scan]:
            scans = (await second.caller.ListScans(pb.ListScansRequest())).scans
            return [s for s in scans if s.state == pb.SCAN_STATE_COMPLETED]

        from billing_devtools.testing.plugin import eventually

        done = await eventually(scheduled, timeout=15)
        await asyncio.sleep(0.5)
        scans = (await first.caller.ListScans(pb.ListScansRequest())).scans
        assert len(scans) == 1 and scans[0].trigger == "schedule" and scans[0].kind == pb.SCAN_KIND_FULL
        assert done[0].changes == 7


MARCH = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
async def scanned(env: InfraEnv) -> AsyncIterator[tuple[Tier, list[pb.Scan]]]:
    """Five scans: a first full one in February, an SSO one in March that moves alpha, and three idle."""
    clock = ControllableClock(datetime(2026, 2, 1, 9, 0, tzinfo=UTC))
    async with tier_service(env, clock=clock) as tier:
        await build_estate(tier)
        scans = [await run_scan(tier, pb.SCAN_KIND_FULL, "feb")]
        clock.set(MARCH)
        await tier.operator.ReportSignals(
            pb.ReportSignalsRequest(signals=[signal("alpha", pb.SIGNAL_KIND_SSO_ACTIVE, "true", MARCH)])
        )
        scans.append(await run_scan(tier, pb.SCAN_KIND_SSO, "march"))
        for n in range(3):
            scans.append(await run_scan(tier, pb.SCAN_KIND_API, f"idle-{n}"))
        yield tier, scans


SIZES = st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(SIZES, st.sampled_from(["all", "since march", "by scan"]))
async def test_listing_scans_and_changes_page_by_page_gives_each_once_in_order(
    scanned: tuple[Tier, list[pb.Scan]], sizes: list[int], which: str
) -> None:
    tier, scans = scanned
    listed_scans = await every_page(tier.caller.ListScans, pb.ListScansRequest(), "scans", sizes)
    assert [s.scan_id for s in listed_scans] == [s.scan_id for s in reversed(scans)]

    request = pb.ListTierChangesRequest()
    if which == "since march":
        request.since.FromDatetime(MARCH)
    elif which == "by scan":
        request.scan_id = scans[1].scan_id
    listed = await every_page(tier.caller.ListTierChanges, request, "changes", sizes)
    first, march = scans[0].changes, scans[1].changes
    assert len(listed) == {"all": first + march, "since march": march, "by scan": march}[which]
    numbers = [int(c.change_id) for c in listed]
    assert numbers == sorted(set(numbers))  # in order, none twice
