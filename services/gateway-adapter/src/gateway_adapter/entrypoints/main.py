"""Entry point: `python -m gateway_adapter.entrypoints.main`."""

from __future__ import annotations

from pathlib import Path

from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.service import Registration, Resources, ServiceParts, Setup, run_service
from gateway_adapter.settings import GatewaySettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.gateway.v1.GatewayService"


def build(settings: GatewaySettings) -> Setup:
    async def setup(resources: Resources) -> ServiceParts:
        servicer = gateway_pb2_grpc.GatewayServiceServicer()  # type: ignore[abstract]  # answers UNIMPLEMENTED until built
        methods = gateway_pb2_grpc.GatewayServiceServicer.__dict__
        access = {name: {"operator"} for name in methods if not name.startswith("_")}
        return ServiceParts(
            [
                Registration(
                    gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, SERVICE_NAME, access
                )
            ]
        )

    return setup


def main() -> None:
    run_service("GATEWAY", GatewaySettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
