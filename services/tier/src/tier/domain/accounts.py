"""The account hierarchy: distributors, end users and their databases (sites), and capability signals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class AccountKind(StrEnum):
    DISTRIBUTOR = "distributor"
    END_USER = "end_user"
    DATABASE = "database"


class InventoryMode(StrEnum):
    NONE = "none"
    BASIC = "basic"
    ADVANCED = "advanced"


class BilledBy(StrEnum):
    """Who pays for an end user: itself through a direct account, a reseller, or itself standalone."""

    DIRECT = "direct"
    DISTRIBUTOR = "distributor"
    STANDALONE = "standalone"


class SignalKind(StrEnum):
    SSO_ACTIVE = "sso_active"
    API_CLIENTS_ACTIVE = "api_clients_active"
    INVENTORY_MODE = "inventory_mode"


@dataclass(frozen=True, slots=True)
class Distributor:
    distributor_id: str
    name: str
    # A direct customer is billed itself; a distributor is billed for its end users.
    direct: bool
    active: bool


@dataclass(frozen=True, slots=True)
class EndUser:
    end_user_id: str
    distributor_id: str  # "" for a standalone end user
    name: str
    active: bool


@dataclass(frozen=True, slots=True)
class Database:
    database_id: str
    end_user_id: str
    company_name: str
    schema_name: str
    inventory_mode: InventoryMode
    sso_access: bool
    rest_api_access: bool
    active: bool


@dataclass(frozen=True, slots=True)
class Signal:
    """One observation of a capability of an account (an end user or a database)."""

    account_id: str
    kind: SignalKind
    value: str
    source: str
    observed_at: datetime


def normalize_signal_value(kind: SignalKind, raw: str) -> str:
    """The canonical text of a signal value; ValueError says why a value is not acceptable."""
    text = raw.strip().lower()
    if kind is SignalKind.SSO_ACTIVE:
        if text not in ("true", "false"):
            raise ValueError('must be "true" or "false"')
        return text
    if kind is SignalKind.API_CLIENTS_ACTIVE:
        if not text.isdigit():
            raise ValueError("must be a count of active API clients (0 or more)")
        return str(int(text))
    if text not in {mode.value for mode in InventoryMode}:
        raise ValueError('must be "none", "basic" or "advanced"')
    return text
