"""gateway-adapter with its database stopped: callers hear UNAVAILABLE, and the same key charges once."""

import grpc
import pytest

from billing.common.v1 import common_pb2
from billing.gateway.v1 import gateway_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.servers import PostgresCluster, outage

from .conftest import gateway_service


async def test_a_charge_while_the_database_is_down_is_unavailable_and_the_same_key_charges_once_after(
    private_postgres: tuple[InfraEnv, PostgresCluster],
) -> None:
    env, cluster = private_postgres
    async with gateway_service(env) as gateway:
        assert (await gateway.charge("before")).payment.status == common_pb2.PAYMENT_STATUS_SUCCEEDED
        async with outage(cluster):
            for call in (
                gateway.charge("during"),
                gateway.stub.GetPayment(pb.GetPaymentRequest(idempotency_key="before")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        after = await gateway.charge("during")

        assert after.payment.status == common_pb2.PAYMENT_STATUS_SUCCEEDED and not after.replayed
        assert await gateway.gateway_calls("during") == 1
