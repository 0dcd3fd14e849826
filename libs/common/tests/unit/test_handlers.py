from typing import cast

import asyncpg
import pytest

from billing.events.v1 import payment_pb2
from billing_common.events import Handlers


async def test_each_event_reaches_the_handler_registered_for_its_message() -> None:
    handled: list[str] = []

    async def on_settled(conn: asyncpg.Connection, event: payment_pb2.PaymentSettled) -> None:
        handled.append(f"settled {event.payment.payment_id}")

    async def on_returned(conn: asyncpg.Connection, event: payment_pb2.PaymentReturned) -> None:
        handled.append(f"returned {event.payment.payment_id} {event.return_code}")

    handlers = (
        Handlers().on(payment_pb2.PaymentSettled, on_settled).on(payment_pb2.PaymentReturned, on_returned)
    )
    assert handlers.event_types == ["payment.settled", "payment.returned"]
    conn = cast(asyncpg.Connection, object())  # the handlers here write nothing
    returned = payment_pb2.PaymentReturned(
        payment=payment_pb2.PaymentFacts(payment_id="p2"), return_code="R01"
    )
    await handlers.handle(conn, "payment.returned", returned)
    await handlers.handle(conn, "payment.settled", payment_pb2.PaymentSettled(payment=returned.payment))
    assert handled == ["returned p2 R01", "settled p2"]


def test_a_message_that_is_not_an_event_is_refused_at_start() -> None:
    async def on_facts(conn: asyncpg.Connection, event: payment_pb2.PaymentFacts) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="declares no event_type"):
        Handlers().on(payment_pb2.PaymentFacts, on_facts)


def test_an_event_type_takes_one_handler_only() -> None:
    async def on_settled(conn: asyncpg.Connection, event: payment_pb2.PaymentSettled) -> None:
        raise AssertionError("never called")

    handlers = Handlers().on(payment_pb2.PaymentSettled, on_settled)
    with pytest.raises(ValueError, match=r"payment\.settled has a handler already"):
        handlers.on(payment_pb2.PaymentSettled, on_settled)
