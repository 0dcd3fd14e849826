"""Settings of the recurring service, read from RECURRING_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time, timedelta
from zoneinfo import ZoneInfo

from billing_common.settings import CommonSettings
from billing_common.subscriptions import ExhaustedAction


@dataclass(frozen=True)
class RecurringSettings(CommonSettings):
    quota_addr: str = "quota:50051"
    gateway_adapter_addr: str = "gateway-adapter:50051"
    # Local times of the scheduled runs, in `billing_time_zone` ("HH:MM").
    daily_run_at: time = time(3, 1)
    monthly_run_at: time = time(3, 6)
    billing_time_zone: ZoneInfo = ZoneInfo("UTC")
    # How far back missed run dates are caught up when a pod starts.
    max_catch_up_days: int = 62
    scheduler_interval: timedelta = timedelta(seconds=30)
    # Redis lock of a run's creation (recurring:<kind>:lock:<date>).
    run_lock_ttl: timedelta = timedelta(hours=2)
    # Work items: batch size, batches worked at once per pod, lease of a claimed batch, idle poll.
    worker_batch_size: int = 100
    worker_concurrent_batches: int = 2
    worker_lease: timedelta = timedelta(minutes=2)
    worker_idle_poll: timedelta = timedelta(seconds=1)
    worker_jitter: timedelta = timedelta(0)
    # An unreachable gateway's item waits this long before its next try.
    defer_delay: timedelta = timedelta(seconds=30)
    unreachable_halt_threshold: int = 5
    # An item that fails this many times for a reason of ours (bad data, an error while preparing,
    # a usage summary that fails) is parked with its reason; it waits defer_delay, doubled per
    # failure, between tries.
    item_max_failures: int = 5
    # A running run whose open items have not moved for this long is reported stalled (run.stalled,
    # recurring_runs_stalled), and the next date's run no longer waits for it.
    run_stalled_after: timedelta = timedelta(minutes=30)
    minimum_charge_minor: int = 500
    charge_timeout: timedelta = timedelta(seconds=30)
    # dunning.exhausted without an action: "suspend" or "cancel"; merchants listed here cancel.
    exhausted_default_action: ExhaustedAction = ExhaustedAction.SUSPEND
    exhausted_cancel_merchants: frozenset[str] = frozenset()
