"""Per-merchant retry policies, with a default for merchants without one."""

from __future__ import annotations

from dataclasses import replace

from billing_common.clock import Clock
from dunning.app.ports import CaseStore
from dunning.domain.policy import DEFAULT_POLICY, RetryPolicy


class Policies:
    def __init__(self, store: CaseStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def get(self, merchant_id: str) -> tuple[RetryPolicy, bool]:
        """The merchant's policy, or (is_default True) the default one."""
        if merchant_id:
            own = await self._store.get_policy(merchant_id)
            if own is not None:
                return own, False
        default = await self._store.get_policy("")
        return replace(default or DEFAULT_POLICY, merchant_id=""), True

    async def set(self, policy: RetryPolicy) -> RetryPolicy:
        policy.validate()
        await self._store.put_policy(policy, self._clock.now())
        return policy
