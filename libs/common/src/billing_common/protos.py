"""Conversions between our plain types and the shared protobuf messages (time, dates, money, enums)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from billing.common.v1 import common_pb2
from billing.events.v1 import dunning_pb2, subscription_pb2
from billing.gateway.v1 import gateway_pb2
from billing_common.errors import InvalidArgument
from billing_common.money import CurrencyError, Money
from billing_common.payments import DeclineKind, FailureType, MethodType
from billing_common.subscriptions import ExhaustedAction, Frequency, SubscriptionStatus
from billing_common.tiers import Tier

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

E = TypeVar("E", bound=Enum)
V = TypeVar("V", bound=int)
D = TypeVar("D")


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: Message, field: str) -> datetime | None:
    return to_datetime(getattr(message, field)) if message.HasField(field) else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(ts: Timestamp, instant: datetime | None) -> None:
    """Set a timestamp field; leaving it unset says "none" (proto3 has no null).

    What `Timestamp.FromDatetime` computes (naive instants are UTC) without its conversions through
    calendar arithmetic: hot paths stamp every answer.
    """
    if instant is None:
        return
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    since = instant - _EPOCH
    ts.seconds = since.days * 86_400 + since.seconds
    ts.nanos = since.microseconds * 1_000


def money_pb(money: Money) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=money.amount_minor, currency=money.currency)


def money_of(message: common_pb2.Money, field: str = "") -> Money:
    """A message's amount. In a request (`field` named), an unknown currency is INVALID_ARGUMENT naming
    `<field>.currency`; in an event or another service's answer, the producer's fault (CurrencyError)."""
    if not field:
        return Money(message.amount_minor, message.currency)
    try:
        return Money(message.amount_minor, message.currency)
    except CurrencyError as error:
        raise InvalidArgument.of(f"{field}.currency", str(error)) from None


def date_pb(day: date) -> common_pb2.Date:
    return common_pb2.Date(year=day.year, month=day.month, day=day.day)


def request_hash(request: Message) -> str:
    """A fingerprint of a request without its idempotency key, to spot a key reused for another request."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


class ProtoEnum(Generic[E, V]):
    """One of our enums and a contract's enum, matched once by member name: `Status.SETTLED` is
    `PAYMENT_STATUS_SETTLED`. A member the contract lacks stops the import, so no hand-written table
    can forget one; `names` gives the contract's name where ours differs (several members may share
    one; the member named like it is the one read back)."""

    def __init__(
        self, ours: type[E], theirs: _EnumTypeWrapper[V], prefix: str, names: Mapping[E, str] | None = None
    ) -> None:
        renamed = names or {}
        self._numbers: dict[E, V] = {m: theirs.Value(prefix + renamed.get(m, m.name)) for m in ours}
        self._members: dict[int, E] = {}
        for member, number in sorted(self._numbers.items(), key=lambda item: item[0] in renamed):
            self._members.setdefault(number, member)
        self._what = ours.__name__

    def pb(self, member: E) -> V:
        return self._numbers[member]

    def ours(self, number: int) -> E:
        """The member of a contract value; a value we have no member for (UNSPECIFIED, or a newer
        contract's) is a ValueError."""
        try:
            return self._members[number]
        except KeyError:
            raise ValueError(f"no {self._what} for contract value {number}") from None

    def get(self, number: int, default: D) -> E | D:
        return self._members.get(number, default)


FREQUENCIES = ProtoEnum(Frequency, common_pb2.BillingFrequency, "BILLING_FREQUENCY_")
SUBSCRIPTION_STATES = ProtoEnum(SubscriptionStatus, subscription_pb2.SubscriptionState, "SUBSCRIPTION_STATE_")
TIERS = ProtoEnum(Tier, common_pb2.Tier, "TIER_")
FAILURE_TYPES = ProtoEnum(FailureType, common_pb2.FailureType, "FAILURE_TYPE_")
DECLINE_KINDS = ProtoEnum(DeclineKind, common_pb2.DeclineKind, "DECLINE_KIND_")
METHOD_TYPES = ProtoEnum(MethodType, common_pb2.PaymentMethodType, "PAYMENT_METHOD_TYPE_")
EXHAUSTED_ACTIONS = ProtoEnum(ExhaustedAction, dunning_pb2.ExhaustedAction, "EXHAUSTED_ACTION_")

# google.rpc.Code numbers, as a batch answer gives a status per item (quota's usage summaries).
STATUS_CODES: Mapping[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
# The status Charge answers with for each refusal ChargeBatch gives per charge, as the contract's
# ChargeRefusal says (gateway-adapter's tests hold its encoding of refusals to it).
CHARGE_REFUSAL_CODES: Mapping[int, grpc.StatusCode] = {
    gateway_pb2.CHARGE_REFUSAL_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    gateway_pb2.CHARGE_REFUSAL_KEY_REUSED: grpc.StatusCode.FAILED_PRECONDITION,
    gateway_pb2.CHARGE_REFUSAL_IN_PROGRESS: grpc.StatusCode.UNAVAILABLE,
    gateway_pb2.CHARGE_REFUSAL_BACK_PRESSURE: grpc.StatusCode.UNAVAILABLE,
}
