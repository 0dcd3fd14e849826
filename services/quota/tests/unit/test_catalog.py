from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing_common.errors import FailedPrecondition, InvalidArgument
from quota.domain.catalog import (
    AddOnDraft,
    Behaviour,
    EntitlementDraft,
    Period,
    Plan,
    PlanCreated,
    PlanDraft,
    PlanRetired,
    PlanUpdated,
    plan_created,
    plan_retired,
    plan_updated,
    validate_add_on,
    validate_plan,
)


def ent(key: str = "api.calls", limit: int = 100, **kw: object) -> EntitlementDraft:
    values: dict[str, object] = {
        "key": key,
        "limit": limit,
        "unlimited": False,
        "period": Period.CALENDAR_MONTH,
        "behaviour": Behaviour.DENY,
    }
    values.update(kw)
    return EntitlementDraft(**values)  # type: ignore[arg-type]


def draft(**kw: object) -> PlanDraft:
    values: dict[str, object] = {
        "name": "Pro",
        "price_minor": 4900,
        "currency": "USD",
        "frequency": "monthly",
        "trial_days": 14,
        "entitlements": [ent()],
        "threshold_percents": [100, 80],
    }
    values.update(kw)
    return PlanDraft(**values)  # type: ignore[arg-type]


def test_a_valid_plan_keeps_exact_prices_and_sorted_thresholds() -> None:
    spec = validate_plan("pro", draft(entitlements=[ent(unit_price="0.0025", included_quantity=10)]))
    assert spec.entitlements[0].unit_price == Decimal("0.0025")
    assert spec.threshold_percents == (80, 100)
    assert spec.price.amount_minor == 4900


def test_every_violation_is_reported_at_once() -> None:
    bad = draft(
        currency="XXQ",
        price_minor=-1,
        frequency=None,
        entitlements=[
            ent(limit=-5),
            ent(key="api.calls", unit_price="abc"),
            ent(key="storage", unit_price="-1", included_quantity=-2, period=None),
        ],
        threshold_percents=[80, 80, 0],
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_plan("Bad Code", bad)
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "code",
        "spec.price.currency",
        "spec.price.amount_minor",
        "spec.frequency",
        "spec.entitlements[0].limit",
        "spec.entitlements[1].key",
        "spec.entitlements[1].unit_price",
        "spec.entitlements[2].unit_price",
        "spec.entitlements[2].included_quantity",
        "spec.entitlements[2].period",
        "spec.threshold_percents[2]",
        "spec.threshold_percents",
    }


def test_unlimited_entitlements_have_no_limit() -> None:
    spec = validate_plan("pro", draft(entitlements=[ent(limit=0, unlimited=True)]))
    assert spec.entitlements[0].unlimited
    with pytest.raises(InvalidArgument):
        validate_plan("pro", draft(entitlements=[ent(limit=5, unlimited=True)]))


def test_add_ons_need_entitlements_and_a_known_currency() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_add_on(AddOnDraft("extra", "Extra", 100, "ZZZ", []))
    assert {v.field for v in caught.value.violations} == {"add_on.price.currency", "add_on.entitlements"}


def test_a_plan_starts_at_version_one_and_an_update_announces_the_version_it_replaces() -> None:
    spec = validate_plan("pro", draft())
    assert plan_created("pro") == PlanCreated("pro", 1)
    assert plan_updated(Plan("pro", 3, spec, datetime(2026, 1, 1, tzinfo=UTC))) == PlanUpdated("pro", 4, 3)


def test_a_retired_plan_takes_no_new_version() -> None:
    spec = validate_plan("pro", draft())
    with pytest.raises(FailedPrecondition):
        plan_updated(Plan("pro", 3, spec, datetime(2026, 1, 1, tzinfo=UTC), retired=True))


def test_retiring_is_announced_once() -> None:
    assert plan_retired("pro", already_retired=False) == [PlanRetired("pro")]
    assert plan_retired("pro", already_retired=True) == []
