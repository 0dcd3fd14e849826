"""Asynchronous news from gateways (webhooks): ACH settlements and returns, late card outcomes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from billing_common.clock import Clock
from gateway_adapter.app.ports import GatewayReply, PaymentMetrics, PaymentStore, PaymentUpdate
from gateway_adapter.domain.classification import APPROVED, classify
from gateway_adapter.domain.payments import Payment, Status, can_move, news_event

log = logging.getLogger(__name__)


class NoticeKind(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    DECLINED = "DECLINED"
    SETTLED = "SETTLED"
    RETURNED = "RETURNED"


@dataclass(frozen=True)
class Notice:
    source: str  # "stripe" | "sandbox"
    event_id: str
    kind: NoticeKind
    gateway: str
    gateway_reference: str
    idempotency_key: str = ""
    code: str = ""
    message: str = ""


TARGET = {
    NoticeKind.SUCCEEDED: Status.SUCCEEDED,
    NoticeKind.DECLINED: Status.DECLINED,
    NoticeKind.SETTLED: Status.SETTLED,
    NoticeKind.RETURNED: Status.RETURNED,
}


def decide(notice: Notice, payment: Payment) -> PaymentUpdate | None:
    """The payment's next state by this notice, or None when it does not apply (late, repeated)."""
    target = TARGET[notice.kind]
    if not can_move(payment.status, target):
        log.info(
            "notice does not apply",
            extra={"event_id": notice.event_id, "payment_id": payment.payment_id, "status": payment.status},
        )
        return None
    if notice.kind in (NoticeKind.SUCCEEDED, NoticeKind.SETTLED):
        classification = APPROVED
    else:
        classification, _ = classify(notice.gateway, notice.code)
    reply = GatewayReply(notice.code or target.lower(), notice.message, notice.gateway_reference)
    return PaymentUpdate(
        target,
        classification,
        reply,
        news_event(payment.status, target),
        previous_status=payment.status,
        return_code=notice.code if notice.kind is NoticeKind.RETURNED else "",
    )


class Notices:
    def __init__(self, store: PaymentStore, clock: Clock, metrics: PaymentMetrics) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics

    def not_applied(self, source: str, reason: str) -> None:
        """A notice refused or ignored before it reached `apply` (counted per reason)."""
        self._metrics.webhook(source, reason)

    async def apply(self, notice: Notice) -> bool:
        """Apply a verified notice once; False when its event id was seen before."""
        fresh = await self._store.apply_notice(
            notice.source,
            notice.event_id,
            notice.gateway_reference,
            notice.idempotency_key,
            lambda payment: decide(notice, payment),
            self._clock.now(),
        )
        self._metrics.webhook(notice.source, "applied" if fresh else "duplicate")
        return fresh
