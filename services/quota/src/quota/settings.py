"""Settings of the quota service, read from QUOTA_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from billing_common.partitions import Step, TimePartitioned
from billing_common.settings import CommonSettings


@dataclass(frozen=True)
class QuotaSettings(CommonSettings):
    # Safety net of the in-process entitlement cache, in wall time (changes also invalidate it at once).
    entitlement_cache_ttl: timedelta = timedelta(seconds=5)
    # How long after a period ends late usage events (by occurred_at) are still accepted into it.
    late_usage_grace: timedelta = timedelta(hours=1)
    # Counter values kept in the process while Redis tracks them for changes (0: every check asks
    # Redis); the README gives the memory each takes.
    counter_cache_entries: int = 100_000
    # REDIS_URL names one node of a Redis Cluster: counters go through redis-py's cluster client,
    # and checks read the primaries (no counter cache; see adapters/cluster.py).
    redis_cluster: bool = False
    # Usage records (and their idempotency keys) are kept this long, a month's partition at a time;
    # a key retried after that counts again.
    usage_retention: timedelta = timedelta(days=400)

    def partitioned_tables(self) -> list[TimePartitioned]:
        usage = TimePartitioned(
            "usage_records", "occurred_at", Step.MONTH, self.usage_retention, forget_with="usage_keys"
        )
        return [*super().partitioned_tables(), usage]
