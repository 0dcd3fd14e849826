"""The trace of a run's charges: a span and a log line per answer, under the trace that wrote the
charge's attempt (linked to the batch that sent it)."""

from __future__ import annotations

import logging

from billing_common import telemetry
from recurring.domain.payments import ChargeResult, NoAnswer, Outcome, described
from recurring.domain.settlement import Charge

log = logging.getLogger(__name__)


class ChargeSpans:
    def answered(self, charge: Charge, result: ChargeResult | NoAnswer) -> telemetry.TraceContext:
        attempt = charge.attempt
        earlier = attempt.trace_context or None
        links = [telemetry.capture()] if earlier else []
        attributes = {
            "run.id": charge.item.run_id,
            "invoice.id": attempt.invoice_id,
            "charge.attempt": attempt.attempt,
            "charge.idempotency_key": attempt.idempotency_key,
        }
        with telemetry.span("recurring.charge", parent=earlier, links=links, attributes=attributes) as span:
            facts: dict[str, str | int] = {
                "invoice_id": attempt.invoice_id,
                "attempt": attempt.attempt,
                **described(result),
            }
            span.set_attributes(
                {f"charge.{key}": value for key, value in facts.items() if key != "invoice_id"}
            )
            log.log(
                logging.DEBUG if facts["outcome"] == Outcome.PAID.value else logging.INFO,
                "charge got no answer" if isinstance(result, NoAnswer) else "charge answered",
                extra=facts,
            )
            return telemetry.capture()
