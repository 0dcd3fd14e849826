from dataclasses import dataclass
from datetime import timedelta

import pytest

from billing_common.settings import CommonSettings, SettingsError, load_settings
from billing_common.testing.processes import settings_env


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
