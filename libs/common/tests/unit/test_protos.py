from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from billing.common.v1 import common_pb2
from billing.events.v1 import dunning_pb2, subscription_pb2
from billing_common.errors import InvalidArgument
from billing_common.money import CurrencyError, Money
from billing_common.payments import DeclineKind, FailureType
from billing_common.protos import (
    DECLINE_KINDS,
    EXHAUSTED_ACTIONS,
    FAILURE_TYPES,
    FREQUENCIES,
    SUBSCRIPTION_STATES,
    TIERS,
    ProtoEnum,
    money_of,
    money_pb,
    stamp,
)
from billing_common.subscriptions import ExhaustedAction, Frequency, SubscriptionStatus
from billing_common.tiers import Tier

OFFSETS = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), OFFSETS)
def test_stamp_sets_what_from_datetime_sets(instant: datetime, offset: timezone | None) -> None:
    if offset is not None:
        instant = instant.replace(tzinfo=offset)
    expected, stamped = Timestamp(), Timestamp()
    expected.FromDatetime(instant)
    stamp(stamped, instant)
    assert (stamped.seconds, stamped.nanos) == (expected.seconds, expected.nanos)


def test_stamp_of_no_instant_changes_nothing() -> None:
    ts = Timestamp(seconds=5)
    stamp(ts, None)
    assert ts.seconds == 5


def test_every_failure_word_we_share_round_trips_through_the_contract_by_name() -> None:
    assert FAILURE_TYPES.pb(FailureType.GATEWAY_UNREACHABLE) == common_pb2.FAILURE_TYPE_GATEWAY_UNREACHABLE
    assert [FAILURE_TYPES.ours(FAILURE_TYPES.pb(t)) for t in FailureType] == list(FailureType)
    assert [DECLINE_KINDS.ours(DECLINE_KINDS.pb(k)) for k in DeclineKind] == list(DeclineKind)


class Colour(StrEnum):
    LITE = "lite"
    PRO = "pro"
    TEAL = "teal"


def test_a_member_the_contract_lacks_stops_the_mapping_from_being_built() -> None:
    with pytest.raises(ValueError, match="TIER_TEAL"):
        ProtoEnum(Colour, common_pb2.Tier, "TIER_")


def test_a_contract_value_without_a_member_is_refused_or_takes_the_default() -> None:
    class Known(StrEnum):
        PRO = "pro"
        BEST = "best"

    tiers = ProtoEnum(Known, common_pb2.Tier, "TIER_", names={Known.BEST: "PRO"})
    assert tiers.pb(Known.BEST) == common_pb2.TIER_PRO
    assert tiers.ours(common_pb2.TIER_PRO) is Known.PRO  # the member named like the value is read back
    with pytest.raises(ValueError, match="no Known for contract value"):
        tiers.ours(common_pb2.TIER_LITE)
    assert tiers.get(common_pb2.TIER_UNSPECIFIED, Known.PRO) is Known.PRO


def test_the_subscription_words_recurring_and_quota_share_round_trip_through_the_contracts_by_name() -> None:
    for frequency in Frequency:
        assert FREQUENCIES.ours(FREQUENCIES.pb(frequency)) is frequency
    assert FREQUENCIES.pb(Frequency.FOUR_WEEKLY) == common_pb2.BILLING_FREQUENCY_FOUR_WEEKLY
    for status in SubscriptionStatus:
        assert SUBSCRIPTION_STATES.ours(SUBSCRIPTION_STATES.pb(status)) is status
    assert SUBSCRIPTION_STATES.pb(SubscriptionStatus.PAST_DUE) == subscription_pb2.SUBSCRIPTION_STATE_PAST_DUE
    assert FREQUENCIES.get(common_pb2.BILLING_FREQUENCY_UNSPECIFIED, None) is None
    for tier in Tier:
        assert TIERS.ours(TIERS.pb(tier)) is tier
    assert TIERS.pb(Tier.PLUS) == common_pb2.TIER_PLUS
    assert TIERS.get(common_pb2.TIER_UNSPECIFIED, None) is None
    for action in ExhaustedAction:
        assert EXHAUSTED_ACTIONS.ours(EXHAUSTED_ACTIONS.pb(action)) is action
    assert EXHAUSTED_ACTIONS.get(dunning_pb2.EXHAUSTED_ACTION_UNSPECIFIED, None) is None


def test_money_of_a_request_names_the_field_and_of_another_services_message_blames_the_producer() -> None:
    assert money_of(common_pb2.Money(amount_minor=1250, currency="EUR")) == Money(1250, "EUR")
    assert money_of(common_pb2.Money(amount_minor=5, currency="JPY"), "amount") == Money(5, "JPY")
    bad = common_pb2.Money(amount_minor=100, currency="XXQ")
    with pytest.raises(InvalidArgument, match=r"amount\.currency"):
        money_of(bad, "amount")
    with pytest.raises(CurrencyError):
        money_of(bad)
    assert money_pb(Money(1250, "EUR")) == common_pb2.Money(amount_minor=1250, currency="EUR")
