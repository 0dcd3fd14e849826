"""Settings of the tier service, read from TIER_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class TierSettings(CommonSettings):
    pass
