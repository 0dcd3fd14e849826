"""Settings of the gateway-adapter service, read from GATEWAY_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    pass
