"""Prometheus metrics of quota. Checks are the platform's hottest call, so their decisions and the
counter cache's lookups are tallied as plain integers and read when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class Tally:
    """Counts kept by the check path; an addition costs it nothing a label lookup would."""

    __slots__ = ("allow", "cache_hit", "cache_miss", "deny", "warn")

    def __init__(self) -> None:
        self.allow = self.deny = self.warn = 0
        self.cache_hit = self.cache_miss = 0

    def decision(self, allowed: bool, warning: bool) -> None:
        if warning:
            self.warn += 1
        elif allowed:
            self.allow += 1
        else:
            self.deny += 1


TALLY = Tally()


class DriftFigures:
    """What the last audit of counters against the usage ledger found (see `drift.CounterAudit`)."""

    def __init__(self) -> None:
        self.checked = 0
        self.drifted = 0
        self.units = 0


DRIFT = DriftFigures()


class _QuotaCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        checks = CounterMetricFamily(
            "quota_checks",
            "Quota checks answered, by decision (warn: allowed at or over the limit)",
            labels=["decision"],
        )
        checks.add_metric(["allow"], TALLY.allow)
        checks.add_metric(["deny"], TALLY.deny)
        checks.add_metric(["warn"], TALLY.warn)
        yield checks
        lookups = CounterMetricFamily(
            "quota_counter_cache_lookups",
            "Counter values a check found in the pod's tracked cache (hit) or had to read from Redis (miss)",
            labels=["result"],
        )
        lookups.add_metric(["hit"], TALLY.cache_hit)
        lookups.add_metric(["miss"], TALLY.cache_miss)
        yield lookups
        yield GaugeMetricFamily(
            "quota_counter_audit_checked",
            "Counters compared with the usage ledger by the last audit",
            DRIFT.checked,
        )
        yield GaugeMetricFamily(
            "quota_counters_drifted",
            "Counters whose Redis value differed from the usage ledger in two reads a few seconds apart",
            DRIFT.drifted,
        )
        yield GaugeMetricFamily(
            "quota_counter_drift_units",
            "Sum of the differences of the drifted counters (usage units)",
            DRIFT.units,
        )


REGISTRY.register(_QuotaCollector())
