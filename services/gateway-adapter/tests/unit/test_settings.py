"""GATEWAY_* settings that are checked at start, before the service connects to anything."""

from __future__ import annotations

import pytest

from billing_common.settings import SettingsError, load_settings
from gateway_adapter.entrypoints.main import build
from gateway_adapter.settings import GatewaySettings


def test_rate_limits_are_read_per_gateway() -> None:
    settings = load_settings(
        GatewaySettings, "GATEWAY", {"GATEWAY_RATE_LIMITS": "sandbox-card=200, stripe = 25,sandbox-ach=0"}
    )

    assert settings.rate_limits == {"sandbox-card": 200, "stripe": 25, "sandbox-ach": 0}
    assert settings.rate_headroom_percent == 2
    build(settings)


@pytest.mark.parametrize(
    "entry",
    [
        "sandbox-card",
        "sandbox-card=",
        "sandbox-card=fast",
        "sandbox-card=-1",
        "=5",
        "paypal=5",
        "stripe=5,stripe=6",
    ],
)
def test_bad_rate_limits_stop_the_service_naming_the_variable(entry: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_RATE_LIMITS"):
        build(load_settings(GatewaySettings, "GATEWAY", {"GATEWAY_RATE_LIMITS": entry}))


@pytest.mark.parametrize("percent", [0, 100, -1])
def test_a_bad_headroom_stops_the_service_naming_the_variable(percent: int) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_RATE_HEADROOM_PERCENT"):
        build(GatewaySettings(rate_headroom_percent=percent))


def test_a_stripe_credentials_ref_without_its_key_stops_the_service() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_STRIPE_API_KEYS"):
        build(load_settings(GatewaySettings, "GATEWAY", {"GATEWAY_STRIPE_API_KEYS": "default="}))
