"""Prometheus metrics of the tier service."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tier.domain.scans import ScanKind, ScanState

SCAN_SECONDS = Histogram(
    "tier_scan_duration_seconds",
    "Wall time of a scan, from claim to its record being finished",
    ["kind", "state"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
SCAN_CHANGES = Histogram(
    "tier_scan_changes",
    "Tier changes written by one scan",
    ["kind"],
    buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
)
ACCOUNTS_EVALUATED = Counter("tier_accounts_evaluated_total", "Accounts evaluated by scans", ["kind"])
TIER_CHANGES = Counter("tier_changes_total", "Tier changes written by scans", ["kind"])
CACHE_LOOKUPS = Counter(
    "tier_model_lookups_total",
    "Account lookups in the in-memory model (miss: asked the database)",
    ["result"],
)
PROVIDER_ERRORS = Counter(
    "tier_signal_provider_errors_total", "Failed pulls from signal providers", ["provider"]
)


class PrometheusTierMetrics:
    def scan_finished(
        self, kind: ScanKind, state: ScanState, seconds: float, evaluated: int, changes: int
    ) -> None:
        SCAN_SECONDS.labels(kind.value, state.value).observe(seconds)
        SCAN_CHANGES.labels(kind.value).observe(changes)
        ACCOUNTS_EVALUATED.labels(kind.value).inc(evaluated)
        TIER_CHANGES.labels(kind.value).inc(changes)

    def cache_lookup(self, hit: bool) -> None:
        CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()

    def provider_failed(self, provider: str) -> None:
        PROVIDER_ERRORS.labels(provider).inc()
