"""Prometheus metrics of the payment path: the `PaymentMetrics` the use cases report to."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHARGES = Counter(
    "gateway_charges_total",
    "Charges answered, by gateway, status and failure type",
    ["gateway", "status", "failure_type"],
)
GATEWAY_LATENCY = Histogram(
    "gateway_call_seconds",
    "Time the gateway took to answer",
    ["gateway", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BREAKER_STATE = Gauge(
    "gateway_breaker_state",
    "Circuit breaker per merchant and gateway: 0 closed, 1 half-open, 2 open",
    ["merchant", "gateway"],
)
UNMAPPED_CODES = Counter(
    "gateway_unmapped_codes_total", "Gateway codes missing from the classification table", ["gateway"]
)
UNRESOLVED_CHECKS = Counter(
    "gateway_unknown_checks_total", "Janitor lookups of unknown outcomes, by result", ["result"]
)
WEBHOOKS = Counter("gateway_webhooks_total", "Webhook notices by source and result", ["source", "result"])


class PrometheusPaymentMetrics:
    def charge_answered(self, gateway: str, status: str, failure_type: str) -> None:
        CHARGES.labels(gateway, status, failure_type).inc()

    def gateway_answered(self, gateway: str, operation: str, seconds: float) -> None:
        GATEWAY_LATENCY.labels(gateway, operation).observe(seconds)

    def unmapped_code(self, gateway: str) -> None:
        UNMAPPED_CODES.labels(gateway).inc()

    def unknown_checked(self, result: str) -> None:
        UNRESOLVED_CHECKS.labels(result).inc()

    def breaker_state(self, merchant: str, gateway: str, state: int) -> None:
        BREAKER_STATE.labels(merchant, gateway).set(state)

    def webhook(self, source: str, result: str) -> None:
        WEBHOOKS.labels(source, result).inc()
