"""What our channels re-send on their own: a read that met UNAVAILABLE, never a move of the test clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from billing.recurring.v1 import recurring_pb2 as rpb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.grpc_client import open_channel


class AppliedThenUnavailable(recurring_pb2_grpc.RecurringServiceServicer):
    """Applies each call, then answers UNAVAILABLE, as a server whose connection reached its
    maximum age while the call ran does."""

    def __init__(self) -> None:
        self.applied: Counter[str] = Counter()

    async def AdvanceClock(
        self, request: rpb.AdvanceClockRequest, context: grpc.aio.ServicerContext
    ) -> rpb.AdvanceClockResponse:
        self.applied["AdvanceClock"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "max connection age")

    async def GetClock(
        self, request: rpb.GetClockRequest, context: grpc.aio.ServicerContext
    ) -> rpb.GetClockResponse:
        self.applied["GetClock"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "max connection age")


@pytest.fixture
async def recurring() -> AsyncIterator[
    tuple[AppliedThenUnavailable, recurring_pb2_grpc.RecurringServiceStub]
]:
    servicer = AppliedThenUnavailable()
    server = grpc.aio.server()
    recurring_pb2_grpc.add_RecurringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_channel(f"127.0.0.1:{port}") as channel:
            yield servicer, recurring_pb2_grpc.RecurringServiceStub(channel)
    finally:
        await server.stop(None)


async def test_an_advance_of_the_clock_that_failed_after_it_was_applied_is_not_sent_again(
    recurring: tuple[AppliedThenUnavailable, recurring_pb2_grpc.RecurringServiceStub],
) -> None:
    servicer, stub = recurring
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.AdvanceClock(rpb.AdvanceClockRequest())
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.applied["AdvanceClock"] == 1


async def test_a_read_that_met_unavailable_is_retried_by_the_channel(
    recurring: tuple[AppliedThenUnavailable, recurring_pb2_grpc.RecurringServiceStub],
) -> None:
    servicer, stub = recurring
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetClock(rpb.GetClockRequest())
    assert servicer.applied["GetClock"] == 4
