"""Settings of the console, read from CONSOLE_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class ConsoleSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    gateway_adapter_addr: str = "gateway-adapter:50051"
    quota_addr: str = "quota:50051"
    recurring_addr: str = "recurring:50051"
    dunning_addr: str = "dunning:50051"
    tier_addr: str = "tier:50051"
    rpc_timeout: timedelta = timedelta(seconds=10)
    # The longest a cached answer is shown; events usually drop it sooner.
    cache_ttl: timedelta = timedelta(seconds=60)
    # A session ends after this long idle, and at the latest this long after sign-in.
    session_idle: timedelta = timedelta(minutes=30)
    session_longest: timedelta = timedelta(hours=8)
    # `<name> <operator|finance> <scrypt hash>` per line (`python -m console.entrypoints.passwords`).
    users_file: str = "/etc/console/users"
    # Cookies only over HTTPS; off for `make run` on plain loopback HTTP.
    cookie_secure: bool = True
    dead_letter_queues: tuple[str, ...] = ("quota.events.dlq", "recurring.events.dlq", "dunning.events.dlq")
    # Gateways whose circuit breakers the overview shows, for each merchant seen.
    gateways: tuple[str, ...] = ("sandbox-card", "sandbox-ach", "stripe")
