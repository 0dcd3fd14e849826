"""Prometheus metrics of quota: the `UsageMetrics` the checks report to. Checks are the platform's
hottest call, so their decisions and the counter cache's lookups are tallied as plain integers and
read when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from quota.domain.quota import CheckDecision


class TalliedUsageMetrics:
    """The `UsageMetrics` kept as plain integers, read when Prometheus scrapes: an addition costs the
    check path nothing a label lookup would."""

    __slots__ = (
        "allow",
        "cache_hit",
        "cache_miss",
        "deny",
        "drift_checked",
        "drift_units",
        "drifted",
        "warn",
    )

    def __init__(self) -> None:
        self.allow = self.deny = self.warn = 0
        self.cache_hit = self.cache_miss = 0
        self.drift_checked = self.drifted = self.drift_units = 0

    def check_decided(self, decision: CheckDecision) -> None:
        if decision.warning:
            self.warn += 1
        elif decision.allowed:
            self.allow += 1
        else:
            self.deny += 1

    def counter_lookup(self, cached: bool) -> None:
        if cached:
            self.cache_hit += 1
        else:
            self.cache_miss += 1

    def counters_audited(self, checked: int, drifted: int, drift_units: int) -> None:
        """What the last audit of counters against the usage ledger found (see `drift.CounterAudit`)."""
        self.drift_checked, self.drifted, self.drift_units = checked, drifted, drift_units


# One per process: Prometheus's registry takes a collector once, and every service built in the
# process reports to it.
USAGE_METRICS = TalliedUsageMetrics()


class _QuotaCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        checks = CounterMetricFamily(
            "quota_checks",
            "Quota checks answered, by decision (warn: allowed at or over the limit)",
            labels=["decision"],
        )
        checks.add_metric(["allow"], USAGE_METRICS.allow)
        checks.add_metric(["deny"], USAGE_METRICS.deny)
        checks.add_metric(["warn"], USAGE_METRICS.warn)
        yield checks
        lookups = CounterMetricFamily(
            "quota_counter_cache_lookups",
            "Counter values a check found in the pod's tracked cache (hit) or had to read from Redis (miss)",
            labels=["result"],
        )
        lookups.add_metric(["hit"], USAGE_METRICS.cache_hit)
        lookups.add_metric(["miss"], USAGE_METRICS.cache_miss)
        yield lookups
        yield GaugeMetricFamily(
            "quota_counter_audit_checked",
            "Counters compared with the usage ledger by the last audit",
            USAGE_METRICS.drift_checked,
        )
        yield GaugeMetricFamily(
            "quota_counters_drifted",
            "Counters whose Redis value differed from the usage ledger in two reads a few seconds apart",
            USAGE_METRICS.drifted,
        )
        yield GaugeMetricFamily(
            "quota_counter_drift_units",
            "Sum of the differences of the drifted counters (usage units)",
            USAGE_METRICS.drift_units,
        )


REGISTRY.register(_QuotaCollector())
