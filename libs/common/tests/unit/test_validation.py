"""The validation boundary's rules: the contracts' buf.validate annotations and the defaults."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import protovalidate
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.common.v1 import common_pb2
from billing.dunning.v1 import dunning_pb2, dunning_pb2_grpc  # noqa: F401 (registers the service)
from billing.gateway.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: F401
from billing.quota.v1 import quota_pb2, quota_pb2_grpc  # noqa: F401
from billing.recurring.v1 import recurring_pb2, recurring_pb2_grpc  # noqa: F401
from billing.tier.v1 import tier_pb2, tier_pb2_grpc  # noqa: F401
from billing_common.clock import ControllableClock, SystemClock
from billing_common.validation import DEFAULT_MAX_CHARS, RequestValidator, UnsupportedRule, request_types
from buf.validate import validate_pb2

SERVICES = [
    "billing.gateway.v1.GatewayService",
    "billing.quota.v1.QuotaService",
    "billing.recurring.v1.RecurringService",
    "billing.dunning.v1.DunningService",
    "billing.tier.v1.TierService",
]
REQUEST_TYPES = request_types(SERVICES)
NOW = datetime(2030, 6, 1, tzinfo=UTC)


def _validator(now: datetime = NOW) -> RequestValidator:
    validator = RequestValidator(ControllableClock(now))
    validator.prepare(REQUEST_TYPES)
    return validator


def _fields(message: Any, now: datetime = NOW) -> set[str]:
    return {v.field for v in _validator(now).violations(message)}


def _seconds(year: int) -> int:
    return int((datetime(year, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())


def test_every_rpc_of_every_service_has_its_request_rules_compiled_at_start() -> None:
    methods = [m for name in SERVICES for m in descriptor_pool.Default().FindServiceByName(name).methods]
    assert len(REQUEST_TYPES) == len(methods) > 60  # no service left out
    _validator()


# The inputs measured in the issue, each refused at the boundary with its field named.
MEASURED = {
    "a credit of 2^63-1": (
        recurring_pb2.AddAccountCreditRequest(
            account_id="acct", amount=common_pb2.Money(amount_minor=2**63 - 1, currency="USD")
        ),
        "amount.amount_minor",
    ),
    "a plan unit price of 1e999999": (
        quota_pb2.CreatePlanRequest(
            code="pro",
            spec=quota_pb2.PlanSpec(
                entitlements=[
                    quota_pb2.Entitlement(key="api", unit_price=common_pb2.Decimal(value="1e999999"))
                ]
            ),
        ),
        "spec.entitlements[0].unit_price.value",
    ),
    "a signal dated 2200": (
        tier_pb2.ReportSignalsRequest(
            signals=[
                tier_pb2.Signal(
                    account_id="eu-1",
                    kind=tier_pb2.SIGNAL_KIND_SSO_ACTIVE,
                    value="true",
                    observed_at={"seconds": _seconds(2200)},
                )
            ]
        ),
        "signals[0].observed_at",
    ),
    "usage from next year": (
        quota_pb2.RecordUsageRequest(
            event=quota_pb2.UsageEvent(
                tenant_id="t", key="k", delta=1, occurred_at={"seconds": _seconds(2031)}
            )
        ),
        "event.occurred_at",
    ),
    "a lower-case currency": (
        recurring_pb2.GetAccountBalanceRequest(account_id="a", currency="usd"),
        "currency",
    ),
    "an unknown currency": (
        recurring_pb2.GetAccountBalanceRequest(account_id="a", currency="XYZ"),
        "currency",
    ),
    "an overflowing AdvanceClock": (
        recurring_pb2.AdvanceClockRequest(by={"seconds": 10**12}),
        "by",
    ),
    "AdvanceClock by nothing": (recurring_pb2.AdvanceClockRequest(), "by"),
    "AdvanceClock backwards": (recurring_pb2.AdvanceClockRequest(by={"seconds": -60}), "by"),
    "an overflowing policy window": (
        dunning_pb2.SetPolicyRequest(
            policy=dunning_pb2.RetryPolicy(
                max_attempts=3,
                max_window={"seconds": 2**62},
                fixed=dunning_pb2.FixedSchedule(day_offsets=[1]),
            )
        ),
        "policy.max_window",
    ),
    "a policy day offset of 2^31-1": (
        dunning_pb2.SetPolicyRequest(
            policy=dunning_pb2.RetryPolicy(
                max_attempts=3, fixed=dunning_pb2.FixedSchedule(day_offsets=[2**31 - 1])
            )
        ),
        "policy.fixed.day_offsets[0]",
    ),
    "an adaptive gap of 10,000 years": (
        dunning_pb2.SetPolicyRequest(
            policy=dunning_pb2.RetryPolicy(
                max_attempts=3,
                adaptive=dunning_pb2.AdaptiveSchedule(
                    min_gap={"seconds": 1}, max_gap={"seconds": 315_576_000_000}
                ),
            )
        ),
        "policy.adaptive.max_gap",
    ),
    "a 10 KB plan code": (quota_pb2.GetPlanRequest(code="p" * 10_000), "code"),
    "an idempotency key with a NUL": (
        recurring_pb2.PauseSubscriptionRequest(subscription_id="s", idempotency_key="k\x00"),
        "idempotency_key",
    ),
    "an unknown status in a List filter": (recurring_pb2.ListSubscriptionsRequest(status=99), "status"),
    "an unknown case state in a List filter": (dunning_pb2.ListCasesRequest(state=42), "state"),
    "an empty subscription id": (recurring_pb2.GetSubscriptionRequest(), "subscription_id"),
    "an empty case id": (dunning_pb2.PauseCaseRequest(), "case_id"),
    "an empty invoice id": (recurring_pb2.VoidInvoiceRequest(), "invoice_id"),
    "an empty run id": (recurring_pb2.GetRunRequest(), "run_id"),
    "an empty payment lookup": (gateway_pb2.GetPaymentRequest(), "lookup"),
    "an empty scan id": (tier_pb2.GetScanRequest(), "scan_id"),
    "an empty batch of usage": (quota_pb2.RecordUsageBatchRequest(), "events"),
    "an empty batch of signals": (tier_pb2.ReportSignalsRequest(), "signals"),
    "a Timestamp in year 10000": (
        tier_pb2.GetTierAtRequest(account_id="a", at={"seconds": 253_402_300_800}),
        "at",
    ),
    "a Timestamp with negative nanos": (tier_pb2.GetTierAtRequest(account_id="a", at={"nanos": -1}), "at"),
    "a card number as gateway token": (
        gateway_pb2.ChargeRequest(
            merchant_id="m",
            idempotency_key="k",
            amount=common_pb2.Money(amount_minor=100, currency="USD"),
            payment_method=common_pb2.PaymentMethod(type=1, gateway_token="tok_4242424242424242"),
        ),
        "payment_method.gateway_token",
    ),
    "a card number in a reason": (
        recurring_pb2.VoidInvoiceRequest(invoice_id="i", reason="paid by 4242.4242.4242.4242"),
        "reason",
    ),
    "a card number as a metadata key": (
        gateway_pb2.ChargeRequest(
            merchant_id="m",
            idempotency_key="k",
            amount=common_pb2.Money(amount_minor=100, currency="USD"),
            payment_method=common_pb2.PaymentMethod(type=1, gateway_token="tok"),
            metadata={"x4242424242424242": "v"},
        ),
        "metadata.keys[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(MEASURED))
def test_the_inputs_measured_in_the_issue_are_refused_with_their_field_named(case: str) -> None:
    message, field = MEASURED[case]
    assert field in _fields(message)


def test_well_formed_requests_pass() -> None:
    validator = _validator()
    for message in (
        quota_pb2.CheckQuotaRequest(tenant_id="acme", key="api.calls", amount=1),
        recurring_pb2.AdvanceClockRequest(by={"seconds": 86_400}),
        recurring_pb2.GetAccountBalanceRequest(account_id="acct"),
        recurring_pb2.GetAccountBalanceRequest(account_id="acct", currency="EUR"),
        dunning_pb2.PauseCaseRequest(case_id="00000000-0000-0000-0000-000000000000", reason="on hold"),
        quota_pb2.RecordUsageRequest(
            event=quota_pb2.UsageEvent(
                tenant_id="t", key="k", delta=-3, occurred_at={"seconds": _seconds(2030)}
            )
        ),
    ):
        validator.validate(message)


def test_usage_is_judged_against_the_services_clock_with_a_little_skew() -> None:
    soon = NOW + timedelta(minutes=2)
    event = quota_pb2.UsageEvent(tenant_id="t", key="k", delta=1)
    event.occurred_at.FromDatetime(soon)
    assert _fields(quota_pb2.RecordUsageRequest(event=event)) == set()
    assert _fields(quota_pb2.RecordUsageRequest(event=event), now=NOW - timedelta(hours=1)) == {
        "event.occurred_at"
    }


@pytest.mark.parametrize(
    "text",
    ["a\x00b", "tab\there", "esc\x1b", "del\x7f", "x" * (DEFAULT_MAX_CHARS + 1), "tok_4111111111111111"],
)
def test_every_string_without_an_annotation_of_its_own_gets_the_defaults(text: str) -> None:
    # ListCasesRequest.account_id carries no rule of its own in the contract.
    assert _fields(dunning_pb2.ListCasesRequest(account_id=text)) == {"account_id"}


def test_a_violation_never_repeats_the_value() -> None:
    secret = "4242424242424242"
    message = recurring_pb2.VoidInvoiceRequest(
        invoice_id="x" * 5000, reason=secret, idempotency_key="\x00" + secret
    )
    violations = _validator().violations(message)
    assert {v.field for v in violations} == {"invoice_id", "reason", "idempotency_key"}
    for violation in violations:
        assert secret not in violation.description and "xxxxx" not in violation.description


def _message_with_rule(name: str, rules: validate_pb2.FieldRules) -> Descriptor:
    file = descriptor_pb2.FileDescriptorProto(
        name=f"billing/testing/{name}.proto", package="billing.testing", syntax="proto3"
    )
    file.dependency.append("buf/validate/validate.proto")
    message = file.message_type.add(name=name)
    field = message.field.add(
        name="value", number=1, type=FieldDescriptor.TYPE_STRING, label=FieldDescriptor.LABEL_OPTIONAL
    )
    field.options.Extensions[validate_pb2.field].CopyFrom(rules)
    return descriptor_pool.Default().Add(file).message_types_by_name[name]  # type: ignore[no-any-return]


def test_a_rule_the_boundary_does_not_implement_stops_the_service_at_start() -> None:
    unknown = validate_pb2.FieldRules()
    unknown.string.email = True
    with pytest.raises(UnsupportedRule, match=r"string\.email"):
        RequestValidator(SystemClock()).prepare([_message_with_rule("WithEmail", unknown)])
    cel = validate_pb2.FieldRules()
    cel.cel.add(id="x", expression="this != ''")
    with pytest.raises(UnsupportedRule, match="cel"):
        RequestValidator(SystemClock()).prepare([_message_with_rule("WithCel", cel)])


# -- cross-check against protovalidate's own runtime ---------------------------------------------
# Values are drawn so that the defaults (no control characters or card numbers, strings of at most
# DEFAULT_MAX_CHARS, known enums, times and durations within range) hold: what is left to decide is
# the contracts' annotations, where both must agree field by field.

_TEXT = st.text(alphabet="abcXYZ-_.:", max_size=DEFAULT_MAX_CHARS)
_LENGTHS = [0, 1, 2, 3, 4, 40, 41, 64, 65, 200, 201, 255, 256]
_INTS = [
    -(10**15),
    -(10**15) + 1,
    -(10**12),
    -1,
    0,
    1,
    12,
    13,
    31,
    32,
    365,
    366,
    1000,
    1001,
    3650,
    3651,
    9999,
    10000,
]
_INTS += [10**12, 10**15 - 1, 10**15, 2**31 - 1]
_STRINGS_BY_FIELD = {
    "billing.common.v1.Money.currency": ["USD", "EUR", "JPY", "usd", "US", "", "USDX"],
    "billing.common.v1.Decimal.value": [
        "1",
        "0.0025",
        "-3.5",
        "",
        "1e999999",
        "NaN",
        "1" * 16,
        "1.5.5",
        "12.",
    ],
    "billing.recurring.v1.GetAccountBalanceRequest.currency": ["", "USD", "usd", "EU"],
}
_PAST = [_seconds(1970), _seconds(2020), _seconds(2029)]
_FUTURE = [_seconds(2200), _seconds(9999)]
_DURATIONS = [0, 1, -1, 3600, 31_536_000, 31_536_001, 315_360_000, 315_360_001, 315_576_000_000]


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        listed = _STRINGS_BY_FIELD.get(field.full_name)
        if listed is not None:
            return st.sampled_from(listed)
        return st.one_of(_TEXT, st.sampled_from(_LENGTHS).map(lambda n: "a" * n))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    if field.type == FieldDescriptor.TYPE_INT32:
        return st.sampled_from([v for v in _INTS if -(2**31) <= v < 2**31])
    return st.sampled_from(_INTS)


@st.composite
def _message(draw: Any, descriptor: Descriptor, depth: int = 0) -> Any:
    message = message_factory.GetMessageClass(descriptor)()
    taken: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if (oneof is not None and oneof.name in taken) or not draw(st.booleans()):
            continue
        if oneof is not None:
            taken.add(oneof.name)
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            for _ in range(draw(st.integers(0, 2))):
                getattr(message, field.name)[draw(_TEXT.filter(bool))] = draw(_TEXT)
        elif kind is not None and kind.full_name == "google.protobuf.Timestamp":
            getattr(message, field.name).seconds = draw(st.sampled_from(_PAST + _FUTURE))
        elif kind is not None and kind.full_name == "google.protobuf.Duration":
            getattr(message, field.name).seconds = draw(st.sampled_from(_DURATIONS))
        elif kind is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 2))):
                    getattr(message, field.name).add().CopyFrom(draw(_message(kind, depth + 1)))
            else:
                getattr(message, field.name).CopyFrom(draw(_message(kind, depth + 1)))
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=2)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _protovalidate_paths(message: Any) -> set[str]:
    paths = set()
    for violation in protovalidate.collect_violations(message):
        paths.add(".".join(element.field_name for element in violation.proto.field.elements))
    return paths


def _our_paths(validator: RequestValidator, message: Any) -> set[str]:
    return {re.sub(r"\[\d+\]|\.keys|\.values", "", v.field) for v in validator.violations(message)}


@pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.name)
def test_the_boundary_agrees_with_protovalidate_on_every_request_type(descriptor: Descriptor) -> None:
    validator = RequestValidator(SystemClock())
    validator.prepare([descriptor])

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(message=_message(descriptor))
    def agree(message: Any) -> None:
        assert _our_paths(validator, message) == _protovalidate_paths(message)

    agree()
