import pytest

from billing_common.settings import SettingsError
from recurring.entrypoints.main import build
from recurring.settings import RecurringSettings


@pytest.mark.parametrize("percent", [-1, 100])
def test_a_headroom_outside_0_to_99_stops_the_service_naming_the_variable(percent: int) -> None:
    with pytest.raises(SettingsError, match="RECURRING_GATEWAY_RATE_HEADROOM_PERCENT must be from 0 to 99"):
        build(RecurringSettings(gateway_rate_headroom_percent=percent))


def test_a_bad_time_zone_stops_the_service_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="RECURRING_BILLING_TIME_ZONE"):
        build(RecurringSettings(billing_time_zone="Mars/Olympus"))
    build(RecurringSettings(gateway_rate_headroom_percent=99, page_token_keys=("k" * 32,)))


def test_items_must_be_allowed_at_least_one_try() -> None:
    with pytest.raises(SettingsError, match="RECURRING_ITEM_MAX_FAILURES must be at least 1"):
        build(RecurringSettings(item_max_failures=0, page_token_keys=("k" * 32,)))
