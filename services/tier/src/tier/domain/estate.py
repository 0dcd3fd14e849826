"""The assembled hierarchy in memory: every account, signal and current tier, with lookups by id.

Built once from the store and kept current by upserts, signals and scans, so that reads and scans
never walk the database again; children are indexed by parent, so nothing is O(n²).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from tier.domain.accounts import (
    AccountKind,
    BilledBy,
    Database,
    Distributor,
    EndUser,
    InventoryMode,
    Signal,
    SignalKind,
)
from tier.domain.rollup import roll_up, roll_up_counts
from tier.domain.rules import Evaluator, Facts, TierDecision


@dataclass(frozen=True, slots=True)
class TierRecord:
    """An account's current tier as last recorded in the history."""

    kind: AccountKind
    decision: TierDecision
    since: datetime
    change_id: int


class Estate:
    def __init__(self) -> None:
        self.distributors: dict[str, Distributor] = {}
        self.end_users: dict[str, EndUser] = {}
        self.databases: dict[str, Database] = {}
        self.end_users_of: dict[str, set[str]] = {}
        self.databases_of: dict[str, set[str]] = {}
        self.signals: dict[str, dict[SignalKind, Signal]] = {}
        self.tiers: dict[str, TierRecord] = {}
        # The highest store revision merged into this model (see the store's refresh).
        self.revision = 0

    @property
    def size(self) -> int:
        return len(self.distributors) + len(self.end_users) + len(self.databases)

    def kind_of(self, account_id: str) -> AccountKind | None:
        if account_id in self.databases:
            return AccountKind.DATABASE
        if account_id in self.end_users:
            return AccountKind.END_USER
        if account_id in self.distributors:
            return AccountKind.DISTRIBUTOR
        return None

    # ------------------------------------------------------------------ changes

    def put_distributor(self, distributor: Distributor) -> None:
        self.distributors[distributor.distributor_id] = distributor

    def put_end_user(self, end_user: EndUser) -> None:
        earlier = self.end_users.get(end_user.end_user_id)
        if earlier is not None and earlier.distributor_id != end_user.distributor_id:
            self.end_users_of.get(earlier.distributor_id, set()).discard(end_user.end_user_id)
        self.end_users[end_user.end_user_id] = end_user
        if end_user.distributor_id:
            self.end_users_of.setdefault(end_user.distributor_id, set()).add(end_user.end_user_id)

    def put_database(self, database: Database) -> None:
        earlier = self.databases.get(database.database_id)
        if earlier is not None and earlier.end_user_id != database.end_user_id:
            self.databases_of.get(earlier.end_user_id, set()).discard(database.database_id)
        self.databases[database.database_id] = database
        self.databases_of.setdefault(database.end_user_id, set()).add(database.database_id)

    def put_signal(self, signal: Signal) -> bool:
        """Keep the newest observation per account and kind; False for an older (stale) one."""
        held = self.signals.setdefault(signal.account_id, {})
        current = held.get(signal.kind)
        if current is not None and current.observed_at > signal.observed_at:
            return False
        held[signal.kind] = signal
        return True

    def put_tier(self, account_id: str, record: TierRecord) -> None:
        self.tiers[account_id] = record

    # ------------------------------------------------------------------ questions

    def signal_value(self, account_id: str, kind: SignalKind) -> str | None:
        held = self.signals.get(account_id)
        if held is None:
            return None
        signal = held.get(kind)
        return None if signal is None else signal.value

    def billed_by(self, end_user: EndUser) -> BilledBy:
        if not end_user.distributor_id:
            return BilledBy.STANDALONE
        distributor = self.distributors.get(end_user.distributor_id)
        return BilledBy.DIRECT if distributor is not None and distributor.direct else BilledBy.DISTRIBUTOR

    def billed_account(self, account_id: str) -> str:
        """The account an invoice goes to: the distributor above, else the (standalone) end user."""
        if account_id in self.distributors:
            return account_id
        database = self.databases.get(account_id)
        end_user = self.end_users.get(database.end_user_id if database else account_id)
        if end_user is None:
            return account_id
        return end_user.distributor_id or end_user.end_user_id

    def is_live(self, account_id: str) -> bool:
        """Active, and so is every account above it: only live accounts are evaluated and billed."""
        database = self.databases.get(account_id)
        if database is not None:
            return database.active and self.is_live(database.end_user_id)
        end_user = self.end_users.get(account_id)
        if end_user is not None:
            return end_user.active and (not end_user.distributor_id or self.is_live(end_user.distributor_id))
        distributor = self.distributors.get(account_id)
        return distributor is not None and distributor.active

    def facts(self, database: Database, end_user: EndUser, billed_by: BilledBy) -> Facts:
        """Signals of the database itself and of its organization (the end user) both count."""
        own = self.signals.get(database.database_id, {})
        org = self.signals.get(end_user.end_user_id, {})
        sso = _is_true(own.get(SignalKind.SSO_ACTIVE)) or _is_true(org.get(SignalKind.SSO_ACTIVE))
        api = max(
            _count(own.get(SignalKind.API_CLIENTS_ACTIVE)), _count(org.get(SignalKind.API_CLIENTS_ACTIVE))
        )
        inventory = own.get(SignalKind.INVENTORY_MODE)
        mode = InventoryMode(inventory.value) if inventory is not None else database.inventory_mode
        return Facts(database.sso_access, sso, database.rest_api_access, api, mode, billed_by)


def _is_true(signal: Signal | None) -> bool:
    return signal is not None and signal.value == "true"


def _count(signal: Signal | None) -> int:
    return int(signal.value) if signal is not None else 0


@dataclass(frozen=True, slots=True)
class PlannedChange:
    """An account whose decided tier differs from its recorded one (or that has none yet)."""

    account_id: str
    kind: AccountKind
    previous: TierRecord | None
    decision: TierDecision
    billed_account_id: str


class ScanPlan:
    """Evaluates every live account once, databases first, then rolls up, and lists the changes.

    `chunks()` yields the changes found in each slice of about `chunk_size` databases so that the
    caller can let other work run in between; `evaluated` counts the accounts evaluated so far.
    """

    def __init__(self, estate: Estate, evaluator: Evaluator, chunk_size: int = 20_000) -> None:
        self._estate = estate
        self._evaluator = evaluator
        self._chunk_size = chunk_size
        self.evaluated = 0

    def chunks(self) -> Iterator[list[PlannedChange]]:
        estate = self._estate
        tiers = estate.tiers
        version = self._evaluator.rule_set.version
        end_user_tiers: dict[str, TierDecision] = {}
        changes: list[PlannedChange] = []
        in_chunk = 0
        signals = estate.signals
        databases = estate.databases
        decide = self._evaluator.decide
        for end_user_id in list(estate.end_users):
            end_user = estate.end_users.get(end_user_id)
            if end_user is None or not estate.is_live(end_user_id):
                continue
            billed_by = estate.billed_by(end_user)
            billed_account = end_user.distributor_id or end_user_id
            organization = signals.get(end_user_id)
            organization_sso = organization is not None and _is_true(organization.get(SignalKind.SSO_ACTIVE))
            organization_api = _count(organization.get(SignalKind.API_CLIENTS_ACTIVE)) if organization else 0
            counts = [0, 0, 0]
            for database_id in estate.databases_of.get(end_user_id, ()):
                database = databases[database_id]
                if not database.active:
                    continue
                if database_id in signals:
                    decision = decide(estate.facts(database, end_user, billed_by))
                else:  # the common case, without building a Facts object
                    decision = decide(
                        (
                            database.sso_access,
                            organization_sso,
                            database.rest_api_access,
                            organization_api,
                            database.inventory_mode,
                            billed_by,
                        )
                    )
                previous = tiers.get(database_id)
                if previous is None or previous.decision.tier != decision.tier:
                    changes.append(
                        PlannedChange(database_id, AccountKind.DATABASE, previous, decision, billed_account)
                    )
                counts[decision.tier.rank - 1] += 1
            decision = roll_up_counts(counts[0], counts[1], counts[2], version)
            end_user_tiers[end_user_id] = decision
            previous = tiers.get(end_user_id)
            if previous is None or previous.decision.tier != decision.tier:
                changes.append(
                    PlannedChange(end_user_id, AccountKind.END_USER, previous, decision, billed_account)
                )
            self.evaluated += sum(counts) + 1
            in_chunk += sum(counts) + 1
            if in_chunk >= self._chunk_size:
                yield changes
                changes, in_chunk = [], 0
        for distributor_id, distributor in list(estate.distributors.items()):
            if not distributor.active:
                continue
            members = (
                end_user_tiers[member].tier
                for member in estate.end_users_of.get(distributor_id, ())
                if member in end_user_tiers
            )
            decision = roll_up(members, version)
            previous = tiers.get(distributor_id)
            if previous is None or previous.decision.tier != decision.tier:
                changes.append(
                    PlannedChange(distributor_id, AccountKind.DISTRIBUTOR, previous, decision, distributor_id)
                )
            self.evaluated += 1
        yield changes
