"""The two runtime choices of the service host, measured: the event loop and how methods are found.

Four bare grpc.aio servers answer the same constant CheckQuota: asyncio's loop or uvloop, with the
methods found through the generic handler or through `add_registered_method_handlers` (what
generated code also does). All four run at once and short rounds alternate between them, so the
shared machine's load falls on each alike; the figures are medians of the rounds, and the server
CPU per call is read from the server process itself.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench.harness import closed_loop, cpu_seconds, serve_bare
from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.service import run_event_loop

CONCURRENCY = 16
SECONDS = 1.5
ROUNDS = 8
SERVICE = "billing.quota.v1.QuotaService"
KINDS = (("asyncio", "generic"), ("asyncio", "registered"), ("uvloop", "generic"), ("uvloop", "registered"))


class _ConstantQuota:
    def __init__(self) -> None:
        self._answer = pb.CheckQuotaResponse(
            allowed=True, used=5, limit=1_000_000, remaining=999_995, key="storage.files", reason="ok"
        )
        self._answer.period_end.FromSeconds(1_800_000_000)

    async def CheckQuota(self, request: pb.CheckQuotaRequest, context: Any) -> pb.CheckQuotaResponse:
        return self._answer


def _serve(loop: str, lookup: str, ports: Any, stop: Any) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            _ConstantQuota().CheckQuota,
            request_deserializer=pb.CheckQuotaRequest.FromString,
            response_serializer=pb.CheckQuotaResponse.SerializeToString,
        )
        # Every method of the service, as the real one has (only CheckQuota is called).
        methods = {method.name: handler for method in pb.DESCRIPTOR.services_by_name["QuotaService"].methods}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
        if lookup == "registered":  # as generated `add_*_to_server` code does, besides the above
            server.add_registered_method_handlers(SERVICE, methods)
        await serve_bare(server, ports, stop)

    if loop == "uvloop":
        run_event_loop(main())
    else:
        asyncio.run(main())


def _checker(stub: Any, request: pb.CheckQuotaRequest) -> Callable[[int], Awaitable[Any]]:
    def call(_: int) -> Awaitable[Any]:
        return stub.CheckQuota(request)  # type: ignore[no-any-return]

    return call


async def main() -> None:
    ctx = mp.get_context("spawn")
    servers: dict[tuple[str, str], tuple[Any, Any, grpc.aio.Channel]] = {}
    try:
        for kind in KINDS:
            ports, stop = ctx.Queue(), ctx.Event()
            process = ctx.Process(target=_serve, args=(*kind, ports, stop), daemon=True)
            process.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.get(timeout=60)}")
            servers[kind] = (process, stop, channel)
        request = pb.CheckQuotaRequest(tenant_id="bench-tenant", key="storage.files", amount=1)
        stubs = {kind: quota_pb2_grpc.QuotaServiceStub(channel) for kind, (_, _, channel) in servers.items()}
        rounds: dict[tuple[str, str], list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        for _ in range(ROUNDS):
            for kind, stub in stubs.items():
                pid = servers[kind][0].pid
                cpu_before = cpu_seconds(pid)
                figures = await closed_loop("/".join(kind), _checker(stub, request), CONCURRENCY, SECONDS)
                cpu_per_call = (cpu_seconds(pid) - cpu_before) / figures.calls
                rounds[kind].append((figures.rps, cpu_per_call * 1e6))
    finally:
        for process, stop, channel in servers.values():
            await channel.close()
            stop.set()
            process.join(timeout=10)
    baseline = statistics.median(us for _, us in rounds[KINDS[0]])
    for kind, measured in rounds.items():
        rate = statistics.median(rps for rps, _ in measured)
        cpu = statistics.median(us for _, us in measured)
        print(
            f"{kind[0]:<8} {kind[1]:<11} c={CONCURRENCY}  {rate:6.0f} req/s  "
            f"server CPU {cpu:4.0f} us/call ({cpu / baseline:4.2f} of asyncio/generic)"
        )


if __name__ == "__main__":
    run_event_loop(main())
