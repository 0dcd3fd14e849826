"""Conversions between our plain types and the shared protobuf messages (time, dates, money)."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from billing.common.v1 import common_pb2
from billing_common.money import Money


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: Message, field: str) -> datetime | None:
    return to_datetime(getattr(message, field)) if message.HasField(field) else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(ts: Timestamp, instant: datetime | None) -> None:
    """Set a timestamp field; leaving it unset says "none" (proto3 has no null).

    What `Timestamp.FromDatetime` computes (naive instants are UTC), in a tenth of its time: hot
    paths stamp every answer.
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


def date_pb(day: date) -> common_pb2.Date:
    return common_pb2.Date(year=day.year, month=day.month, day=day.day)


def request_hash(request: Message) -> str:
    """A fingerprint of a request without its idempotency key, to spot a key reused for another request."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
