"""Pure rules of the gateway-adapter: classification, signatures, routing, refunds, replays."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_common.errors import FailedPrecondition, InvalidArgument
from billing_common.money import Money
from billing_common.pan import contains_card_number
from billing_common.payments import MethodType
from billing_common.settings import SettingsError, load_settings, setting_text
from gateway_adapter.domain.classification import (
    SANDBOX,
    STRIPE,
    UNMAPPED,
    DeclineKind,
    FailureType,
    classify,
)
from gateway_adapter.domain.payments import (
    TRANSITIONS,
    ChargeRequest,
    Payment,
    PaymentEvent,
    RefundRequest,
    Status,
    after_refund,
    charge_event,
    news_event,
    next_check_at,
    refund_amount,
    validate_charge,
)
from gateway_adapter.domain.routing import Route, RouteError, Router, Routes
from gateway_adapter.domain.signatures import SignatureError, sign, verify
from gateway_adapter.settings import GatewaySettings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def request(**changes: object) -> ChargeRequest:
    base = ChargeRequest("m-1", MethodType.CARD, "tok_success", usd(1000), "key-1")
    return replace(base, **changes)  # type: ignore[arg-type]


def usd(amount_minor: int) -> Money:
    return Money(amount_minor, "USD")


def paid(amount: int = 1000, status: Status = Status.SUCCEEDED) -> Payment:
    charge = request(amount=usd(amount))
    return Payment(
        "p-1", charge, charge.fingerprint(), "sandbox-card", status, None, "", "", "", usd(0), NOW, NOW
    )


class TestClassification:
    def test_every_table_entry_is_consistent(self) -> None:
        for table in (SANDBOX, STRIPE):
            for code, classification in table.items():
                if classification.decline_kind is DeclineKind.HARD:
                    assert not classification.retryable, code
                if classification.failure_type is FailureType.MERCHANT:
                    assert not classification.retryable, code
                if classification.counts_as_outage:
                    assert not classification.is_decline, code

    def test_unknown_codes_get_the_safe_default(self) -> None:
        assert classify("sandbox-card", "zz_new_code") == (UNMAPPED, False)
        assert classify("stripe", "insufficient_funds")[1]
        assert not UNMAPPED.retryable and UNMAPPED.decline_kind is DeclineKind.HARD

    def test_ach_returns_are_cardholder_failures(self) -> None:
        r01, _ = classify("sandbox-ach", "R01")
        r02, _ = classify("sandbox-ach", "R02")
        assert (r01.decline_kind, r01.retryable) == (DeclineKind.SOFT, True)
        assert (r02.decline_kind, r02.retryable) == (DeclineKind.HARD, False)


class TestSignatures:
    @given(st.binary(max_size=200), st.integers(min_value=-299, max_value=299))
    def test_a_signed_payload_verifies_within_the_tolerance(self, payload: bytes, skew: int) -> None:
        header = sign(payload, "whsec_a", NOW)
        verify(payload, header, ["whsec_a"], NOW + timedelta(seconds=skew))

    @pytest.mark.parametrize("skew", [-301, 301, 3600])
    def test_stale_or_future_timestamps_are_refused(self, skew: int) -> None:
        header = sign(b"{}", "whsec_a", NOW)
        with pytest.raises(SignatureError, match="tolerance"):
            verify(b"{}", header, ["whsec_a"], NOW + timedelta(seconds=skew))

    def test_tampered_payload_or_wrong_secret_is_refused(self) -> None:
        header = sign(b'{"amount": 1}', "whsec_a", NOW)
        with pytest.raises(SignatureError):
            verify(b'{"amount": 2}', header, ["whsec_a"], NOW)
        with pytest.raises(SignatureError):
            verify(b'{"amount": 1}', header, ["whsec_b"], NOW)

    def test_rotation_accepts_either_secret_and_either_signature(self) -> None:
        old = sign(b"x", "whsec_old", NOW)
        new = sign(b"x", "whsec_new", NOW)
        verify(b"x", old, ["whsec_new", "whsec_old"], NOW)
        both = f"{new},v1={old.split('v1=')[1]}"
        verify(b"x", both, ["whsec_old"], NOW)

    @pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", "t=1"])
    def test_malformed_headers_are_refused(self, header: str) -> None:
        with pytest.raises(SignatureError):
            verify(b"x", header, ["whsec_a"], NOW)


class TestRouting:
    def test_defaults_and_merchant_overrides(self) -> None:
        routes = Routes.from_setting("big-merchant:CARD=stripe@eu")
        router = Router(routes, ["sandbox-card", "sandbox-ach", "stripe"])
        assert router.route("big-merchant", MethodType.CARD) == Route("stripe", "eu")
        assert router.route("big-merchant", MethodType.ACH) == Route("sandbox-ach")
        assert router.route("someone", MethodType.CARD) == Route("sandbox-card")

    @pytest.mark.parametrize("entry", ["nonsense", "m:CHEQUE=stripe"])
    def test_a_malformed_route_stops_start_naming_the_variable(self, entry: str) -> None:
        with pytest.raises(SettingsError, match="GATEWAY_ROUTES"):
            load_settings(GatewaySettings, "GATEWAY", {"GATEWAY_ROUTES": f"*:ACH=sandbox-ach,{entry}"})

    def test_a_route_to_a_gateway_we_do_not_have_is_refused(self) -> None:
        with pytest.raises(RouteError, match="unknown-gw"):
            Router(Routes.from_setting("m:CARD=unknown-gw"), ["sandbox-card", "stripe"])

    def test_routes_read_back_what_they_were_given(self) -> None:
        settings = load_settings(
            GatewaySettings, "GATEWAY", {"GATEWAY_ROUTES": "m-1:card=stripe@eu, *:ACH=sandbox-ach"}
        )
        assert settings.routes == Routes.from_setting(setting_text(settings.routes))
        assert Router(settings.routes, ["stripe", "sandbox-ach"]).route("m-1", MethodType.CARD) == Route(
            "stripe", "eu"
        )


class TestCharges:
    def test_validation_names_every_bad_field(self) -> None:
        with pytest.raises(InvalidArgument) as error:
            validate_charge(request(merchant_id="", amount=usd(-5), idempotency_key=""))
        fields = {v.field for v in error.value.violations}
        assert fields == {"merchant_id", "amount.amount_minor", "idempotency_key"}

    @pytest.mark.parametrize(
        "token",
        [
            "4242424242424242",
            "4000 0566 5566 5556",
            "5555-5555-5555-4444",
            "tok_4242424242424242",
            "x4242424242424242",
            "4242.4242.4242.4242",
        ],
    )
    def test_card_numbers_are_refused_as_tokens(self, token: str) -> None:
        assert contains_card_number(token)
        with pytest.raises(InvalidArgument):
            validate_charge(request(token=token))

    def test_long_digit_runs_that_fail_luhn_are_not_card_numbers(self) -> None:
        assert not contains_card_number("order 1234567890123456")

    def test_a_key_claimed_before_the_method_enum_was_shared_still_matches_its_replay(self) -> None:
        # Fingerprints stored by earlier releases hash the method as CARD; a replay must still match.
        request = ChargeRequest("m-1", MethodType.CARD, "tok_success", usd(1000), "key-1")
        stored = hashlib.sha256(
            "\x1f".join(("m-1", "CARD", "tok_success", "1000", "USD")).encode()
        ).hexdigest()
        assert request.fingerprint() == stored

    @pytest.mark.parametrize(
        ("change", "named"),
        [
            ({"amount": usd(1001)}, "amount"),
            ({"amount": Money(1000, "EUR")}, "currency"),
            ({"merchant_id": "m-2"}, "merchant_id"),
            ({"token": "tok_x"}, "payment_method"),
        ],
    )
    def test_a_replay_must_be_the_same_request(self, change: dict[str, object], named: str) -> None:
        payment = paid()
        payment.replay_of(request(caller_reference="other reference is fine"))
        with pytest.raises(FailedPrecondition, match=named):
            payment.replay_of(request(**change))

    def test_unknown_outcomes_are_checked_on_the_schedule_then_its_last_step(self) -> None:
        schedule = [timedelta(minutes=5), timedelta(hours=1), timedelta(days=1)]
        steps = [next_check_at(schedule, n, NOW) - NOW for n in range(5)]
        assert steps == [timedelta(minutes=5), timedelta(hours=1)] + [timedelta(days=1)] * 3

    def test_final_states_go_nowhere(self) -> None:
        for final in (Status.DECLINED, Status.RETURNED, Status.REFUNDED):
            assert TRANSITIONS[final] == frozenset()
        assert Status.SUCCEEDED not in TRANSITIONS[Status.FAILED]


class TestRefunds:
    @given(
        st.integers(min_value=1, max_value=10**9),
        st.lists(st.integers(min_value=1, max_value=10**9), max_size=20),
    )
    def test_refunds_never_exceed_the_payment(self, amount: int, asks: list[int]) -> None:
        payment = paid(amount)
        for n, ask in enumerate(asks):
            left = payment.refundable.amount_minor
            try:
                granted = refund_amount(payment, RefundRequest("p-1", usd(ask), f"r-{n}"))
            except FailedPrecondition:
                assert ask > left
                continue
            assert granted.amount_minor == ask <= left
            payment = after_refund(payment, granted, NOW)
        assert 0 <= payment.refunded.amount_minor <= amount
        assert (payment.status is Status.REFUNDED) == (payment.refunded == usd(amount))

    def test_a_full_refund_takes_what_is_left(self) -> None:
        payment = after_refund(paid(1000), usd(300), NOW)
        assert refund_amount(payment, RefundRequest("p-1", None, "r")) == usd(700)

    def test_refunds_claimed_but_not_yet_recorded_count_against_what_is_left(self) -> None:
        payment = after_refund(paid(1000), usd(300), NOW)
        assert refund_amount(payment, RefundRequest("p-1", None, "r"), claimed_minor=500) == usd(200)
        with pytest.raises(FailedPrecondition, match="200 left"):
            refund_amount(payment, RefundRequest("p-1", usd(201), "r"), claimed_minor=500)

    def test_only_collected_payments_in_their_currency_are_refundable(self) -> None:
        with pytest.raises(FailedPrecondition):
            refund_amount(paid(status=Status.PENDING), RefundRequest("p-1", None, "r"))
        with pytest.raises(FailedPrecondition, match="USD"):
            refund_amount(paid(), RefundRequest("p-1", Money(10, "EUR"), "r"))


@pytest.mark.parametrize(
    ("status", "event"),
    [
        (Status.SUCCEEDED, PaymentEvent.SUCCEEDED),
        (Status.PENDING, PaymentEvent.PENDING),
        (Status.DECLINED, PaymentEvent.FAILED),
        (Status.FAILED, PaymentEvent.FAILED),
        (Status.UNKNOWN, None),
    ],
)
def test_a_charge_announces_its_outcome_and_nothing_while_it_is_unknown(
    status: Status, event: PaymentEvent | None
) -> None:
    assert charge_event(status) is event


@pytest.mark.parametrize(
    ("previous", "target", "event"),
    [
        (Status.PENDING, Status.SETTLED, PaymentEvent.SETTLED),
        (Status.SETTLED, Status.RETURNED, PaymentEvent.RETURNED),
        (Status.UNKNOWN, Status.SUCCEEDED, PaymentEvent.RECONCILED),
        (Status.PROCESSING, Status.DECLINED, PaymentEvent.RECONCILED),
        (Status.UNKNOWN, Status.PENDING, PaymentEvent.RECONCILED),
        (Status.PROCESSING, Status.FAILED, PaymentEvent.RECONCILED),
        (Status.PENDING, Status.SUCCEEDED, PaymentEvent.SUCCEEDED),
        (Status.PENDING, Status.DECLINED, PaymentEvent.FAILED),
    ],
)
def test_the_gateways_later_word_announces_settlements_returns_and_outcomes_nobody_knew_as_reconciled(
    previous: Status, target: Status, event: PaymentEvent
) -> None:
    assert news_event(previous, target) is event
