"""GATEWAY_* settings that are checked at start, before the service connects to anything."""

from __future__ import annotations

import pytest

from billing_common.settings import SettingsError, load_settings
from gateway_adapter.domain.limits import LimitError, parse_rate_limits
from gateway_adapter.entrypoints.main import GATEWAYS, build
from gateway_adapter.settings import GatewaySettings


def test_rate_limits_are_read_per_gateway() -> None:
    settings = load_settings(
        GatewaySettings, "GATEWAY", {"GATEWAY_RATE_LIMITS": "sandbox-card=200, stripe = 25,sandbox-ach=0"}
    )

    assert parse_rate_limits(settings.rate_limits, GATEWAYS) == {
        "sandbox-card": 200,
        "stripe": 25,
        "sandbox-ach": 0,
    }
    assert settings.rate_headroom_percent == 5


@pytest.mark.parametrize(
    "entry", ["sandbox-card", "sandbox-card=", "sandbox-card=fast", "sandbox-card=-1", "=5", "paypal=5"]
)
def test_bad_rate_limits_are_refused(entry: str) -> None:
    with pytest.raises(LimitError):
        parse_rate_limits([entry], GATEWAYS)


def test_a_gateway_limited_twice_is_refused() -> None:
    with pytest.raises(LimitError, match="twice"):
        parse_rate_limits(["stripe=5", "stripe=6"], GATEWAYS)


def test_the_service_refuses_to_start_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"GATEWAY_RATE_LIMITS.*paypal"):
        build(GatewaySettings(rate_limits=("paypal=5",)))
    with pytest.raises(SettingsError, match="GATEWAY_RATE_HEADROOM_PERCENT"):
        build(GatewaySettings(rate_headroom_percent=100))
    build(GatewaySettings(rate_limits=("sandbox-card=200",)))
