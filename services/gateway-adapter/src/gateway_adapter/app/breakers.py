"""One pybreaker circuit per (merchant, gateway), held in this process.

Why in-process and not in Redis: the breaker sits on every charge, and pybreaker's Redis storage
is synchronous (it would block the event loop on each call); an in-process breaker adds no network
round trip and keeps protecting the gateway when Redis is down. The cost is that each pod learns
of an outage by itself: at most `fail_max` wasted calls per pod, which is cheap against a gateway
that is down anyway. GetCircuitState reports the pod that answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pybreaker

from billing_common.clock import Clock
from gateway_adapter.app.ports import PaymentMetrics


class CircuitOpen(Exception):
    """The merchant's circuit on this gateway is open: do not call the gateway."""


class Outage(Exception):
    """Raised inside `guard` to count a result as a breaker failure."""


@dataclass(frozen=True)
class CircuitView:
    state: str  # "closed" | "open" | "half-open"
    consecutive_failures: int
    opened_at: datetime | None


_GAUGE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class _StateListener(pybreaker.CircuitBreakerListener):
    """Keeps the gauge current and remembers, by our clock, when the circuit opened."""

    def __init__(self, merchant: str, gateway: str, clock: Clock, metrics: PaymentMetrics) -> None:
        self._merchant = merchant
        self._gateway = gateway
        self._clock = clock
        self._metrics = metrics
        self.opened_at: datetime | None = None

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self._metrics.breaker_state(self._merchant, self._gateway, _GAUGE_VALUES.get(new_state.name, 0))
        if new_state.name == pybreaker.STATE_OPEN:
            self.opened_at = self._clock.now()
        elif new_state.name == pybreaker.STATE_CLOSED:
            self.opened_at = None


class CircuitBreakers:
    def __init__(
        self, fail_max: int, reset_timeout: timedelta, clock: Clock, metrics: PaymentMetrics
    ) -> None:
        self._fail_max = fail_max
        self._metrics = metrics
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._breakers: dict[tuple[str, str], tuple[pybreaker.CircuitBreaker, _StateListener]] = {}
        self._probing: set[tuple[str, str]] = set()

    def _breaker(self, merchant: str, gateway: str) -> pybreaker.CircuitBreaker:
        key = (merchant, gateway)
        if key not in self._breakers:
            listener = _StateListener(merchant, gateway, self._clock, self._metrics)
            breaker = pybreaker.CircuitBreaker(
                fail_max=self._fail_max,
                reset_timeout=self._reset_timeout.total_seconds(),
                exclude=[lambda error: not isinstance(error, Outage)],
                listeners=[listener],
                throw_new_error_on_trip=False,
                name=f"{merchant}/{gateway}",
            )
            self._breakers[key] = (breaker, listener)
        return self._breakers[key][0]

    @contextlib.asynccontextmanager
    async def guard(self, merchant: str, gateway: str) -> AsyncIterator[None]:
        """Run the block through the breaker; only one probe at a time once the circuit has opened."""
        key = (merchant, gateway)
        breaker = self._breaker(merchant, gateway)
        if breaker.current_state != pybreaker.STATE_CLOSED and key in self._probing:
            raise CircuitOpen(f"circuit for {merchant} on {gateway} is being probed")
        probing = breaker.current_state != pybreaker.STATE_CLOSED
        if probing:
            self._probing.add(key)
        try:
            with breaker.calling():
                yield
        except pybreaker.CircuitBreakerError as error:
            raise CircuitOpen(f"circuit for {merchant} on {gateway} is open") from error
        finally:
            if probing:
                self._probing.discard(key)

    def view(self, merchant: str, gateway: str) -> CircuitView:
        if (merchant, gateway) not in self._breakers:
            return CircuitView("closed", 0, None)
        breaker, listener = self._breakers[(merchant, gateway)]
        return CircuitView(breaker.current_state, breaker.fail_counter, listener.opened_at)
