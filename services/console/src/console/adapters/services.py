"""The five services over gRPC, called as the console with its own token; an action also names
the person it is for (billing_common.auth.ACTING_FOR_HEADER)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory

from billing.dunning.v1 import dunning_pb2
from billing.gateway.v1 import gateway_pb2
from billing.quota.v1 import quota_pb2
from billing.recurring.v1 import recurring_pb2
from billing.tier.v1 import tier_pb2
from billing_common.auth import ACTING_FOR_HEADER
from billing_common.errors import (
    BillingError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from console.adapters.plain import fill, to_plain

SERVICE_NAMES = {
    "gateway-adapter": gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    "quota": quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name,
    "recurring": recurring_pb2.DESCRIPTOR.services_by_name["RecurringService"].full_name,
    "dunning": dunning_pb2.DESCRIPTOR.services_by_name["DunningService"].full_name,
    "tier": tier_pb2.DESCRIPTOR.services_by_name["TierService"].full_name,
}
ERRORS: dict[grpc.StatusCode, type[BillingError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


class GrpcServices:
    """`Services` over one channel per service (made in main, closed there)."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel], timeout_s: float) -> None:
        self._channels = dict(channels)
        self._timeout_s = timeout_s
        self._methods: dict[tuple[str, str], Any] = {}

    async def call(
        self, service: str, method: str, request: Mapping[str, Any], acting_for: str = ""
    ) -> dict[str, Any]:
        stub, request_class = self._method(service, method)
        metadata = ((ACTING_FOR_HEADER, acting_for),) if acting_for else ()
        try:
            answer = await stub(fill(request_class(), request), metadata=metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return to_plain(answer)

    def _method(self, service: str, method: str) -> Any:
        found = self._methods.get((service, method))
        if found is None:
            full_name = SERVICE_NAMES[service]
            described = descriptor_pool.Default().FindServiceByName(full_name).methods_by_name[method]
            request_class = message_factory.GetMessageClass(described.input_type)
            response_class = message_factory.GetMessageClass(described.output_type)
            stub = self._channels[service].unary_unary(
                f"/{full_name}/{method}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            found = self._methods[(service, method)] = (stub, request_class)
        return found


def _error(exc: grpc.aio.AioRpcError) -> BillingError:
    details = exc.details() or exc.code().name
    if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument.of("request", details)
    return ERRORS.get(exc.code(), Unavailable)(details)
