"""Settings of the dunning service, read from DUNNING_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class DunningSettings(CommonSettings):
    pass
