"""Subscriptions, their history and their pending prorations in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from billing_common.money import Money
from billing_common.payments import MethodType
from billing_common.subscriptions import Frequency, SubscriptionStatus
from recurring.domain.proration import ProrationLine
from recurring.domain.settlement import Proration
from recurring.domain.status import TERMINAL
from recurring.domain.subscription import HistoryEntry, PaymentMethod, Subscription, SubscriptionFilter

_COLUMNS = (
    "subscription_id, account_id, merchant_id, status, plan_code, plan_version, amount_minor, currency, "
    "frequency, start_date, anchor_day, method_type, gateway_token, trial_days, trial_end, "
    "current_period_start, current_period_end, next_billing_date, tier_mapped, cancel_at_period_end, "
    "version, created_at, updated_at"
)


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        subscription_id=row["subscription_id"],
        account_id=row["account_id"],
        merchant_id=row["merchant_id"],
        status=SubscriptionStatus(row["status"]),
        plan_code=row["plan_code"],
        plan_version=row["plan_version"],
        amount=Money(row["amount_minor"], row["currency"]),
        frequency=Frequency(row["frequency"]),
        start_date=row["start_date"],
        anchor_day=row["anchor_day"],
        payment_method=PaymentMethod(MethodType(row["method_type"]), row["gateway_token"]),
        trial_days=row["trial_days"],
        trial_end=row["trial_end"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        next_billing_date=row["next_billing_date"],
        tier_mapped=row["tier_mapped"],
        cancel_at_period_end=row["cancel_at_period_end"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _values(sub: Subscription) -> tuple[Any, ...]:
    return (
        sub.subscription_id,
        sub.account_id,
        sub.merchant_id,
        sub.status.value,
        sub.plan_code,
        sub.plan_version,
        sub.amount.amount_minor,
        sub.amount.currency,
        sub.frequency.value,
        sub.start_date,
        sub.anchor_day,
        sub.payment_method.type.value,
        sub.payment_method.token,
        sub.trial_days,
        sub.trial_end,
        sub.current_period_start,
        sub.current_period_end,
        sub.next_billing_date,
        sub.tier_mapped,
        sub.cancel_at_period_end,
        sub.version,
        sub.created_at,
        sub.updated_at,
    )


class PostgresSubscriptions:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add(self, subs: Sequence[Subscription]) -> None:
        placeholders = ", ".join(f"${i}" for i in range(1, 24))
        await self._conn.executemany(
            f"INSERT INTO subscriptions ({_COLUMNS}) VALUES ({placeholders})", [_values(sub) for sub in subs]
        )

    async def load(self, subscription_ids: Sequence[str], *, lock: bool = False) -> dict[str, Subscription]:
        rows = await self._conn.fetch(
            f"""SELECT {_COLUMNS} FROM subscriptions WHERE subscription_id = ANY($1::text[])
                ORDER BY subscription_id"""
            + (" FOR UPDATE" if lock else ""),
            list(subscription_ids),
        )
        return {r["subscription_id"]: _subscription(r) for r in rows}

    async def save(self, subs: Sequence[Subscription]) -> None:
        names = _COLUMNS.split(", ")
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=1) if i > 1)
        await self._conn.executemany(
            f"UPDATE subscriptions SET {assignments} WHERE subscription_id = $1",
            [_values(sub) for sub in subs],
        )

    async def page(self, where: SubscriptionFilter, after: str, limit: int) -> list[Subscription]:
        rows = await self._conn.fetch(
            f"""SELECT {_COLUMNS} FROM subscriptions
                WHERE ($1 = '' OR account_id = $1) AND ($2::text IS NULL OR status = $2)
                  AND ($3::text IS NULL OR frequency = $3) AND subscription_id > $4
                ORDER BY subscription_id LIMIT $5""",
            where.account_id,
            where.status.value if where.status else None,
            where.frequency.value if where.frequency else None,
            after,
            limit,
        )
        return [_subscription(r) for r in rows]

    async def tier_mapped(self, account_id: str) -> list[str]:
        rows = await self._conn.fetch(
            """SELECT subscription_id FROM subscriptions
               WHERE account_id = $1 AND tier_mapped AND NOT status = ANY($2::text[])
               ORDER BY subscription_id""",
            account_id,
            [s.value for s in TERMINAL],
        )
        return [r["subscription_id"] for r in rows]

    async def add_history(self, entries: Sequence[HistoryEntry]) -> None:
        await self._conn.executemany(
            """INSERT INTO subscription_history
                   (subscription_id, changes, actor, cause_event_id, reason, changed_at)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [
                (e.subscription_id, e.changes, e.actor, e.cause_event_id, e.reason, e.changed_at)
                for e in entries
            ],
        )

    async def histories(self, subscription_ids: Sequence[str]) -> dict[str, list[HistoryEntry]]:
        rows = await self._conn.fetch(
            "SELECT * FROM subscription_history WHERE subscription_id = ANY($1::text[]) ORDER BY id",
            list(subscription_ids),
        )
        found: dict[str, list[HistoryEntry]] = {}
        for r in rows:
            found.setdefault(r["subscription_id"], []).append(
                HistoryEntry(
                    r["subscription_id"],
                    r["changes"],
                    r["actor"],
                    r["cause_event_id"],
                    r["reason"],
                    r["changed_at"],
                )
            )
        return found

    async def add_prorations(self, lines: Mapping[str, Sequence[ProrationLine]]) -> None:
        await self._conn.executemany(
            """INSERT INTO pending_prorations (subscription_id, description, amount_minor, currency)
               VALUES ($1, $2, $3, $4)""",
            [
                (subscription_id, line.description, line.amount.amount_minor, line.amount.currency)
                for subscription_id, found in lines.items()
                for line in found
            ],
        )

    async def open_prorations(self, subscription_ids: Sequence[str]) -> dict[str, list[Proration]]:
        rows = await self._conn.fetch(
            """SELECT id, subscription_id, description, amount_minor, currency FROM pending_prorations
               WHERE subscription_id = ANY($1::text[]) AND invoice_id IS NULL ORDER BY id""",
            list(subscription_ids),
        )
        found: dict[str, list[Proration]] = {}
        for r in rows:
            found.setdefault(r["subscription_id"], []).append(
                (r["id"], r["description"], Money(r["amount_minor"], r["currency"]))
            )
        return found

    async def attach_prorations(self, ids_by_invoice: Mapping[str, Sequence[int]]) -> None:
        rows = [(list(ids), invoice_id) for invoice_id, ids in ids_by_invoice.items() if ids]
        if rows:
            await self._conn.executemany(
                "UPDATE pending_prorations SET invoice_id = $2 WHERE id = ANY($1::bigint[])", rows
            )
