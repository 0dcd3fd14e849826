"""What a cached read depends on, and what an event makes stale, as the same tags.

A read is tagged with the things its request names (`account:acme`, `invoice:…`) and with the
family of lists it belongs to (`invoices`, `cases`, …); an event stales the things its payload
names and its family. The two meet on a tag, so only the reads an event can change are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

# Request or payload fields that name a thing, and the tag kind they name.
THING_FIELDS = {
    "account_id": "account",
    "tenant_id": "account",
    "billed_account_id": "account",
    "subscription_id": "subscription",
    "invoice_id": "invoice",
    "case_id": "case",
    "run_id": "run",
    "payment_id": "payment",
}
# Lists over everything (no account, invoice, ... in the request) change whenever anything of
# their family does.
FAMILY_OF_METHOD = {
    "ListRuns": "runs",
    "ListCases": "cases",
    "ListInvoices": "invoices",
    "ListSubscriptions": "subscriptions",
    "ListTierChanges": "tiers",
    "ListScans": "tiers",
}
# Reads whose answer covers more than what the request names: a run's counts and items move with
# every item,
# a hierarchy shows the tiers of the accounts below, a breaker has no event of its own.
ALWAYS_FAMILY = {
    "GetRun": "runs",
    "ListRunItems": "runs",
    "GetHierarchy": "tiers",
    "GetCircuitState": "breakers",
}
FAMILY_OF_EVENT = {
    "run": "runs",
    "dunning": "cases",
    "invoice": "invoices",
    "payment": "invoices",
    "subscription": "subscriptions",
    "tier": "tiers",
}


def _things(fields: Mapping[str, str]) -> set[str]:
    return {
        f"{THING_FIELDS[name]}:{value}" for name, value in fields.items() if name in THING_FIELDS and value
    }


def read_tags(method: str, request: Mapping[str, object]) -> frozenset[str]:
    named = {name: str(value) for name, value in request.items() if isinstance(value, str)}
    things = _things(named)
    family = ALWAYS_FAMILY.get(method) or (None if things else FAMILY_OF_METHOD.get(method))
    return frozenset(things | ({family} if family else set()))


def event_tags(event_type: str, ids: Mapping[str, str]) -> frozenset[str]:
    """`ids`: every `*_id` field found in the event's payload, nested ones included."""
    family = FAMILY_OF_EVENT.get(event_type.partition(".")[0])
    return frozenset(_things(ids) | ({family} if family else set()))


def ids_in(record: object) -> dict[str, str]:
    """Every thing-naming field of a record (an event payload, an answer), at any depth."""
    found: dict[str, str] = {}

    def visit(value: object) -> None:
        if isinstance(value, Mapping):
            for name, inner in value.items():
                if name in THING_FIELDS and isinstance(inner, str) and inner:
                    found.setdefault(name, inner)
                else:
                    visit(inner)
        elif isinstance(value, list | tuple):
            for inner in value:
                visit(inner)

    visit(record)
    return found
