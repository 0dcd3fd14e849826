"""Turns under a gateway's rate limit for the charges of one call, on a pacer that books at once."""

from __future__ import annotations

import asyncio

from billing_common.pacing import Booking
from gateway_adapter.app.payments import _Turns


class BookingPacer:
    """Every booking gets all it asks for, 1 ms apart from now; the counts asked are kept."""

    def __init__(self) -> None:
        self.booked: list[int] = []

    def limited(self, gateway: str) -> bool:
        return True

    def now(self) -> float:
        return 0.0

    async def book(self, gateway: str, count: int, horizon_s: float | None = None) -> Booking:
        self.booked.append(count)
        return Booking(count, 0.0, 0.0, 0.001)

    def on_time(self, gateway: str, due: float) -> bool:
        return True

    def waited(self, gateway: str, seconds: float) -> None:
        pass

    async def wait_turn(self, gateway: str) -> None:
        pass


async def test_a_batch_call_keeps_its_lane_place_until_its_charges_are_sent() -> None:
    pacer = BookingPacer()
    lane = asyncio.Lock()
    first = _Turns(pacer, "gw", 2, 0.2, 5.0, lane)
    second = _Turns(pacer, "gw", 1, 0.2, 5.0, lane)
    assert await first.take() is not None and await first.take() is not None

    next_call = asyncio.create_task(second.take())
    await asyncio.sleep(0.01)
    assert not next_call.done()  # all of the first call's turns are booked, none is sent yet

    first.sent()
    assert await first.take(again=True) is not None  # one woken too late books again, ahead
    first.sent()
    assert await next_call is not None
    assert pacer.booked == [2, 1, 1]
