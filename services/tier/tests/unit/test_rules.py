import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_common.tiers import Tier
from tier.domain.accounts import BilledBy, InventoryMode
from tier.domain.rules import (
    DEFAULT_RULE_SET,
    DEFAULT_RULE_SET_DOCUMENT,
    Evaluator,
    Facts,
    InvalidRuleSet,
    evaluate,
    parse_rule_set,
)

MODES = list(InventoryMode)  # in increasing capability


def facts(
    sso_access: bool = False,
    sso: bool = False,
    api_access: bool = False,
    api_clients: int = 0,
    mode: InventoryMode = InventoryMode.NONE,
    billed_by: BilledBy = BilledBy.DISTRIBUTOR,
) -> Facts:
    return Facts(sso_access, sso, api_access, api_clients, mode, billed_by)


def test_default_rules_pick_the_tier_and_say_why() -> None:
    pro = evaluate(DEFAULT_RULE_SET, facts(sso_access=True, sso=True, api_access=True, api_clients=2))
    assert (pro.tier, pro.rule_id, pro.rule_set_version) == (Tier.PRO, "sso-pro", "default-1")
    assert dict(pro.evidence) == {
        "sso_access": "true",
        "sso_connection_active": "true",
        "rest_api_access": "true",
        "api_clients_active": "2",
        "inventory_mode": "none",
        "billed_by": "distributor",
    }
    assert evaluate(DEFAULT_RULE_SET, facts(api_access=True, api_clients=1)).rule_id == "api-plus"
    assert evaluate(DEFAULT_RULE_SET, facts(api_access=True, api_clients=0)).tier is Tier.LITE
    assert evaluate(DEFAULT_RULE_SET, facts(sso=True)).tier is Tier.LITE  # the site has no SSO access
    assert evaluate(DEFAULT_RULE_SET, facts(api_clients=5)).tier is Tier.LITE  # nor REST API access


def test_inventory_mode_and_direct_billing_are_rules_too() -> None:
    advanced = InventoryMode.ADVANCED
    assert evaluate(DEFAULT_RULE_SET, facts(mode=advanced, billed_by=BilledBy.DIRECT)).tier is Tier.PLUS
    assert evaluate(DEFAULT_RULE_SET, facts(mode=advanced, billed_by=BilledBy.STANDALONE)).tier is Tier.PLUS
    assert evaluate(DEFAULT_RULE_SET, facts(mode=advanced, billed_by=BilledBy.DISTRIBUTOR)).tier is Tier.LITE


def test_a_rule_set_from_configuration() -> None:
    document = {
        "version": "2026-07",
        "rules": [
            {"id": "heavy-api", "tier": "PRO", "when": {"api_clients_active": {"gte": 10}}},
            {
                "id": "reseller-basic",
                "tier": "PLUS",
                "when": {"inventory_mode": {"in": ["basic", "advanced"]}, "billed_by": "distributor"},
            },
            {"id": "not-direct", "tier": "LITE", "when": {"billed_by": {"ne": "direct"}}},
            {"id": "direct", "tier": "PLUS"},
        ],
    }
    rules = parse_rule_set(json.loads(json.dumps(document)))
    assert evaluate(rules, facts(api_clients=10)).rule_id == "heavy-api"
    assert evaluate(rules, facts(mode=InventoryMode.BASIC)).rule_id == "reseller-basic"
    assert evaluate(rules, facts(billed_by=BilledBy.STANDALONE)).rule_id == "not-direct"
    decision = evaluate(rules, facts(billed_by=BilledBy.DIRECT))
    assert (decision.tier, decision.rule_id, decision.rule_set_version) == (Tier.PLUS, "direct", "2026-07")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rules": [{"id": "x", "tier": "LITE"}]}, "version"),
        ({"version": "v", "rules": []}, "rules: must be a non-empty list"),
        ({"version": "v", "rules": [{"id": "x", "tier": "GOLD"}]}, "rules[0].tier"),
        ({"version": "v", "rules": [{"id": "x", "tier": "PRO", "when": {"sso_access": True}}]}, "last rule"),
        ({"version": "v", "rules": [{"id": "x", "tier": "PRO"}, {"id": "x", "tier": "LITE"}]}, "used twice"),
        (
            {
                "version": "v",
                "rules": [{"id": "a", "tier": "PRO", "when": {"colour": "red"}}, {"id": "b", "tier": "LITE"}],
            },
            "rules[0].when.colour: unknown fact",
        ),
        (
            {
                "version": "v",
                "rules": [
                    {"id": "a", "tier": "PRO", "when": {"sso_access": {"gte": 1}}},
                    {"id": "b", "tier": "LITE"},
                ],
            },
            "only numeric facts",
        ),
        (
            {
                "version": "v",
                "rules": [
                    {"id": "a", "tier": "PRO", "when": {"sso_access": "yes"}},
                    {"id": "b", "tier": "LITE"},
                ],
            },
            "true or false",
        ),
        (
            {
                "version": "v",
                "rules": [
                    {"id": "a", "tier": "PRO", "when": {"inventory_mode": {"in": ["huge"]}}},
                    {"id": "b", "tier": "LITE"},
                ],
            },
            "must be one of none, basic, advanced",
        ),
        (
            {
                "version": "v",
                "rules": [
                    {"id": "a", "tier": "PRO", "when": {"api_clients_active": {"about": 3}}},
                    {"id": "b", "tier": "LITE"},
                ],
            },
            "unknown operator",
        ),
    ],
)
def test_bad_rule_sets_are_refused_naming_the_place(document: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRuleSet, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rule_set(document)


def test_the_default_document_is_the_default_rule_set() -> None:
    assert parse_rule_set(DEFAULT_RULE_SET_DOCUMENT) == DEFAULT_RULE_SET


any_facts = st.builds(
    Facts,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=0, max_value=1000),
    st.sampled_from(MODES),
    st.sampled_from(list(BilledBy)),
)


@given(any_facts)
def test_evaluation_is_deterministic_and_the_memory_agrees(value: Facts) -> None:
    evaluator = Evaluator(DEFAULT_RULE_SET)
    first = evaluate(DEFAULT_RULE_SET, value)
    assert evaluate(DEFAULT_RULE_SET, value) == first
    assert evaluator.decide(value) == first
    assert evaluator.decide(tuple(value)) is evaluator.decide(value)  # type: ignore[arg-type]


@given(any_facts, st.data())
def test_adding_a_capability_never_lowers_the_tier(value: Facts, data: st.DataObject) -> None:
    more = Facts(
        value.sso_access or data.draw(st.booleans()),
        value.sso_connection_active or data.draw(st.booleans()),
        value.rest_api_access or data.draw(st.booleans()),
        value.api_clients_active + data.draw(st.integers(min_value=0, max_value=50)),
        MODES[data.draw(st.integers(min_value=MODES.index(value.inventory_mode), max_value=len(MODES) - 1))],
        value.billed_by,
    )
    assert evaluate(DEFAULT_RULE_SET, more).tier >= evaluate(DEFAULT_RULE_SET, value).tier
