"""Settings of the gateway-adapter service, read from GATEWAY_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from billing_common.settings import CommonSettings
from gateway_adapter.domain.routing import Routes


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    # Extra routes `<merchant>:<METHOD>=<gateway>[@<credentials ref>]`; defaults: CARD→sandbox-card,
    # ACH→sandbox-ach, STRIPE→stripe for every merchant.
    routes: Routes = field(default_factory=Routes)
    # Each gateway's own limit, `<gateway>=<calls per second>` for all pods together (unlisted or 0:
    # none); calls are paced this much under it, for the jitter between the pacer and the gateway.
    rate_limits: dict[str, int] = field(default_factory=dict)
    rate_headroom_percent: int = 2
    breaker_fail_max: int = 5
    breaker_reset_timeout: timedelta = timedelta(seconds=30)
    idempotency_retention: timedelta = timedelta(days=30)
    # How long a replay waits for the first call with its key to finish before answering
    # UNAVAILABLE ("still in progress; retry with the same key").
    in_flight_wait: timedelta = timedelta(seconds=10)
    # The lease a pod holds on each charge it is making, renewed every third of it while the call
    # lives: a charge still PROCESSING this long after its pod last renewed is presumed crashed, and
    # only then does the janitor ask the gateway.
    processing_timeout: timedelta = timedelta(minutes=2)
    # Pacing lanes under each gateway's limit. An interactive charge takes the next free turn if it
    # comes within this wait, else is answered UNAVAILABLE with a retry-after.
    interactive_max_wait: timedelta = timedelta(seconds=2)
    # A batch books turns no further ahead than this, so an interactive charge never queues behind
    # more than this much of a batch; a batch charge without a turn within the batch wait is answered
    # with a retry-after and nothing done.
    batch_pacing_horizon: timedelta = timedelta(milliseconds=200)
    batch_max_wait: timedelta = timedelta(seconds=5)
    # When to ask the gateway about an unknown outcome; the last step repeats.
    unknown_check_schedule: tuple[timedelta, ...] = (
        timedelta(minutes=5),
        timedelta(hours=1),
        timedelta(days=1),
    )
    janitor_interval: timedelta = timedelta(seconds=30)
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 8080
    # Verification secrets; more than one while a secret is being rotated.
    stripe_webhook_secrets: tuple[str, ...] = ()
    sandbox_webhook_secrets: tuple[str, ...] = ()
    stripe_api_base: str = "https://api.stripe.com"
    # `<credentials ref>=<secret key>` entries, from a Kubernetes secret; never stored in the database.
    stripe_api_keys: dict[str, str] = field(default_factory=dict)
    stripe_timeout: timedelta = timedelta(seconds=30)
    # The sandbox gateway: answer delay, requests per second it accepts (0: no limit), ACH clearing.
    sandbox_latency: timedelta = timedelta(0)
    sandbox_rate_limit: int = 0
    sandbox_ach_clears_after: timedelta = timedelta(seconds=30)
    sandbox_clearing_interval: timedelta = timedelta(seconds=1)
    # Where the sandbox sends its ACH notices (default: this service's webhook) and how it signs them.
    sandbox_notice_url: str = ""
    sandbox_notice_secret: str = ""
