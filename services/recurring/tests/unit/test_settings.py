from datetime import time

import pytest

from billing_common.settings import SettingsError, load_settings
from billing_common.subscriptions import ExhaustedAction
from recurring.entrypoints.main import build
from recurring.settings import RecurringSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECURRING_BILLING_TIME_ZONE", "Mars/Olympus"),
        ("RECURRING_DAILY_RUN_AT", "3 am"),
        # A typo here used to mean "suspend" without a word.
        ("RECURRING_EXHAUSTED_DEFAULT_ACTION", "cancell"),
    ],
)
def test_a_mistyped_setting_stops_the_service_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(RecurringSettings, "RECURRING", {variable: value})


def test_typed_settings_reach_the_service() -> None:
    settings = load_settings(
        RecurringSettings,
        "RECURRING",
        {
            "RECURRING_BILLING_TIME_ZONE": "Europe/Berlin",
            "RECURRING_DAILY_RUN_AT": "04:30",
            "RECURRING_EXHAUSTED_DEFAULT_ACTION": "cancel",
            "RECURRING_EXHAUSTED_CANCEL_MERCHANTS": "m1,m2",
            "RECURRING_PAGE_TOKEN_KEYS": "k" * 32,
        },
    )
    assert settings.exhausted_default_action is ExhaustedAction.CANCEL
    assert settings.daily_run_at == time(4, 30)
    build(settings)


def test_items_must_be_allowed_at_least_one_try() -> None:
    with pytest.raises(SettingsError, match="RECURRING_ITEM_MAX_FAILURES must be at least 1"):
        build(RecurringSettings(item_max_failures=0, page_token_keys=("k" * 32,)))
