"""The suite's one list of services, services.toml at the repository's top: a service is its
folder plus its entry there. `make run`, the import contracts, the Kubernetes checks and the
suite's tests read it from here."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

SERVICE_LIST = Path(__file__).resolve().parents[4] / "services.toml"
Listed = tuple[str, str, str, int, int]  # (service name, env prefix, package, port, metrics port)


def _entry(entry: dict[str, Any]) -> Listed:
    return (entry["name"], entry["prefix"], entry["package"], entry["port"], entry["metrics_port"])


def read_list(path: Path = SERVICE_LIST) -> dict[str, Any]:
    """The list as written: `grpc` (a table per gRPC service) and `web` (the console)."""
    return tomllib.loads(path.read_text(encoding="utf-8"))


_LISTED = read_list()
# The gRPC services, and the stub class of each (`module:Class`) for tests that call them.
SERVICES: list[Listed] = [_entry(entry) for entry in _LISTED["grpc"]]
STUBS: dict[str, str] = {entry["name"]: entry["stub"] for entry in _LISTED["grpc"]}
# The web console: its port is HTTP; no database of its own.
CONSOLE: Listed = _entry(_LISTED["web"])
# Every package the suite runs, the console's last.
PACKAGES: list[str] = [package for _, _, package, _, _ in [*SERVICES, CONSOLE]]


def package_of(name: str) -> str:
    """The package of the service `name` (deploy/docker/Dockerfile's SERVICE build argument)."""
    for service, _, package, _, _ in [*SERVICES, CONSOLE]:
        if service == name:
            return package
    listed = ", ".join(service for service, *_ in [*SERVICES, CONSOLE])
    raise SystemExit(f"{name!r} is not a service of services.toml: one of {listed}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m billing_devtools.services <service name>")
    print(package_of(sys.argv[1]))
