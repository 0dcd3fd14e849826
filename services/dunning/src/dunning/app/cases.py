"""Use cases of a dunning case: recurring's invoice events and the operators' actions."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing_common.clock import Clock
from billing_common.errors import InvalidArgument, NotFound
from billing_common.paging import Page, PageRequest
from dunning.app.ports import CaseFilter, CaseSession, CaseStore
from dunning.app.statistics import OutcomeStatistics
from dunning.domain import cases as decide
from dunning.domain.cases import Change
from dunning.domain.model import Case, Failure, InvoiceRef, Transition
from dunning.domain.policy import DEFAULT_POLICY
from dunning.domain.schedule import Planning
from dunning.domain.transitions import IllegalTransition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentFailure:
    invoice: InvoiceRef
    failure: Failure
    failed_at: datetime


@dataclass(frozen=True)
class CaseView:
    case: Case
    history: list[Transition]


async def planning_for(session: CaseSession, statistics: OutcomeStatistics, merchant_id: str) -> Planning:
    policy = await session.policy(merchant_id) or DEFAULT_POLICY
    return Planning(policy, await statistics.counts(session))


def _log_refused(exc: IllegalTransition, case: Case, what: str) -> None:
    log.warning(
        "transition refused",
        extra={"case_id": case.case_id, "event": what, "from_state": exc.from_state, "cause": exc.cause},
    )


class CaseService:
    def __init__(
        self,
        store: CaseStore,
        statistics: OutcomeStatistics,
        clock: Clock,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._store = store
        self._statistics = statistics
        self._clock = clock
        self._new_id = new_id

    # ------------------------------------------------------------ recurring's events

    async def on_payment_failed(self, conn: asyncpg.Connection, failed: PaymentFailure) -> None:
        """Open one case per invoice; the failures of our own retries find it already open."""
        session = self._store.within(conn)
        invoice_id = failed.invoice.invoice_id
        if await session.get_by_invoice(invoice_id) is not None:
            return
        planning = await planning_for(session, self._statistics, failed.invoice.merchant_id)
        change = decide.open_case(
            self._new_id(), failed.invoice, failed.failure, failed.failed_at, self._clock.now(), planning
        )
        if not await session.insert(change):
            log.info("a case for this invoice was opened meanwhile", extra={"invoice_id": invoice_id})

    async def on_invoice_paid(self, conn: asyncpg.Connection, invoice_id: str) -> None:
        await self._on_invoice_event(conn, invoice_id, "invoice.paid", decide.invoice_paid)

    async def on_invoice_voided(self, conn: asyncpg.Connection, invoice_id: str, reason: str) -> None:
        def voided(case: Case, now: datetime) -> Change:
            return decide.invoice_voided(case, now, reason)

        await self._on_invoice_event(conn, invoice_id, "invoice.voided", voided)

    async def _on_invoice_event(
        self,
        conn: asyncpg.Connection,
        invoice_id: str,
        what: str,
        decision: Callable[[Case, datetime], Change],
    ) -> None:
        session = self._store.within(conn)
        case = await session.get_by_invoice(invoice_id, for_update=True)
        if case is None:
            return
        try:
            change = decision(case, self._clock.now())
        except IllegalTransition as exc:
            _log_refused(exc, case, what)
            return
        await session.apply(change)

    async def on_payment_method_updated(self, conn: asyncpg.Connection, subscription_id: str) -> None:
        session = self._store.within(conn)
        for case in await session.open_cases_of_subscription(subscription_id):
            planning = await planning_for(session, self._statistics, case.invoice.merchant_id)
            change = decide.payment_method_updated(case, self._clock.now(), planning)
            if change.changed:
                await session.apply(change)

    # ------------------------------------------------------------ operators

    async def get(self, case_id: str = "", invoice_id: str = "") -> CaseView:
        async with self._store.transaction() as session:
            if invoice_id:
                case = await session.get_by_invoice(invoice_id)
            else:
                case = await session.get(_case_id(case_id))
        if case is None:
            raise NotFound(f"no dunning case {'for invoice ' + invoice_id if invoice_id else case_id}")
        return CaseView(case, await self._store.history(case.case_id))

    async def list(self, where: CaseFilter, page: PageRequest[int]) -> Page[Case, int]:
        cut = page.cut(await self._store.list_cases(where, page.after, page.limit), lambda row: row[0])
        return Page([case for _, case in cut.items], cut.next_after)

    async def pause(self, case_id: str, reason: str, actor: str = "") -> CaseView:
        return await self._act(case_id, lambda case, now, _: decide.pause(case, now, reason), actor)

    async def resume(self, case_id: str, actor: str = "") -> CaseView:
        return await self._act(case_id, decide.resume, actor)

    async def retry_now(self, case_id: str, actor: str = "") -> CaseView:
        return await self._act(case_id, decide.retry_now, actor)

    async def reset(self, case_id: str, reason: str, actor: str = "") -> CaseView:
        return await self._act(
            case_id, lambda case, now, planning: decide.reset(case, now, planning, reason), actor
        )

    async def _act(
        self, case_id: str, decision: Callable[[Case, datetime, Planning], Change], actor: str
    ) -> CaseView:
        """Decide and apply under the row lock; an illegal transition is FAILED_PRECONDITION."""
        async with self._store.transaction() as session:
            case = await session.get(_case_id(case_id), for_update=True)
            if case is None:
                raise NotFound(f"no dunning case {case_id}")
            planning = await planning_for(session, self._statistics, case.invoice.merchant_id)
            try:
                change = decide.acted_by(decision(case, self._clock.now(), planning), actor)
            except IllegalTransition as exc:
                _log_refused(exc, case, actor or "operator")
                raise
            if change.changed:
                case = await session.apply(change)
        return CaseView(case, await self._store.history(case.case_id))


def _case_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidArgument.of("case_id", "must be a case id (UUID)") from None
