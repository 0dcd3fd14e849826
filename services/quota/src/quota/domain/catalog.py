"""The plan catalog: plans (versioned), their entitlements, add-ons, and how drafts are validated."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from billing_common.errors import FailedPrecondition, Violations
from billing_common.money import MINOR_DIGITS, Money, parse_decimal
from billing_common.subscriptions import Frequency

CODE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_TRIAL_DAYS = 730
MAX_THRESHOLD_PERCENT = 1000
FREQUENCIES = tuple(frequency.value for frequency in Frequency)


class Period(StrEnum):
    """Over which window usage of a key is counted."""

    BILLING = "billing"
    CALENDAR_DAY = "calendar_day"
    CALENDAR_MONTH = "calendar_month"
    NONE = "none"


class Behaviour(StrEnum):
    """What happens to usage that would go over the limit."""

    DENY = "deny"
    WARN = "warn"
    ALLOW = "allow"


@dataclass(frozen=True)
class Entitlement:
    key: str
    limit: int | None  # None: unlimited
    period: Period
    behaviour: Behaviour
    included_quantity: int = 0
    unit_price: Decimal | None = None  # major units per unit beyond the included quantity

    @property
    def unlimited(self) -> bool:
        return self.limit is None


@dataclass(frozen=True)
class PlanSpec:
    name: str
    price: Money
    frequency: Frequency
    trial_days: int
    entitlements: tuple[Entitlement, ...]
    threshold_percents: tuple[int, ...] = ()
    is_free_fallback: bool = False


@dataclass(frozen=True)
class Plan:
    code: str
    version: int
    spec: PlanSpec
    created_at: datetime
    retired: bool = False

    @property
    def reference(self) -> str:
        return f"{self.code}@{self.version}"

    def entitlement(self, key: str) -> Entitlement | None:
        return next((e for e in self.spec.entitlements if e.key == key), None)


@dataclass(frozen=True)
class AddOn:
    code: str
    name: str
    price: Money
    entitlements: tuple[Entitlement, ...]


@dataclass(frozen=True)
class ActiveAddOn:
    """An add-on a tenant held for [active_from, active_until), clamped to the window asked about:
    what a billing period is charged for."""

    add_on: AddOn
    active_from: datetime
    active_until: datetime


# ---------------------------------------------------------------- drafts, as callers send them


@dataclass(frozen=True)
class EntitlementDraft:
    key: str
    limit: int
    unlimited: bool
    period: Period | None
    behaviour: Behaviour | None
    included_quantity: int = 0
    unit_price: str = ""


@dataclass(frozen=True)
class PlanDraft:
    name: str
    price_minor: int
    currency: str
    frequency: Frequency | None
    trial_days: int
    entitlements: Sequence[EntitlementDraft]
    threshold_percents: Sequence[int] = ()
    is_free_fallback: bool = False


@dataclass(frozen=True)
class AddOnDraft:
    code: str
    name: str
    price_minor: int
    currency: str
    entitlements: Sequence[EntitlementDraft] = field(default_factory=tuple)


def check_code(violations: Violations, field_name: str, code: str) -> None:
    violations.check(
        bool(CODE_PATTERN.match(code)),
        field_name,
        "must be 1-64 characters of lower-case letters, digits, '_', '.', '-'",
    )


def _price(violations: Violations, field_name: str, amount_minor: int, currency: str) -> Money | None:
    ok = True
    if currency not in MINOR_DIGITS:
        violations.add(f"{field_name}.currency", f"unknown ISO 4217 currency {currency!r}")
        ok = False
    if amount_minor < 0:
        violations.add(f"{field_name}.amount_minor", "must not be negative")
        ok = False
    return Money(amount_minor, currency) if ok else None


def validate_entitlements(
    violations: Violations, field_name: str, drafts: Sequence[EntitlementDraft]
) -> tuple[Entitlement, ...]:
    """Every problem of every entitlement is recorded; the valid ones are returned."""
    seen: set[str] = set()
    valid: list[Entitlement] = []
    for index, draft in enumerate(drafts):
        where = f"{field_name}[{index}]"
        before = len(violations.items)
        if not KEY_PATTERN.match(draft.key):
            violations.add(f"{where}.key", "must be 1-64 characters: a lower-case letter, then [a-z0-9_.-]")
        elif draft.key in seen:
            violations.add(f"{where}.key", f"duplicate key {draft.key!r}")
        seen.add(draft.key)
        if draft.limit < 0:
            violations.add(f"{where}.limit", "must not be negative")
        if draft.unlimited and draft.limit != 0:
            violations.add(f"{where}.limit", "must be 0 when unlimited is set")
        if draft.period is None:
            violations.add(f"{where}.period", "is required")
        if draft.behaviour is None:
            violations.add(f"{where}.behaviour", "is required")
        if draft.included_quantity < 0:
            violations.add(f"{where}.included_quantity", "must not be negative")
        unit_price: Decimal | None = None
        if draft.unit_price:
            try:
                unit_price = parse_decimal(draft.unit_price)
            except ValueError as exc:
                violations.add(f"{where}.unit_price", str(exc))
            else:
                if unit_price < 0:
                    violations.add(f"{where}.unit_price", "must not be negative")
        if len(violations.items) == before and draft.period and draft.behaviour:
            valid.append(
                Entitlement(
                    key=draft.key,
                    limit=None if draft.unlimited else draft.limit,
                    period=draft.period,
                    behaviour=draft.behaviour,
                    included_quantity=draft.included_quantity,
                    unit_price=unit_price,
                )
            )
    return tuple(valid)


def validate_plan(code: str, draft: PlanDraft) -> PlanSpec:
    """A plan spec, or InvalidArgument listing every field violation."""
    violations = Violations()
    check_code(violations, "code", code)
    violations.check(0 < len(draft.name.strip()) <= 200, "spec.name", "must be 1-200 characters")
    price = _price(violations, "spec.price", draft.price_minor, draft.currency)
    violations.check(draft.frequency is not None, "spec.frequency", f"must be one of {FREQUENCIES}")
    violations.check(
        0 <= draft.trial_days <= MAX_TRIAL_DAYS, "spec.trial_days", f"must be 0-{MAX_TRIAL_DAYS}"
    )
    entitlements = validate_entitlements(violations, "spec.entitlements", draft.entitlements)
    for index, percent in enumerate(draft.threshold_percents):
        violations.check(
            0 < percent <= MAX_THRESHOLD_PERCENT,
            f"spec.threshold_percents[{index}]",
            f"must be 1-{MAX_THRESHOLD_PERCENT}",
        )
    violations.check(
        len(set(draft.threshold_percents)) == len(draft.threshold_percents),
        "spec.threshold_percents",
        "must not repeat a threshold",
    )
    violations.raise_if_any()
    assert price is not None and draft.frequency is not None
    return PlanSpec(
        name=draft.name.strip(),
        price=price,
        frequency=draft.frequency,
        trial_days=draft.trial_days,
        entitlements=entitlements,
        threshold_percents=tuple(sorted(draft.threshold_percents)),
        is_free_fallback=draft.is_free_fallback,
    )


def validate_add_on(draft: AddOnDraft) -> AddOn:
    violations = Violations()
    check_code(violations, "add_on.code", draft.code)
    violations.check(0 < len(draft.name.strip()) <= 200, "add_on.name", "must be 1-200 characters")
    price = _price(violations, "add_on.price", draft.price_minor, draft.currency)
    entitlements = validate_entitlements(violations, "add_on.entitlements", draft.entitlements)
    violations.check(bool(draft.entitlements), "add_on.entitlements", "must add at least one entitlement")
    violations.raise_if_any()
    assert price is not None
    return AddOn(draft.code, draft.name.strip(), price, entitlements)


@dataclass(frozen=True)
class PlanCreated:
    plan_code: str
    version: int


@dataclass(frozen=True)
class PlanUpdated:
    plan_code: str
    version: int
    previous_version: int


@dataclass(frozen=True)
class PlanRetired:
    plan_code: str


PlanEvent = PlanCreated | PlanUpdated | PlanRetired


def plan_created(code: str) -> PlanCreated:
    """A plan starts at version 1."""
    return PlanCreated(code, 1)


def plan_updated(current: Plan) -> PlanUpdated:
    """Versioning rule: an update is a new version; a retired plan takes no new versions."""
    if current.retired:
        raise FailedPrecondition(f"plan {current.code} is retired")
    return PlanUpdated(current.code, current.version + 1, current.version)


def plan_retired(code: str, *, already_retired: bool) -> list[PlanEvent]:
    """Retiring is idempotent: retiring a retired plan announces nothing."""
    return [] if already_retired else [PlanRetired(code)]
