"""Entry point: `python -m recurring.entrypoints.main`."""

from __future__ import annotations

from pathlib import Path

from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.service import Registration, Resources, ServiceParts, Setup, run_service
from recurring.settings import RecurringSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.recurring.v1.RecurringService"


def build(settings: RecurringSettings) -> Setup:
    async def setup(resources: Resources) -> ServiceParts:
        servicer = recurring_pb2_grpc.RecurringServiceServicer()  # type: ignore[abstract]  # answers UNIMPLEMENTED until built
        methods = recurring_pb2_grpc.RecurringServiceServicer.__dict__
        access = {name: {"operator"} for name in methods if not name.startswith("_")}
        return ServiceParts(
            [
                Registration(
                    recurring_pb2_grpc.add_RecurringServiceServicer_to_server, servicer, SERVICE_NAME, access
                )
            ]
        )

    return setup


def main() -> None:
    run_service("RECURRING", RecurringSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
