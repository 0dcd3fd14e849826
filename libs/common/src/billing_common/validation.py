"""The validation boundary: every request is checked once, at the edge, before any handler.

Rules come from two places. The contracts declare each field's own rules with protovalidate's
`buf.validate` options, so every caller sees them. Beside them, defaults hold for every field of
every request unless its annotation says otherwise:

- strings: at most `DEFAULT_MAX_CHARS` characters (an annotated `max_len`, `len` or `in` replaces
  the bound), no NUL or other control characters, no card number anywhere in them;
- a string field named `currency`, when not empty: an ISO 4217 code in use;
- enums: a value the enum defines (unknown numbers are refused, never ignored);
- Timestamps: within 0001-01-01..9999-12-31, nanos within 0..999,999,999;
- Durations: within protobuf's range (about 10,000 years), nanos of the seconds' sign.

The rules are compiled once per message type into plain checks (protovalidate's own CEL runtime
would cost a hot path such as CheckQuota several times the whole call), and compiling refuses any
`buf.validate` rule this module does not implement, so no annotation is ever silently ignored.
`timestamp.lt_now` is read against the service's injected clock, with `FUTURE_SKEW` of tolerance
for callers' clocks.

A violation names the field path and the rule; it never repeats the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from billing_common.clock import Clock
from billing_common.errors import FieldViolation, InvalidArgument
from billing_common.money import MINOR_DIGITS
from billing_common.pan import contains_card_number
from buf.validate import validate_pb2

DEFAULT_MAX_CHARS = 256
FUTURE_SKEW = timedelta(minutes=5)
TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
DURATION_MAX_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A control character, or enough digits to hold a card number: what needs a closer look.
_SUSPECT = re.compile(r"[\x00-\x1f\x7f-\x9f]|[0-9](?:[^0-9A-Za-z]{0,3}[0-9]){12}")

Violations: TypeAlias = list[FieldViolation]
# A check of one field of a message: (message, path prefix, violations found so far).
FieldCheck: TypeAlias = Callable[[Any, str, Violations], None]
# A check of one value at one path.
ValueCheck: TypeAlias = Callable[[Any, str, Violations], None]


class UnsupportedRule(ValueError):
    """An annotation this validator does not implement: the service refuses to start."""


# What each kind of `buf.validate` rule message may carry here; anything else is refused.
_SUPPORTED: dict[str, frozenset[str]] = {
    "field": frozenset({"required", "ignore"}),
    "string": frozenset({"min_len", "max_len", "len", "pattern", "in", "not_in"}),
    "int32": frozenset({"gt", "gte", "lt", "lte", "in", "not_in"}),
    "int64": frozenset({"gt", "gte", "lt", "lte", "in", "not_in"}),
    "uint32": frozenset({"gt", "gte", "lt", "lte", "in", "not_in"}),
    "uint64": frozenset({"gt", "gte", "lt", "lte", "in", "not_in"}),
    "enum": frozenset({"defined_only", "in", "not_in"}),
    "repeated": frozenset({"min_items", "max_items", "items"}),
    "map": frozenset({"min_pairs", "max_pairs", "keys", "values"}),
    "duration": frozenset({"gt", "gte", "lt", "lte"}),
    "timestamp": frozenset({"gt", "gte", "lt", "lte", "lt_now"}),
}
# Rules of the items of a repeated field and of a map's keys and values: their type's rules only.
_ELEMENT_RULES = frozenset(_SUPPORTED) - {"field", "repeated", "map"}
_RULE_KIND_FOR_TYPE = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_ENUM: "enum",
}


@dataclass
class _Compiled:
    """The checks of one message type; `checks` is filled after creation so types may recurse."""

    checks: list[FieldCheck]

    def run(self, message: Any, prefix: str, out: Violations) -> None:
        for check in self.checks:
            check(message, prefix, out)


def request_types_by_method(service_names: Iterable[str]) -> dict[str, Descriptor]:
    """The request message of every method (`/package.Service/Method`) of the named gRPC services
    that have contracts (a service of raw bytes, such as the benchmarks' echo, has none)."""
    pool = descriptor_pool.Default()
    found: dict[str, Descriptor] = {}
    for name in service_names:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            continue
        for method in service.methods:
            found[f"/{name}/{method.name}"] = method.input_type
    return found


def request_types(service_names: Iterable[str]) -> list[Descriptor]:
    return list(request_types_by_method(service_names).values())


class RequestValidator:
    """Validates requests against their contracts' rules and the defaults, per message type."""

    def __init__(self, clock: Clock, *, future_skew: timedelta = FUTURE_SKEW) -> None:
        self._clock = clock
        self._future_skew = future_skew
        self._compiled: dict[str, _Compiled] = {}
        self._methods: dict[str, _Compiled] = {}

    def prepare(self, descriptors: Iterable[Descriptor]) -> None:
        """Compile at start: a rule this validator does not implement stops the service here."""
        for descriptor in descriptors:
            self._compile(descriptor)

    def prepare_services(self, service_names: Iterable[str]) -> None:
        """Compile the requests of every method of the services, by method path."""
        for method, descriptor in request_types_by_method(service_names).items():
            self._methods[method] = self._compile(descriptor)

    def for_method(self, method: str) -> Callable[[Message], None] | None:
        """The check of one method's requests; None for a method without a contract or rules."""
        compiled = self._methods.get(method)
        if compiled is None or not compiled.checks:
            return None

        checks = compiled.checks

        def check(message: Message) -> None:
            out: Violations = []
            for field_check in checks:
                field_check(message, "", out)
            if out:
                raise InvalidArgument(out)

        return check

    def validate(self, message: Message) -> None:
        """Raise InvalidArgument naming every violated field; return quietly when all is well."""
        descriptor: Any = message.DESCRIPTOR
        compiled = self._compiled.get(descriptor.full_name)
        if compiled is None:
            compiled = self._compile(descriptor)
        if not compiled.checks:
            return
        out: Violations = []
        compiled.run(message, "", out)
        if out:
            raise InvalidArgument(out)

    def violations(self, message: Message) -> list[FieldViolation]:
        try:
            self.validate(message)
        except InvalidArgument as error:
            return error.violations
        return []

    # -- compiling ------------------------------------------------------------------------------

    def _compile(self, descriptor: Descriptor) -> _Compiled:
        known = self._compiled.get(descriptor.full_name)
        if known is not None:
            return known
        compiled = self._compiled[descriptor.full_name] = _Compiled([])
        message_rules = descriptor.GetOptions().Extensions[validate_pb2.message]
        _refuse_unsupported(descriptor.full_name, "message", message_rules, frozenset())
        checks: list[FieldCheck] = []
        for oneof in descriptor.oneofs:
            if oneof.GetOptions().Extensions[validate_pb2.oneof].required:
                checks.append(_required_oneof(oneof.name, [f.name for f in oneof.fields]))
        for field in descriptor.fields:
            check = self._field(field)
            if check is not None:
                checks.append(check)
        compiled.checks.extend(checks)
        return compiled

    def _field(self, field: FieldDescriptor) -> FieldCheck | None:
        where = field.full_name
        rules = field.GetOptions().Extensions[validate_pb2.field]
        _refuse_unsupported(where, "field", rules, _SUPPORTED["field"] | set(_SUPPORTED))
        name = field.name
        plain = field.message_type is None and not field.is_repeated
        if rules.ignore != validate_pb2.IGNORE_UNSPECIFIED and not plain:
            raise UnsupportedRule(f"{where}: ignore is implemented for scalar fields only")
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return self._map(field, rules)
        if field.is_repeated:
            return self._repeated(field, rules)
        value_check = self._value(field, rules, where)
        present_only = field.message_type is not None or (
            field.containing_oneof is not None and field.has_presence
        )
        required = rules.required
        ignore_zero = rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE
        if rules.ignore not in (validate_pb2.IGNORE_UNSPECIFIED, validate_pb2.IGNORE_IF_ZERO_VALUE):
            raise UnsupportedRule(f"{where}: ignore={rules.ignore} is not implemented")
        if present_only:

            def check_present(message: Any, prefix: str, out: Violations) -> None:
                if message.HasField(name):
                    if value_check is not None:
                        value_check(getattr(message, name), prefix + name, out)
                elif required:
                    out.append(FieldViolation(prefix + name, "is required"))

            return check_present if (value_check is not None or required) else None
        if value_check is None and not required:
            return None
        zero = field.default_value

        def check_scalar(message: Any, prefix: str, out: Violations) -> None:
            value = getattr(message, name)
            if value == zero:
                if required:
                    out.append(FieldViolation(prefix + name, "is required"))
                    return
                if ignore_zero:
                    return
            if value_check is not None:
                value_check(value, prefix + name, out)

        return check_scalar

    def _repeated(self, field: FieldDescriptor, rules: Any) -> FieldCheck | None:
        where = field.full_name
        kind = rules.WhichOneof("type")
        if kind not in (None, "repeated"):
            raise UnsupportedRule(f"{where}: {kind} rules on a repeated field")
        repeated = rules.repeated
        _refuse_unsupported(where, "repeated", repeated, _SUPPORTED["repeated"])
        item_rules = repeated.items if repeated.HasField("items") else validate_pb2.FieldRules()
        _refuse_unsupported(where + "[]", "field", item_rules, _ELEMENT_RULES)
        item_check = self._value(field, item_rules, where + "[]")
        low = repeated.min_items if repeated.HasField("min_items") else (1 if rules.required else None)
        high = repeated.max_items if repeated.HasField("max_items") else None
        if item_check is None and low is None and high is None:
            return None
        name = field.name

        def check_repeated(message: Any, prefix: str, out: Violations) -> None:
            values = getattr(message, name)
            path = prefix + name
            if not _within_size(len(values), low, high, path, "item(s)", out):
                return
            if item_check is not None:
                for index, value in enumerate(values):
                    item_check(value, f"{path}[{index}]", out)

        return check_repeated

    def _map(self, field: FieldDescriptor, rules: Any) -> FieldCheck | None:
        where = field.full_name
        kind = rules.WhichOneof("type")
        if kind not in (None, "map"):
            raise UnsupportedRule(f"{where}: {kind} rules on a map field")
        map_rules = rules.map
        _refuse_unsupported(where, "map", map_rules, _SUPPORTED["map"])
        entry = field.message_type
        assert entry is not None
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        key_rules = map_rules.keys if map_rules.HasField("keys") else validate_pb2.FieldRules()
        value_rules = map_rules.values if map_rules.HasField("values") else validate_pb2.FieldRules()
        for part, part_rules in (("keys", key_rules), ("values", value_rules)):
            _refuse_unsupported(f"{where}.{part}", "field", part_rules, _ELEMENT_RULES)
        key_check = self._value(key_field, key_rules, where + ".keys")
        value_check = self._value(value_field, value_rules, where + ".values")
        low = map_rules.min_pairs if map_rules.HasField("min_pairs") else None
        high = map_rules.max_pairs if map_rules.HasField("max_pairs") else None
        name = field.name

        def check_map(message: Any, prefix: str, out: Violations) -> None:
            values = getattr(message, name)
            path = prefix + name
            if not _within_size(len(values), low, high, path, "entries", out):
                return
            for index, (key, value) in enumerate(sorted(values.items())):
                # Keys are the caller's text: the path names the entry by position, not by key.
                if key_check is not None:
                    key_check(key, f"{path}.keys[{index}]", out)
                if value_check is not None:
                    value_check(value, f"{path}.values[{index}]", out)

        return check_map

    def _value(self, field: FieldDescriptor, rules: Any, where: str) -> ValueCheck | None:
        """The check of one value of the field's type (an element, for repeated fields)."""
        kind = rules.WhichOneof("type")
        if field.message_type is not None:
            full_name = field.message_type.full_name
            if full_name == "google.protobuf.Timestamp":
                _expect_kind(where, kind, {None, "timestamp"})
                return self._timestamp(rules.timestamp, where)
            if full_name == "google.protobuf.Duration":
                _expect_kind(where, kind, {None, "duration"})
                return _duration(rules.duration, where)
            _expect_kind(where, kind, {None})
            nested = self._compile(field.message_type)
            return lambda value, path, out: nested.run(value, path + ".", out)
        if field.type == FieldDescriptor.TYPE_STRING:
            _expect_kind(where, kind, {None, "string"})
            return _string(rules.string, where, currency=field.name == "currency")
        if field.type == FieldDescriptor.TYPE_ENUM:
            _expect_kind(where, kind, {None, "enum"})
            assert field.enum_type is not None
            return _enum(field.enum_type, rules.enum, where)
        rule_kind = _RULE_KIND_FOR_TYPE.get(field.type)
        if rule_kind is not None:
            _expect_kind(where, kind, {None, rule_kind})
            return _number(getattr(rules, rule_kind), rule_kind, where) if kind else None
        _expect_kind(where, kind, {None})
        return None

    def _timestamp(self, rules: Any, where: str) -> ValueCheck:
        _refuse_unsupported(where, "timestamp", rules, _SUPPORTED["timestamp"])
        bounds = _range(rules, _seconds, where)
        lt_now = rules.lt_now
        clock, skew = self._clock, self._future_skew

        def check_timestamp(value: Any, path: str, out: Violations) -> None:
            seconds, nanos = value.seconds, value.nanos
            if not (TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS and 0 <= nanos < _NANOS):
                out.append(FieldViolation(path, "must be a time between 0001-01-01 and 9999-12-31 (UTC)"))
                return
            instant = seconds + nanos / _NANOS
            problem = _outside(instant, rules, bounds)
            if problem is not None:
                out.append(FieldViolation(path, problem))
            elif lt_now and instant > ((clock.now() + skew) - _EPOCH).total_seconds():
                out.append(FieldViolation(path, "must not be in the future"))

        return check_timestamp


def _string(rules: Any, where: str, *, currency: bool) -> ValueCheck:
    _refuse_unsupported(where, "string", rules, _SUPPORTED["string"])
    exact = rules.len if rules.HasField("len") else None
    low = rules.min_len if rules.HasField("min_len") else None
    high = rules.max_len if rules.HasField("max_len") else None
    allowed = frozenset(getattr(rules, "in"))
    refused = frozenset(rules.not_in)
    pattern = re.compile(rules.pattern) if rules.HasField("pattern") else None
    if exact is None and high is None and not allowed:
        high = DEFAULT_MAX_CHARS
    suspect, control, card, codes = _SUSPECT.search, _CONTROL.search, contains_card_number, MINOR_DIGITS
    annotated = bool(exact is not None or low is not None or pattern or allowed or refused or currency)

    def check_string(value: str, path: str, out: Violations) -> None:
        size = len(value)
        if high is not None and size > high:
            out.append(FieldViolation(path, f"must be at most {high} characters"))
            return
        if suspect(value) is not None:
            if control(value) is not None:
                out.append(FieldViolation(path, "must not contain NUL or other control characters"))
                return
            if card(value):
                out.append(FieldViolation(path, "must not contain a card number; send a gateway token"))
                return
        if not annotated:
            return
        problem = None
        if exact is not None and size != exact:
            problem = f"must be exactly {exact} characters"
        elif low is not None and size < low:
            problem = "is required" if size == 0 and low == 1 else f"must be at least {low} characters"
        elif pattern is not None and pattern.search(value) is None:
            problem = f"must match {pattern.pattern}"
        elif allowed and value not in allowed:
            problem = f"must be one of {', '.join(sorted(allowed))}"
        elif value in refused:
            problem = "is not allowed here"
        elif currency and value and value not in codes:
            problem = "must be an ISO 4217 currency code in use, upper case"
        if problem is not None:
            out.append(FieldViolation(path, problem))

    return check_string


def _enum(enum: EnumDescriptor, rules: Any, where: str) -> ValueCheck:
    _refuse_unsupported(where, "enum", rules, _SUPPORTED["enum"])
    defined = frozenset(enum.values_by_number)
    allowed = frozenset(getattr(rules, "in"))
    refused = frozenset(rules.not_in)
    name = enum.name

    def check_enum(value: int, path: str, out: Violations) -> None:
        if value not in defined:
            out.append(FieldViolation(path, f"must be a value {name} defines"))
        elif (allowed and value not in allowed) or value in refused:
            out.append(FieldViolation(path, f"{enum.values_by_number[value].name} is not allowed here"))

    return check_enum


def _number(rules: Any, kind: str, where: str) -> ValueCheck:
    _refuse_unsupported(where, kind, rules, _SUPPORTED[kind])
    low, low_text, high, high_text = _range(rules, lambda bound: bound, where)
    above, below = _open_bound(rules, "gt"), _open_bound(rules, "lt")
    allowed = frozenset(getattr(rules, "in"))
    refused = frozenset(rules.not_in)

    def check_number(value: int, path: str, out: Violations) -> None:
        if low is not None and (value <= low if above else value < low):
            out.append(FieldViolation(path, low_text))
        elif high is not None and (value >= high if below else value > high):
            out.append(FieldViolation(path, high_text))
        elif (allowed and value not in allowed) or value in refused:
            out.append(FieldViolation(path, "is not an allowed value"))

    return check_number


def _duration(rules: Any, where: str) -> ValueCheck:
    _refuse_unsupported(where, "duration", rules, _SUPPORTED["duration"])
    bounds = _range(rules, _seconds, where)

    def check_duration(value: Any, path: str, out: Violations) -> None:
        seconds, nanos = value.seconds, value.nanos
        if not (
            -DURATION_MAX_SECONDS <= seconds <= DURATION_MAX_SECONDS
            and -_NANOS < nanos < _NANOS
            and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
        ):
            out.append(FieldViolation(path, "must be a valid duration (at most 10,000 years)"))
            return
        problem = _outside(seconds + nanos / _NANOS, rules, bounds)
        if problem is not None:
            out.append(FieldViolation(path, problem))

    return check_duration


def _open_bound(rules: Any, name: str) -> bool:
    """Whether the rules' lower (`gt`) or upper (`lt`) bound excludes the bound itself."""
    return bool(rules.HasField(name))


def _range(rules: Any, convert: Callable[[Any], Any], where: str) -> tuple[Any, str, Any, str]:
    """The bounds of gt/gte/lt/lte with the violation text of each; an inverted range (which
    protovalidate reads as 'outside') is refused."""
    low: Any = None
    high: Any = None
    low_text = high_text = ""
    if rules.HasField("gt"):
        low, low_text = convert(rules.gt), f"must be greater than {_show(rules.gt)}"
    elif rules.HasField("gte"):
        low = convert(rules.gte)
        low_text = "must not be negative" if low == 0 else f"must be at least {_show(rules.gte)}"
    if rules.HasField("lt"):
        high, high_text = convert(rules.lt), f"must be less than {_show(rules.lt)}"
    elif rules.HasField("lte"):
        high, high_text = convert(rules.lte), f"must be at most {_show(rules.lte)}"
    if low is not None and high is not None and high < low:
        raise UnsupportedRule(f"{where}: an excluding range (lower bound above the upper one)")
    return low, low_text, high, high_text


def _outside(value: float, rules: Any, bounds: tuple[Any, str, Any, str]) -> str | None:
    low, low_text, high, high_text = bounds
    if low is not None and (value <= low if rules.HasField("gt") else value < low):
        return low_text
    if high is not None and (value >= high if rules.HasField("lt") else value > high):
        return high_text
    return None


def _seconds(value: Any) -> float:
    """A Timestamp's seconds since the epoch, or a Duration's length, in seconds."""
    return float(value.seconds + value.nanos / _NANOS)


def _show(bound: Any) -> str:
    if isinstance(bound, Message):
        if bound.DESCRIPTOR.full_name == "google.protobuf.Duration":
            return f"{_seconds(bound):g}s"
        return datetime.fromtimestamp(_seconds(bound), UTC).isoformat()
    return str(bound)


def _required_oneof(name: str, members: list[str]) -> FieldCheck:
    description = f"is required: {' or '.join(members)}"

    def check_oneof(message: Any, prefix: str, out: Violations) -> None:
        if message.WhichOneof(name) is None:
            out.append(FieldViolation(prefix + name, description))

    return check_oneof


def _expect_kind(where: str, kind: str | None, expected: set[str | None]) -> None:
    if kind not in expected:
        raise UnsupportedRule(f"{where}: {kind} rules do not apply to this field's type")


def _within_size(size: int, low: int | None, high: int | None, path: str, unit: str, out: Violations) -> bool:
    """Record a count outside [low, high]; False when there are too many to look at each one."""
    if low is not None and size < low:
        out.append(FieldViolation(path, f"must contain at least {low} {unit}"))
    if high is not None and size > high:
        out.append(FieldViolation(path, f"must contain at most {high} {unit}"))
        return False
    return True


def _refuse_unsupported(where: str, kind: str, rules: Any, supported: Iterable[str]) -> None:
    allowed = set(supported)
    for descriptor, _ in rules.ListFields():
        if descriptor.is_extension or descriptor.name not in allowed:
            raise UnsupportedRule(
                f"{where}: the rule {kind}.{descriptor.name} is not implemented by the validation boundary"
            )
