import enum
from dataclasses import dataclass, field
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing_common.settings import CommonSettings, SettingsError, load_settings
from billing_devtools.testing.processes import settings_env


@dataclass(frozen=True)
class QuotaLikeSettings(CommonSettings):
    hot_keys: tuple[str, ...] = ()
    required_secret: str = ""
    check_schedule: tuple[timedelta, ...] = (timedelta(minutes=5), timedelta(hours=1))


def test_reads_prefixed_variables_with_types() -> None:
    env = {
        "QUOTA_GRPC_PORT": "6000",
        "QUOTA_AUTH_INSECURE": "true",
        "QUOTA_OUTBOX_POLL_INTERVAL": "250ms",
        "QUOTA_HOT_KEYS": "api.calls, seats",
    }
    settings = load_settings(QuotaLikeSettings, "QUOTA", env)
    assert settings.grpc_port == 6000
    assert settings.auth_insecure is True
    assert settings.outbox_poll_interval == timedelta(milliseconds=250)
    assert settings.hot_keys == ("api.calls", "seats")
    assert settings.service_name == "quota"
    assert settings.schema == "quota"
    assert settings.namespace == "quota"


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="QUOTA_GRPC_PORT"):
        load_settings(QuotaLikeSettings, "QUOTA", {"QUOTA_GRPC_PORT": "fifty"})
    with pytest.raises(SettingsError, match="QUOTA_AUTH_INSECURE"):
        load_settings(QuotaLikeSettings, "QUOTA", {"QUOTA_AUTH_INSECURE": "maybe"})


def test_required_field_without_default_is_reported() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Needs(CommonSettings):
        api_key: str

    with pytest.raises(SettingsError, match="X_API_KEY is required"):
        load_settings(Needs, "X", {})


def test_overrides_win_over_environment() -> None:
    settings = load_settings(QuotaLikeSettings, "QUOTA", {"QUOTA_GRPC_PORT": "6000"}, grpc_port=7000)
    assert settings.grpc_port == 7000


def test_settings_written_for_a_child_process_read_back_the_same() -> None:
    settings = load_settings(
        QuotaLikeSettings,
        "QUOTA",
        {
            "QUOTA_HOT_KEYS": "api.calls,seats",
            "QUOTA_CHECK_SCHEDULE": "90s,2h",
            "QUOTA_AUTH_INSECURE": "true",
        },
    )
    assert load_settings(QuotaLikeSettings, "QUOTA", settings_env("QUOTA", settings)) == settings


class Action(enum.StrEnum):
    SUSPEND = "suspend"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Route:
    """A service's own structured setting, parsed through the cast hook."""

    merchant: str
    gateway: str

    @classmethod
    def from_setting(cls, text: str) -> "Route":
        merchant, arrow, gateway = text.partition("->")
        if not arrow:
            raise ValueError("expected merchant->gateway")
        return cls(merchant.strip(), gateway.strip())

    def setting_text(self) -> str:
        return f"{self.merchant}->{self.gateway}"


@dataclass(frozen=True)
class RichSettings(CommonSettings):
    run_at: time = time(3, 1)
    zone: ZoneInfo = ZoneInfo("UTC")
    action: Action = Action.SUSPEND
    limits: dict[str, int] = field(default_factory=dict)
    merchants: frozenset[str] = frozenset()
    route: Route | None = None


def test_every_kind_of_setting_is_parsed_once_at_start() -> None:
    settings = load_settings(
        RichSettings,
        "RECURRING",
        {
            "RECURRING_RUN_AT": "04:30",
            "RECURRING_ZONE": "Europe/Berlin",
            "RECURRING_ACTION": "cancel",
            "RECURRING_LIMITS": "sandbox-card=200, stripe=25",
            "RECURRING_MERCHANTS": "m1,m2",
            "RECURRING_ROUTE": "m1 -> stripe",
        },
    )
    assert settings.run_at == time(4, 30)
    assert settings.zone == ZoneInfo("Europe/Berlin")
    assert settings.action is Action.CANCEL
    assert settings.limits == {"sandbox-card": 200, "stripe": 25}
    assert settings.merchants == frozenset({"m1", "m2"})
    assert settings.route == Route("m1", "stripe")
    assert load_settings(RichSettings, "RECURRING", settings_env("RECURRING", settings)) == settings


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("RECURRING_ACTION", "cancell", "expected one of suspend, cancel"),
        ("RECURRING_RUN_AT", "25:00", "hour must be in 0..23"),
        ("RECURRING_ZONE", "Mars/Olympus", "Mars/Olympus"),
        ("RECURRING_LIMITS", "stripe", "not key=value"),
        ("RECURRING_LIMITS", "stripe=many", "invalid literal"),
        ("RECURRING_LIMITS", "stripe=1,stripe=2", "'stripe' is given twice"),
        ("RECURRING_ROUTE", "m1 stripe", "expected merchant->gateway"),
    ],
)
def test_a_typo_stops_the_service_naming_the_variable(variable: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=variable) as refused:
        load_settings(RichSettings, "RECURRING", {variable: value})
    assert reason in str(refused.value)
