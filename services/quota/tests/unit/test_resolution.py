from datetime import UTC, datetime, timedelta

from billing.events.v1 import subscription_pb2 as sub_events
from billing_common.money import Money
from billing_common.subscriptions import Frequency, SubscriptionStatus
from quota.domain.catalog import AddOn, Behaviour, Entitlement, Period, Plan, PlanSpec
from quota.domain.resolution import (
    Grant,
    Override,
    SubscriptionView,
    pick_subscription,
    resolve,
    status_named,
)
from quota.entrypoints.mappers import subscription_view

NOW = datetime(2026, 3, 10, tzinfo=UTC)


def plan(code: str, limit: int | None = 1000, *, free: bool = False) -> Plan:
    spec = PlanSpec(
        code.title(),
        Money(0 if free else 4900, "USD"),
        Frequency.MONTHLY,
        0,
        (
            Entitlement("api.calls", limit, Period.BILLING, Behaviour.DENY),
            Entitlement("seats", 5, Period.NONE, Behaviour.WARN),
        ),
        (80, 100),
        free,
    )
    return Plan(code, 2, spec, NOW - timedelta(days=30))


def subscription(status: str = "active", version: int = 1) -> SubscriptionView:
    return SubscriptionView(
        "sub-1",
        "acme",
        SubscriptionStatus(status),
        "pro",
        2,
        NOW - timedelta(days=9),
        NOW + timedelta(days=21),
        None,
        version,
    )


EXTRA = AddOn(
    "extra-calls",
    "Extra calls",
    Money(900, "USD"),
    (
        Entitlement("api.calls", 500, Period.BILLING, Behaviour.DENY, included_quantity=500),
        Entitlement("exports", 10, Period.CALENDAR_DAY, Behaviour.DENY),
    ),
)


def grant(quantity: int, expires: datetime, grant_id: str = "g1") -> Grant:
    return Grant(grant_id, "acme", "api.calls", quantity, expires, NOW - timedelta(days=1))


def test_plan_add_ons_override_and_grants_combine_with_their_sources() -> None:
    resolution = resolve(
        "acme",
        subscription(),
        plan("pro"),
        [EXTRA],
        [Override("acme", "seats", 50, Behaviour.DENY)],
        [grant(100, NOW + timedelta(days=1)), grant(7, NOW - timedelta(seconds=1), "expired")],
        None,
        NOW,
    )
    assert not resolution.denied
    calls = resolution.entitlements["api.calls"]
    assert calls.entitlement.limit == 1000 + 500 + 100
    assert calls.entitlement.included_quantity == 500
    assert [s.kind for s in calls.sources] == ["plan", "add_on", "grant"]
    assert calls.sources[0].reference == "pro@2"
    seats = resolution.entitlements["seats"]
    assert (seats.entitlement.limit, seats.entitlement.behaviour) == (50, Behaviour.DENY)
    assert resolution.entitlements["exports"].entitlement.limit == 10
    assert resolution.valid_until == NOW + timedelta(days=1)  # when the grant runs out
    assert resolution.billing is not None and resolution.billing.start == NOW - timedelta(days=9)


def test_an_expired_grant_adds_nothing() -> None:
    resolution = resolve("acme", subscription(), plan("pro"), [], [], [grant(100, NOW)], None, NOW)
    assert resolution.entitlements["api.calls"].entitlement.limit == 1000


def test_unlimited_stays_unlimited_whatever_is_added() -> None:
    resolution = resolve(
        "acme", subscription(), plan("pro", None), [EXTRA], [], [grant(5, NOW + timedelta(1))], None, NOW
    )
    assert resolution.entitlements["api.calls"].entitlement.unlimited


def test_suspended_cancelled_or_unknown_tenants_are_denied_without_a_free_plan() -> None:
    for status in ("suspended", "cancelled", "completed", "paused"):
        resolution = resolve("acme", subscription(status), plan("pro"), [EXTRA], [], [], None, NOW)
        assert resolution.denied and not resolution.entitlements
    assert resolve("acme", None, None, [], [], [], None, NOW).denied


def test_they_fall_back_to_the_free_plan_without_add_ons() -> None:
    free = plan("free", 10, free=True)
    resolution = resolve("acme", subscription("suspended"), plan("pro"), [EXTRA], [], [], free, NOW)
    assert not resolution.denied
    assert resolution.plan == free
    assert set(resolution.entitlements) == {"api.calls", "seats"}
    assert resolution.entitlements["api.calls"].sources[0].kind == "free_fallback"
    assert resolution.billing is None


def test_past_due_and_trialing_tenants_keep_their_plan() -> None:
    for status in ("past_due", "trialing"):
        assert not resolve("acme", subscription(status), plan("pro"), [], [], [], None, NOW).denied


def test_older_snapshots_are_ignored_and_the_previous_period_is_remembered() -> None:
    current = subscription(version=5)
    assert current.advanced_by(subscription("suspended", version=4)) is None
    assert current.advanced_by(subscription("suspended", version=5)) is None
    renewed = SubscriptionView(
        "sub-1", "acme", "active", "pro", 2, current.period_end, NOW + timedelta(days=51), None, 6
    )
    after = current.advanced_by(renewed)
    assert after is not None and after.previous_period_start == current.period_start


def test_the_entitled_subscription_governs_the_tenant() -> None:
    old = subscription("cancelled", version=9)
    new = SubscriptionView("sub-2", "acme", "active", "pro", 2, NOW, NOW + timedelta(days=30), None, 1)
    assert pick_subscription([old, new]) == new


def test_a_state_the_contract_names_after_this_version_is_kept_as_unknown_and_never_entitled() -> None:
    newer_state = max(sub_events.SubscriptionState.values()) + 1
    view = subscription_view(
        sub_events.SubscriptionSnapshot(subscription_id="sub-1", account_id="acme", status=newer_state)
    )
    assert view.status is None
    assert not view.entitled
    assert view.status_name == "unknown"
    assert status_named(view.status_name) is None
    known = subscription_view(
        sub_events.SubscriptionSnapshot(
            subscription_id="sub-1", account_id="acme", status=sub_events.SUBSCRIPTION_STATE_PAST_DUE
        )
    )
    assert known.status is SubscriptionStatus.PAST_DUE
    assert known.entitled
    assert status_named(known.status_name) is SubscriptionStatus.PAST_DUE
