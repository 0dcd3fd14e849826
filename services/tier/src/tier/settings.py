"""Settings of the tier service, read from TIER_* environment variables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from billing_common.settings import CommonSettings
from tier.domain.rules import RuleSet, parse_rule_set
from tier.domain.scans import Cron


@dataclass(frozen=True)
class RuleSetFile:
    """A JSON rule set document (see tier.domain.rules), read and checked as the settings load: a
    file that cannot be read or used stops the service at start, naming the variable."""

    path: str
    rule_set: RuleSet

    @classmethod
    def from_setting(cls, text: str) -> RuleSetFile:
        path = text.strip()
        try:
            document = Path(path).read_text()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
        return cls(path, parse_rule_set(json.loads(document)))

    def setting_text(self) -> str:
        return self.path


@dataclass(frozen=True)
class TierSettings(CommonSettings):
    # Cron expressions (UTC) per scan kind; empty disables that kind's schedule.
    scan_schedule_full: Cron | None = Cron("0 * * * *")
    scan_schedule_sso: Cron | None = Cron("20 * * * *")
    scan_schedule_api: Cron | None = Cron("40 * * * *")
    # A JSON rule set document (see tier.domain.rules); empty: the built-in default rule set.
    rules_file: RuleSetFile | None = None
    # The scan lock's TTL; the holder extends it every third of it while the scan runs.
    scan_lock_ttl: timedelta = timedelta(seconds=30)
    # How often an idle worker looks for scans queued by other pods.
    worker_poll_interval: timedelta = timedelta(seconds=2)
    # How often the in-memory model merges what other pods wrote.
    model_refresh_interval: timedelta = timedelta(seconds=10)
    # Tier changes written per transaction.
    scan_write_batch: int = 20_000
    # WorkOS (SSO participation); no API key: no SSO provider.
    workos_api_key: str = ""
    workos_base_url: str = ""
    # The API-client registry; no URL: no API provider.
    api_registry_url: str = ""
    api_registry_token: str = ""
    provider_timeout: timedelta = timedelta(seconds=30)
