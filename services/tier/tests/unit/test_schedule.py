from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_common.settings import SettingsError, load_settings
from tier.domain.scans import (
    Cron,
    Scan,
    ScanKind,
    ScanState,
    latest_fires,
    next_fire,
    next_fires,
    schedule_key,
)
from tier.settings import TierSettings

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(instants)
def test_hourly_fires_at_the_next_full_hour(at: datetime) -> None:
    fire = next_fire("0 * * * *", at)
    assert fire > at and (fire.minute, fire.second) == (0, 0)
    assert (fire - at).total_seconds() <= 3600


def test_kinds_due_at_the_same_instant_fire_together() -> None:
    at = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
    schedules = {ScanKind.FULL: "0 * * * *", ScanKind.SSO: "*/30 * * * *", ScanKind.API: "0 */2 * * *"}
    assert next_fires(schedules, at) == (datetime(2026, 3, 1, 10, 30, tzinfo=UTC), [ScanKind.SSO])
    fire, kinds = next_fires(schedules, datetime(2026, 3, 1, 11, 45, tzinfo=UTC)) or (None, [])
    assert fire == datetime(2026, 3, 1, 12, 0, tzinfo=UTC) and set(kinds) == set(ScanKind)
    assert next_fires({}, at) is None


def test_a_scheduled_fire_has_one_key_everywhere() -> None:
    fire = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert schedule_key(ScanKind.FULL, fire) == "schedule:full:2026-03-01T12:00:00+00:00"


def test_a_schedule_that_is_not_cron_stops_the_service_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="TIER_SCAN_SCHEDULE_SSO='every hour' is invalid"):
        load_settings(TierSettings, "TIER", {"TIER_SCAN_SCHEDULE_SSO": "every hour"})
    settings = load_settings(
        TierSettings, "TIER", {"TIER_SCAN_SCHEDULE_SSO": "", "TIER_SCAN_SCHEDULE_API": "*/5 * * * *"}
    )
    assert settings.scan_schedule_sso is None
    assert settings.scan_schedule_api == Cron("*/5 * * * *")


def test_duration_needs_both_ends() -> None:
    queued = datetime(2026, 3, 1, tzinfo=UTC)
    scan = Scan("s", ScanKind.FULL, "schedule", ScanState.QUEUED, queued)
    assert scan.duration_ms == 0
    done = Scan("s", ScanKind.FULL, "schedule", ScanState.COMPLETED, queued, queued, queued.replace(second=2))
    assert done.duration_ms == 2000


@settings(deadline=None)  # a week of hourly fires is a few hundred cron steps
@given(instants, st.integers(min_value=0, max_value=30 * 24 * 60))
def test_fires_missed_over_any_jump_are_one_scan_per_kind_at_its_latest_fire(
    after: datetime, minutes: int
) -> None:
    schedules = {ScanKind.FULL: "0 * * * *", ScanKind.SSO: "20 * * * *", ScanKind.API: "40 * * * *"}
    now = after + timedelta(minutes=minutes)
    found = latest_fires(schedules, after, now, timedelta(days=7))
    for kind, expression in schedules.items():
        if kind in found:
            assert after < found[kind] <= now
            assert next_fire(expression, found[kind]) > now  # none later was left out
        else:
            assert next_fire(expression, after) > now  # nothing of this kind came due
