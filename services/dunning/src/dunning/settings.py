"""Settings of the dunning service, read from DUNNING_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class DunningSettings(CommonSettings):
    recurring_addr: str = "recurring:50051"
    # Deadline of one RetryInvoicePayment call.
    attempt_timeout: timedelta = timedelta(seconds=30)
    # The attempt worker: off for pods that only answer RPCs and events.
    worker_enabled: bool = True
    worker_batch_size: int = 32
    # Attempts in flight per pod.
    worker_concurrency: int = 16
    worker_poll_interval: timedelta = timedelta(seconds=1)
    # A claimed attempt is taken over by another pod when its lease runs out (a crashed pod).
    attempt_lease: timedelta = timedelta(minutes=2)
    # TTL of the per-case Redis lock (extended while the attempt runs).
    case_lock_ttl: timedelta = timedelta(seconds=30)
    pending_recheck: timedelta = timedelta(hours=6)
    unavailable_backoff: timedelta = timedelta(minutes=1)
    # The estimator's view of past outcomes: how often it is reloaded and how far back it looks.
    statistics_refresh: timedelta = timedelta(minutes=1)
    statistics_window: timedelta = timedelta(days=180)
    metrics_refresh: timedelta = timedelta(seconds=15)
