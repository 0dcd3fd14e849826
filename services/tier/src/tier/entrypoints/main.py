"""Entry point: `python -m tier.entrypoints.main`."""

from __future__ import annotations

from pathlib import Path

from billing.tier.v1 import tier_pb2_grpc
from billing_common.service import Registration, Resources, ServiceParts, Setup, run_service
from tier.settings import TierSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.tier.v1.TierService"


def build(settings: TierSettings) -> Setup:
    async def setup(resources: Resources) -> ServiceParts:
        servicer = tier_pb2_grpc.TierServiceServicer()  # type: ignore[abstract]  # answers UNIMPLEMENTED until built
        methods = tier_pb2_grpc.TierServiceServicer.__dict__
        access = {name: {"operator"} for name in methods if not name.startswith("_")}
        return ServiceParts(
            [Registration(tier_pb2_grpc.add_TierServiceServicer_to_server, servicer, SERVICE_NAME, access)]
        )

    return setup


def main() -> None:
    run_service("TIER", TierSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
