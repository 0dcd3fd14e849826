"""Entry point: `python -m dunning.entrypoints.main`."""

from __future__ import annotations

from pathlib import Path

from billing.dunning.v1 import dunning_pb2_grpc
from billing_common.service import Registration, Resources, ServiceParts, Setup, run_service
from dunning.settings import DunningSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.dunning.v1.DunningService"


def build(settings: DunningSettings) -> Setup:
    async def setup(resources: Resources) -> ServiceParts:
        servicer = dunning_pb2_grpc.DunningServiceServicer()  # type: ignore[abstract]  # answers UNIMPLEMENTED until built
        methods = dunning_pb2_grpc.DunningServiceServicer.__dict__
        access = {name: {"operator"} for name in methods if not name.startswith("_")}
        return ServiceParts(
            [
                Registration(
                    dunning_pb2_grpc.add_DunningServiceServicer_to_server, servicer, SERVICE_NAME, access
                )
            ]
        )

    return setup


def main() -> None:
    run_service("DUNNING", DunningSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
