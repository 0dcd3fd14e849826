"""Settings of the quota service, read from QUOTA_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class QuotaSettings(CommonSettings):
    pass
