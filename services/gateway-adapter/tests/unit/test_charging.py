"""The charge path on in-memory ports: what one Charge asks of the store and of the gateway."""

from __future__ import annotations

from billing_common.money import Money
from billing_common.payments import MethodType
from gateway_adapter.domain.payments import ChargeRequest, Status

from .fakes import ApprovingGateway, FakePayments, payments_on


def card_charge(key: str) -> ChargeRequest:
    return ChargeRequest("merchant-a", MethodType.CARD, "tok_success", Money(1999, "USD"), key)


async def test_a_charge_claims_its_key_once_calls_the_gateway_once_and_records_once() -> None:
    store, gateway = FakePayments(), ApprovingGateway()

    payment, replayed = await payments_on(store, gateway).charge(card_charge("key-1"))

    assert (payment.status, replayed) == (Status.SUCCEEDED, False)
    assert store.claims == [["key-1"]]  # no second, empty claim round once every key is answered
    assert store.recordings == [["key-1"]]
    assert gateway.charged == ["key-1"]


async def test_a_replayed_charge_claims_once_and_never_calls_the_gateway() -> None:
    store, gateway = FakePayments(), ApprovingGateway()
    payments = payments_on(store, gateway)
    await payments.charge(card_charge("key-1"))

    payment, replayed = await payments.charge(card_charge("key-1"))

    assert (payment.status, replayed) == (Status.SUCCEEDED, True)
    assert store.claims == [["key-1"], ["key-1"]]
    assert gateway.charged == ["key-1"]
