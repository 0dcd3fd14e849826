"""A Redis Cluster of three primaries that a test starts for itself, on free ports, and stops after."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

NODES = 3
BUS_PORT_OFFSET = 10_000  # Redis Cluster talks to its peers on port + 10000
START_TIMEOUT_S = 30.0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_node_port() -> int:
    """A free port whose cluster bus port is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + BUS_PORT_OFFSET < 65_536 and _free(port + BUS_PORT_OFFSET):
            return port


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout


def _wait_until(ready: object, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test's Redis Cluster did not become ready: {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[list[int]]:
    """Three `redis-server --cluster-enabled yes` without persistence, joined with all 16384 slots
    spread over them (no replicas); yields their ports."""
    ports = [_free_node_port() for _ in range(NODES)]
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            options = {
                "port": str(port),
                "bind": "127.0.0.1",
                "cluster-enabled": "yes",
                "cluster-config-file": f"nodes-{port}.conf",
                "cluster-node-timeout": "5000",
                "save": "",
                "appendonly": "no",
                "dir": str(directory),
            }
            arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
            servers.append(
                subprocess.Popen(
                    ["redis-server", *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in ports:
            _wait_until(lambda port=port: _cli(port, "PING").strip() == "PONG", f"node {port} answers")
        nodes = [f"127.0.0.1:{port}" for port in ports]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        for port in ports:
            _wait_until(
                lambda port=port: "cluster_state:ok" in _cli(port, "CLUSTER", "INFO"), f"node {port} is ok"
            )
        yield ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
