"""`make run`: all five services as separate processes against the local servers.

Each gets its own schema and login role (provisioned with the local superuser), its own
gRPC and metrics port, and a shared development signing key; tokens for grpcurl are printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from billing_common import auth, db

DEV_SECRET = os.environ.get("BILLING_DEV_JWT_SECRET", "development-only-signing-key-0123456789")
DEV_PAGE_TOKEN_KEY = os.environ.get("BILLING_DEV_PAGE_TOKEN_KEY", "development-only-page-token-key-012345")
ADMIN_URL = os.environ.get("BILLING_DEV_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVICES = [
    # (service name, env prefix, package, gRPC port, metrics port)
    ("gateway-adapter", "GATEWAY", "gateway_adapter", 50051, 9464),
    ("quota", "QUOTA", "quota", 50052, 9465),
    ("recurring", "RECURRING", "recurring", 50053, 9466),
    ("dunning", "DUNNING", "dunning", 50054, 9467),
    ("tier", "TIER", "tier", 50055, 9468),
]


def service_env(name: str, prefix: str, grpc_port: int, metrics_port: int) -> dict[str, str]:
    role = name.replace("-", "_")
    env = {
        f"{prefix}_SERVICE_NAME": name,
        f"{prefix}_DATABASE_URL": db.dsn_with_user(ADMIN_URL, role),
        f"{prefix}_DB_ADMIN_URL": ADMIN_URL,
        f"{prefix}_DB_SCHEMA": role,
        f"{prefix}_GRPC_HOST": "127.0.0.1",
        f"{prefix}_GRPC_PORT": str(grpc_port),
        f"{prefix}_METRICS_PORT": str(metrics_port),
        f"{prefix}_AUTH_JWT_SECRET": DEV_SECRET,
        f"{prefix}_AUTH_TOKEN": auth.issue_token(DEV_SECRET, name),
        f"{prefix}_PAGE_TOKEN_KEYS": DEV_PAGE_TOKEN_KEY,
    }
    for other, _, _, port, _ in SERVICES:
        env[f"{prefix}_{other.upper().replace('-', '_')}_ADDR"] = f"127.0.0.1:{port}"
    return env


def main() -> None:
    processes: list[subprocess.Popen[bytes]] = []
    for name, prefix, package, grpc_port, metrics_port in SERVICES:
        env = {**os.environ, **service_env(name, prefix, grpc_port, metrics_port)}
        processes.append(subprocess.Popen([sys.executable, "-m", f"{package}.entrypoints.main"], env=env))  # noqa: S603
        print(f"{name:<16} gRPC 127.0.0.1:{grpc_port}   metrics http://127.0.0.1:{metrics_port}/metrics")
    print(f"\noperator token (Authorization: Bearer ...):\n{auth.issue_token(DEV_SECRET, 'operator')}")
    print("\ntry: grpcurl -plaintext 127.0.0.1:50052 grpc.health.v1.Health/Check")
    print("stop with Ctrl-C\n", flush=True)

    def stop(*_: object) -> None:
        for process in processes:
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        stop()
        for process in processes:
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
