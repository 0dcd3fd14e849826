"""What a case tells the rest of the platform; adapters turn these into dunning.* events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing_common.subscriptions import ExhaustedAction
from dunning.domain.model import Failure, InvoiceRef


@dataclass(frozen=True)
class CaseEvent:
    case_id: str
    invoice: InvoiceRef


@dataclass(frozen=True)
class CaseOpened(CaseEvent):
    failure: Failure


@dataclass(frozen=True)
class RetryScheduled(CaseEvent):
    attempt: int
    scheduled_at: datetime
    estimated_success_bp: int
    sample_size: int


@dataclass(frozen=True)
class AttemptFailed(CaseEvent):
    attempt: int
    failure: Failure


@dataclass(frozen=True)
class Recovered(CaseEvent):
    attempts: int


@dataclass(frozen=True)
class Exhausted(CaseEvent):
    action: ExhaustedAction
    attempts: int


@dataclass(frozen=True)
class Held(CaseEvent):
    reason: str


@dataclass(frozen=True)
class ReminderDue(CaseEvent):
    attempt: int
    attempt_at: datetime
