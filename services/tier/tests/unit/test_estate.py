from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_common.tiers import Tier
from tier.domain.accounts import (
    AccountKind,
    BilledBy,
    Database,
    Distributor,
    EndUser,
    InventoryMode,
    Signal,
    SignalKind,
    normalize_signal_value,
)
from tier.domain.estate import Estate, ScanPlan, TierRecord
from tier.domain.rollup import roll_up
from tier.domain.rules import DEFAULT_RULE_SET, Evaluator

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def db(
    database_id: str, end_user_id: str, *, sso: bool = True, api: bool = True, active: bool = True
) -> Database:
    return Database(database_id, end_user_id, "Co", "s", InventoryMode.NONE, sso, api, active)


def small_estate() -> Estate:
    estate = Estate()
    estate.put_distributor(Distributor("d", "D", direct=False, active=True))
    estate.put_distributor(Distributor("direct", "Direct", direct=True, active=True))
    estate.put_end_user(EndUser("a", "d", "A", active=True))
    estate.put_end_user(EndUser("b", "d", "B", active=True))
    estate.put_end_user(EndUser("solo", "", "Solo", active=True))
    for database in (db("a1", "a"), db("a2", "a"), db("b1", "b"), db("s1", "solo")):
        estate.put_database(database)
    return estate


def apply(estate: Estate, plan: ScanPlan) -> dict[str, Tier]:
    for chunk in plan.chunks():
        for change in chunk:
            estate.put_tier(change.account_id, TierRecord(change.kind, change.decision, NOW, 1))
    return {account: record.decision.tier for account, record in estate.tiers.items()}


def test_roll_up_takes_the_highest_and_keeps_the_composition() -> None:
    decision = roll_up([Tier.LITE, Tier.PRO, Tier.LITE], "v1")
    assert decision.tier is Tier.PRO and decision.rule_id == "rollup-highest"
    assert dict(decision.evidence) == {
        "children": "3",
        "children_lite": "2",
        "children_plus": "0",
        "children_pro": "1",
    }
    assert roll_up([], "v1").tier is Tier.LITE


def test_a_scan_plan_gives_first_tiers_then_only_changes() -> None:
    estate = small_estate()
    evaluator = Evaluator(DEFAULT_RULE_SET)
    plan = ScanPlan(estate, evaluator, chunk_size=2)
    tiers = apply(estate, plan)
    assert plan.evaluated == 9 and set(tiers.values()) == {Tier.LITE}
    estate.put_signal(Signal("a", SignalKind.SSO_ACTIVE, "true", "push", NOW))
    changes = [c for chunk in ScanPlan(estate, evaluator).chunks() for c in chunk]
    assert {(c.account_id, c.decision.tier) for c in changes} == {
        ("a1", Tier.PRO),
        ("a2", Tier.PRO),
        ("a", Tier.PRO),
        ("d", Tier.PRO),
    }
    assert {c.billed_account_id for c in changes} == {"d"}
    apply(estate, ScanPlan(estate, evaluator))
    assert [c for chunk in ScanPlan(estate, evaluator).chunks() for c in chunk] == []


def test_inactive_accounts_are_not_evaluated_and_leave_the_roll_up() -> None:
    estate = small_estate()
    evaluator = Evaluator(DEFAULT_RULE_SET)
    estate.put_signal(Signal("b1", SignalKind.SSO_ACTIVE, "true", "push", NOW))
    assert apply(estate, ScanPlan(estate, evaluator))["d"] is Tier.PRO
    estate.put_end_user(EndUser("b", "d", "B", active=False))
    plan = ScanPlan(estate, evaluator)
    changes = [c for chunk in plan.chunks() for c in chunk]
    assert [(c.account_id, c.decision.tier) for c in changes] == [("d", Tier.LITE)]
    assert plan.evaluated == 7  # b and b1 are skipped
    assert not estate.is_live("b1")


def test_moving_an_end_user_moves_its_roll_up() -> None:
    estate = small_estate()
    estate.put_end_user(EndUser("a", "direct", "A", active=True))
    assert estate.end_users_of["d"] == {"b"} and estate.end_users_of["direct"] == {"a"}
    assert estate.billed_by(estate.end_users["a"]) is BilledBy.DIRECT
    assert estate.billed_account("a1") == "direct" and estate.billed_account("s1") == "solo"
    estate.put_database(db("a1", "solo"))
    assert estate.databases_of["a"] == {"a2"} and estate.databases_of["solo"] == {"s1", "a1"}
    assert estate.kind_of("a1") is AccountKind.DATABASE and estate.kind_of("nope") is None


def test_an_older_signal_does_not_replace_a_newer_one() -> None:
    estate = small_estate()
    assert estate.put_signal(Signal("a", SignalKind.SSO_ACTIVE, "true", "push", NOW))
    assert not estate.put_signal(
        Signal("a", SignalKind.SSO_ACTIVE, "false", "push", NOW - timedelta(seconds=1))
    )
    assert estate.signal_value("a", SignalKind.SSO_ACTIVE) == "true"


def test_signal_values_are_normalized_or_refused() -> None:
    assert normalize_signal_value(SignalKind.SSO_ACTIVE, " TRUE ") == "true"
    assert normalize_signal_value(SignalKind.API_CLIENTS_ACTIVE, "007") == "7"
    assert normalize_signal_value(SignalKind.INVENTORY_MODE, "Advanced") == "advanced"
    for kind, bad in (
        (SignalKind.SSO_ACTIVE, "yes"),
        (SignalKind.API_CLIENTS_ACTIVE, "-1"),
        (SignalKind.INVENTORY_MODE, "x"),
    ):
        try:
            normalize_signal_value(kind, bad)
        except ValueError:
            continue
        raise AssertionError(f"{kind}={bad!r} was accepted")


@st.composite
def estates(draw: st.DrawFn) -> Estate:
    estate = Estate()
    distributors = draw(st.integers(min_value=0, max_value=3))
    for d in range(distributors):
        estate.put_distributor(Distributor(f"d{d}", "D", draw(st.booleans()), draw(st.booleans())))
    for e in range(draw(st.integers(min_value=0, max_value=6))):
        parent = draw(st.sampled_from(["", *(f"d{d}" for d in range(distributors))]))
        estate.put_end_user(EndUser(f"e{e}", parent, "E", draw(st.booleans())))
        if draw(st.booleans()):
            estate.put_signal(
                Signal(f"e{e}", SignalKind.SSO_ACTIVE, draw(st.sampled_from(["true", "false"])), "p", NOW)
            )
        for n in range(draw(st.integers(min_value=0, max_value=4))):
            database_id = f"e{e}-{n}"
            estate.put_database(
                Database(
                    database_id,
                    f"e{e}",
                    "Co",
                    "s",
                    draw(st.sampled_from(list(InventoryMode))),
                    draw(st.booleans()),
                    draw(st.booleans()),
                    draw(st.booleans()),
                )
            )
            if draw(st.booleans()):
                count = str(draw(st.integers(min_value=0, max_value=3)))
                estate.put_signal(Signal(database_id, SignalKind.API_CLIENTS_ACTIVE, count, "p", NOW))
    return estate


@settings(max_examples=200)
@given(estates())
def test_roll_up_is_consistent_with_the_database_tiers(estate: Estate) -> None:
    tiers = apply(estate, ScanPlan(estate, Evaluator(DEFAULT_RULE_SET), chunk_size=3))
    for end_user_id in estate.end_users:
        if not estate.is_live(end_user_id):
            assert end_user_id not in tiers
            continue
        live = [tiers[d] for d in estate.databases_of.get(end_user_id, ()) if estate.databases[d].active]
        assert tiers[end_user_id] == max(live, default=Tier.LITE)
    for distributor_id, distributor in estate.distributors.items():
        if not distributor.active:
            continue
        members = [tiers[e] for e in estate.end_users_of.get(distributor_id, ()) if estate.is_live(e)]
        assert tiers[distributor_id] == max(members, default=Tier.LITE)
    assert [c for chunk in ScanPlan(estate, Evaluator(DEFAULT_RULE_SET)).chunks() for c in chunk] == []
