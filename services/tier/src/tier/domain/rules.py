"""Tier rules as data, and their evaluation: facts in, tier plus the rule that fired plus evidence out.

A rule set is an ordered list of rules; the first rule whose conditions all hold decides the
tier, and the last rule must have no conditions so that every account gets a tier. Rule sets are
written as documents (JSON in configuration) like:

    {"version": "2026-01",
     "rules": [{"id": "sso-pro", "tier": "PRO",
                "when": {"sso_access": true, "sso_connection_active": true}},
               {"id": "api-plus", "tier": "PLUS",
                "when": {"rest_api_access": true, "api_clients_active": {"gte": 1}}},
               {"id": "lite", "tier": "LITE", "when": {}}]}

A condition is `fact: value` (equality) or `fact: {op: value}` with op one of eq, ne, gte, lte
(numbers) or in (a list). Facts are the names in FACT_TYPES.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from billing_common.tiers import Tier
from tier.domain.accounts import BilledBy, InventoryMode


class Facts(NamedTuple):
    """What the rules may look at for one database: its flags, its signals, how it is billed."""

    sso_access: bool
    sso_connection_active: bool
    rest_api_access: bool
    api_clients_active: int
    inventory_mode: InventoryMode
    billed_by: BilledBy

    def evidence(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, _text(value)) for name, value in zip(self._fields, self, strict=True))


FactsTuple = tuple[bool, bool, bool, int, InventoryMode, BilledBy]
FACT_TYPES: dict[str, type] = {
    "sso_access": bool,
    "sso_connection_active": bool,
    "rest_api_access": bool,
    "api_clients_active": int,
    "inventory_mode": InventoryMode,
    "billed_by": BilledBy,
}
_FACT_INDEX = {name: index for index, name in enumerate(Facts._fields)}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    GTE = "gte"
    LTE = "lte"
    IN = "in"


FactValue = bool | int | str


@dataclass(frozen=True, slots=True)
class Condition:
    fact: str
    op: Op
    value: FactValue | frozenset[FactValue]

    def holds(self, facts: Facts) -> bool:
        actual = facts[_FACT_INDEX[self.fact]]
        match self.op:
            case Op.EQ:
                return bool(actual == self.value)
            case Op.NE:
                return bool(actual != self.value)
            case Op.GTE:
                return bool(actual >= self.value)  # type: ignore[operator]
            case Op.LTE:
                return bool(actual <= self.value)  # type: ignore[operator]
            case Op.IN:
                assert isinstance(self.value, frozenset)
                return actual in self.value


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    tier: Tier
    conditions: tuple[Condition, ...]

    def matches(self, facts: Facts) -> bool:
        return all(condition.holds(facts) for condition in self.conditions)


@dataclass(frozen=True, slots=True)
class TierDecision:
    """The outcome of evaluating one account: the tier, why, and the values it was decided on."""

    tier: Tier
    rule_id: str
    rule_set_version: str
    evidence: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]


def evaluate(rule_set: RuleSet, facts: Facts) -> TierDecision:
    """The first rule that matches decides; the catch-all last rule guarantees one does."""
    for rule in rule_set.rules:
        if rule.matches(facts):
            return TierDecision(rule.tier, rule.rule_id, rule_set.version, facts.evidence())
    raise AssertionError("a validated rule set ends with a rule that always matches")


class Evaluator:
    """`evaluate` with a memory: an estate has few distinct fact combinations, and equal decisions
    share one object (a million databases do not hold a million copies of the same evidence)."""

    def __init__(self, rule_set: RuleSet) -> None:
        self.rule_set = rule_set
        self._decisions: dict[FactsTuple, TierDecision] = {}

    def decide(self, facts: FactsTuple) -> TierDecision:
        """Also takes the facts as a plain tuple in `Facts` order (equal, and cheaper to build)."""
        decision = self._decisions.get(facts)
        if decision is None:
            decision = self._decisions[facts] = evaluate(self.rule_set, Facts(*facts))
        return decision


class InvalidRuleSet(ValueError):
    """A rule set document that cannot be used; the message names the offending path."""


def parse_rule_set(document: Mapping[str, Any]) -> RuleSet:
    version = document.get("version")
    if not isinstance(version, str) or not version.strip():
        raise InvalidRuleSet("version: must be a non-empty string")
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str) or not raw_rules:
        raise InvalidRuleSet("rules: must be a non-empty list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        path = f"rules[{index}]"
        if not isinstance(raw, Mapping):
            raise InvalidRuleSet(f"{path}: must be an object")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip():
            raise InvalidRuleSet(f"{path}.id: must be a non-empty string")
        if rule_id in seen:
            raise InvalidRuleSet(f"{path}.id: {rule_id!r} is used twice")
        seen.add(rule_id)
        tier_name = raw.get("tier")
        if not isinstance(tier_name, str) or tier_name not in Tier.__members__:
            raise InvalidRuleSet(f"{path}.tier: must be one of {', '.join(Tier.__members__)}")
        when = raw.get("when", {})
        if not isinstance(when, Mapping):
            raise InvalidRuleSet(f"{path}.when: must be an object of fact conditions")
        conditions = tuple(_condition(f"{path}.when.{fact}", fact, spec) for fact, spec in when.items())
        rules.append(Rule(rule_id, Tier[tier_name], conditions))
    if rules[-1].conditions:
        raise InvalidRuleSet(f"rules[{len(rules) - 1}]: the last rule must have no conditions (the default)")
    return RuleSet(version, tuple(rules))


def _condition(path: str, fact: str, spec: Any) -> Condition:
    fact_type = FACT_TYPES.get(fact)
    if fact_type is None:
        raise InvalidRuleSet(f"{path}: unknown fact; known facts are {', '.join(FACT_TYPES)}")
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise InvalidRuleSet(f"{path}: give exactly one operator")
        ((op_name, raw_value),) = spec.items()
        if op_name not in {op.value for op in Op}:
            raise InvalidRuleSet(f"{path}: unknown operator {op_name!r}")
        op = Op(op_name)
    else:
        op, raw_value = Op.EQ, spec
    if op is Op.IN:
        if not isinstance(raw_value, Sequence) or isinstance(raw_value, str) or not raw_value:
            raise InvalidRuleSet(f"{path}.in: must be a non-empty list")
        return Condition(fact, op, frozenset(_fact_value(path, fact_type, v) for v in raw_value))
    if op in (Op.GTE, Op.LTE) and fact_type is not int:
        raise InvalidRuleSet(f"{path}.{op.value}: only numeric facts can be compared")
    return Condition(fact, op, _fact_value(path, fact_type, raw_value))


def _fact_value(path: str, fact_type: type, raw: Any) -> FactValue:
    if fact_type is bool:
        if not isinstance(raw, bool):
            raise InvalidRuleSet(f"{path}: must be true or false")
        return raw
    if fact_type is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidRuleSet(f"{path}: must be a whole number")
        return raw
    choices = {member.value: member for member in fact_type}  # type: ignore[attr-defined]
    if raw not in choices:
        raise InvalidRuleSet(f"{path}: must be one of {', '.join(choices)}")
    return choices[raw]  # type: ignore[no-any-return]


DEFAULT_RULE_SET_DOCUMENT: dict[str, Any] = {
    "version": "default-1",
    "rules": [
        # An end user whose organization runs an active SSO connection, on a site with SSO access.
        {"id": "sso-pro", "tier": "PRO", "when": {"sso_access": True, "sso_connection_active": True}},
        # A site with REST API access that has at least one active API client.
        {
            "id": "api-plus",
            "tier": "PLUS",
            "when": {"rest_api_access": True, "api_clients_active": {"gte": 1}},
        },
        # Advanced inventory is a PLUS feature for customers billed themselves; a distributor's end
        # users get it under the distributor's agreement.
        {
            "id": "advanced-inventory-plus",
            "tier": "PLUS",
            "when": {"inventory_mode": "advanced", "billed_by": {"in": ["direct", "standalone"]}},
        },
        {"id": "lite", "tier": "LITE", "when": {}},
    ],
}
DEFAULT_RULE_SET = parse_rule_set(DEFAULT_RULE_SET_DOCUMENT)
