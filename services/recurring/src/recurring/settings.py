"""Settings of the recurring service, read from RECURRING_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class RecurringSettings(CommonSettings):
    pass
