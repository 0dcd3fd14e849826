"""Typed settings read from environment variables with a per-service prefix.

A service declares a frozen dataclass (usually extending `CommonSettings`) and calls
`load_settings(MySettings, "QUOTA")`. Every field `foo_bar` is read from `QUOTA_FOO_BAR`.
A bad or missing value stops the service at start with a message naming the variable.

Every setting is parsed here, once, by its declared type: str, int, bool, durations (`30s`),
times of day (`03:01`), time zones (`Europe/Berlin`), enums (by value), tuples and frozensets
(`a,b`), maps (`a=1,b=2`), and any type with a `from_setting(text)` class method (the cast
hook, for a service's own structured settings). `setting_text` writes a value back.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
from collections.abc import Mapping
from datetime import time, timedelta
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing_common.partitions import TimePartitioned, event_tables

T = TypeVar("T")


class SettingsError(ValueError):
    """Raised when an environment variable cannot be turned into its setting."""


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """What every service needs; services extend it with their own fields."""

    service_name: str = ""
    database_url: str = "postgresql://postgres@127.0.0.1:5432/billing"
    # Superuser DSN used only to provision the service's schema and login roles (development).
    db_admin_url: str = ""
    # The role that owns the schema and runs its migrations. Empty: `database_url`'s role does
    # (development, tests); set: `database_url`'s role only reads and writes rows.
    db_migration_url: str = ""
    # Migrate at start (`make run`, tests); off where a job runs `--migrate-only` first: the
    # service then waits until its schema has every migration it knows.
    migrate_on_start: bool = True
    # How long a migration statement waits for a table lock before it fails (and is run again),
    # rather than hold every query of the running pods queued behind it.
    migration_lock_timeout: timedelta = timedelta(seconds=5)
    db_schema: str = ""
    db_pool_min: int = 1
    db_pool_max: int = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = ""
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_exchange: str = "billing.events"
    amqp_queue_prefix: str = ""
    event_max_retries: int = 5
    event_retry_delay: timedelta = timedelta(seconds=2)
    # Deliveries of one message that never got an answer (its handling killed the pod) before the
    # broker dead-letters it.
    event_delivery_limit: int = 20
    outbox_poll_interval: timedelta = timedelta(milliseconds=200)
    # Relayed outbox rows are kept this long (a day's partition at a time); unrelayed ones always.
    outbox_retention: timedelta = timedelta(days=7)
    # Handled event ids are kept this long after the event occurred (a day's partition at a time);
    # an event from a day already dropped is parked in the dead-letter queue unhandled, as the inbox
    # cannot tell whether it was handled. Keep it above the longest an event may wait in the broker
    # (a backlog, its retries, a dead-letter replay).
    inbox_retention: timedelta = timedelta(days=30)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_shutdown_grace: timedelta = timedelta(seconds=20)
    # Each client connection is closed (GOAWAY) after about this long, so clients resolve the
    # headless Service again and spread their calls over pods the autoscaler added.
    grpc_max_connection_age: timedelta = timedelta(seconds=30)
    metrics_port: int = 9464
    # Public keys (JWKS) that verify callers' tokens: a file, read again when replaced, or the JSON itself.
    auth_jwks: str = ""
    auth_audience: str = "billing"
    auth_issuer: str = "billing-issuer"
    # Longest lifetime (`exp` - `iat`) accepted from services and from people (the roles listed).
    auth_max_token_lifetime: timedelta = timedelta(days=31)
    auth_max_person_token_lifetime: timedelta = timedelta(hours=12)
    auth_person_roles: tuple[str, ...] = ("operator", "finance")
    # This deployment's changes to the allow-lists: `CheckQuota,CheckQuotaBatch+=storefront; SetClock=`.
    auth_access: str = ""
    # Explicit development switch: accept calls without a verified token (logged loudly).
    auth_insecure: bool = False
    # Token this service presents when it calls another: inline, or a file read again when replaced.
    auth_token: str = ""
    auth_token_file: str = ""
    # Keys of the page tokens (billing_common.paging), the same in every pod; the first signs.
    page_token_keys: tuple[str, ...] = ()
    # The suite's test clock (billing_common.suite_clock): every service and pod reads one instant
    # that stands still until AdvanceClock/SetClock move it. Development and tests only: the prod
    # overlay's check refuses it. The Redis key (and channel) is the same for every service.
    test_clock: bool = False
    test_clock_key: str = "billing:test-clock"
    log_level: str = "INFO"
    # A successful call is logged at DEBUG, or at INFO when it took at least this long.
    log_slow_rpc: timedelta = timedelta(milliseconds=500)

    def partitioned_tables(self) -> list[TimePartitioned]:
        """The schema's tables partitioned by time, with their retention; services add theirs."""
        return event_tables(self.outbox_retention, self.inbox_retention)

    @property
    def schema(self) -> str:
        return self.db_schema or self.service_name.replace("-", "_")

    @property
    def namespace(self) -> str:
        """Prefix of this service's Redis keys (`recurring:daily:lock:...`)."""
        return self.redis_namespace or self.service_name

    @property
    def queue_prefix(self) -> str:
        return self.amqp_queue_prefix or self.service_name


def load_settings(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from `<PREFIX>_<FIELD>` variables; keyword overrides win over the environment."""
    env = os.environ if environ is None else environ
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a settings dataclass")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        var = f"{prefix}_{field.name.upper()}"
        raw = env.get(var)
        if raw is None:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SettingsError(f"{var} is required but not set")
            continue
        values[field.name] = _parse(var, raw, hints[field.name])
    if "service_name" in {f.name for f in dataclasses.fields(cls)} and not values.get("service_name"):
        values["service_name"] = prefix.lower()
    return cls(**values)


def _parse(var: str, raw: str, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if raw == "":
            return None
        return _parse(var, raw, inner[0])
    if origin in (list, tuple, frozenset):
        (item,) = get_args(hint)[:1]
        items = [_parse(var, part.strip(), item) for part in raw.split(",") if part.strip()]
        return origin(items)
    if origin is dict:
        key_type, value_type = get_args(hint)
        pairs: dict[Any, Any] = {}
        for part in (p.strip() for p in raw.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{var}={raw!r} is invalid: {part!r} is not key=value")
            name = _parse(var, key.strip(), key_type)
            if name in pairs:
                raise SettingsError(f"{var}={raw!r} is invalid: {key.strip()!r} is given twice")
            pairs[name] = _parse(var, value.strip(), value_type)
        return pairs
    try:
        return _scalar(raw, hint)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise SettingsError(f"{var}={raw!r} is invalid: {exc}") from None
    except TypeError:
        raise SettingsError(f"{var}: unsupported setting type {hint!r}") from None


def _scalar(raw: str, hint: Any) -> Any:
    if hint is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("expected true/false")
    if hint is int:
        return int(raw)
    if hint is str:
        return raw
    if hint is timedelta:
        return parse_duration(raw)
    if hint is time:
        return time.fromisoformat(raw.strip())
    if hint is ZoneInfo:
        if not raw.strip():
            raise ValueError("a time zone name is required")
        return ZoneInfo(raw.strip())
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(raw.strip())
        except ValueError:
            raise ValueError(f"expected one of {', '.join(str(m.value) for m in hint)}") from None
    cast = getattr(hint, "from_setting", None)
    if cast is not None:
        return cast(raw)
    raise TypeError(hint)


def setting_text(value: Any) -> str:
    """The text `load_settings` reads back as `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return f"{value.total_seconds()}s"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, ZoneInfo):
        return value.key
    if isinstance(value, dict):
        return ",".join(f"{setting_text(k)}={setting_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | frozenset):
        return ",".join(setting_text(item) for item in value)
    if hasattr(value, "setting_text"):
        return str(value.setting_text())
    return "" if value is None else str(value)


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> timedelta:
    """Accept `250ms`, `30s`, `5m`, `2h`, `30d`, or plain seconds."""
    text = raw.strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number = text[: -len(unit)]
            return timedelta(seconds=float(number) * _UNITS[unit])
    return timedelta(seconds=float(text))
