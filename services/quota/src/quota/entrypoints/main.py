"""Entry point: `python -m quota.entrypoints.main`."""

from __future__ import annotations

from pathlib import Path

from billing.quota.v1 import quota_pb2_grpc
from billing_common.service import Registration, Resources, ServiceParts, Setup, run_service
from quota.settings import QuotaSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.quota.v1.QuotaService"


def build(settings: QuotaSettings) -> Setup:
    async def setup(resources: Resources) -> ServiceParts:
        servicer = quota_pb2_grpc.QuotaServiceServicer()  # type: ignore[abstract]  # answers UNIMPLEMENTED until built
        methods = quota_pb2_grpc.QuotaServiceServicer.__dict__
        access = {name: {"operator"} for name in methods if not name.startswith("_")}
        return ServiceParts(
            [Registration(quota_pb2_grpc.add_QuotaServiceServicer_to_server, servicer, SERVICE_NAME, access)]
        )

    return setup


def main() -> None:
    run_service("QUOTA", QuotaSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
