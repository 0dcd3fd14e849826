"""Messages to plain values and back, so the console's use cases never see protobuf.

Enums are their short names (`CaseState.CASE_STATE_HELD` -> "HELD"), Timestamps aware datetimes,
`billing.common.v1.Date` dates, Durations timedeltas; int64 stays an int (JSON mapping would make it
a string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
DATE = "billing.common.v1.Date"


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _enum_name(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum))


def _enum_number(enum: EnumDescriptor, name: str) -> int:
    value = enum.values_by_name.get(name) or enum.values_by_name.get(_enum_prefix(enum) + name)
    if value is None:
        raise ValueError(f"{name!r} is not a {enum.name}")
    return int(value.number)


def to_plain(message: Message) -> dict[str, Any]:
    return {field.name: _value(message, field) for field in message.DESCRIPTOR.fields}


def _value(message: Message, field: Any) -> Any:
    value = getattr(message, field.name)
    if field.is_repeated:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return dict(value)
        return [_single(field, item) for item in value]
    if field.message_type is not None and not message.HasField(field.name):
        return None
    return _single(field, value)


def _single(field: Any, value: Any) -> Any:
    if field.enum_type is not None:
        return _enum_name(field.enum_type, value)
    if field.message_type is None:
        return value
    name = field.message_type.full_name
    if name == TIMESTAMP:
        return value.ToDatetime(tzinfo=UTC)
    if name == DURATION:
        return value.ToTimedelta()
    if name == DATE:
        return date(value.year, value.month, value.day) if value.year else None
    return to_plain(value)


def fill(message: Message, values: Mapping[str, Any]) -> Message:
    """Set `values` on `message` (a request), converting plain values to their field types."""
    descriptor: Any = message.DESCRIPTOR
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        if field.message_type is not None:
            _fill_message(getattr(message, name), field, value)
        elif field.enum_type is not None and isinstance(value, str):
            setattr(message, name, _enum_number(field.enum_type, value))
        else:
            setattr(message, name, value)
    return message


def _fill_message(target: Message, field: Any, value: Any) -> None:
    name = field.message_type.full_name
    if name == TIMESTAMP and isinstance(value, datetime):
        target.FromDatetime(value)  # type: ignore[attr-defined]
    elif name == DURATION and isinstance(value, timedelta):
        target.FromTimedelta(value)  # type: ignore[attr-defined]
    elif name == DATE and isinstance(value, date):
        fill(target, {"year": value.year, "month": value.month, "day": value.day})
    else:
        fill(target, value)
