"""What operations people do from the console, always in the person's name.

The console refuses a role that may not act before asking; the service then decides with its own
allow-list, which holds the person's role (the console forwards `operator:alice`) as well as the
console's. What an action changed is dropped from the cache at once, so the next page shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing_common.errors import InvalidArgument, PermissionDenied
from console.app.ports import Record, Services
from console.app.reads import CachedReads
from console.domain.people import Person

CASE_ACTIONS = {"pause": "PauseCase", "resume": "ResumeCase", "retry": "RetryNow", "reset": "ResetCase"}
REASON_LIMIT = 1000


class Actions:
    def __init__(self, services: Services, reads: CachedReads) -> None:
        self._services = services
        self._reads = reads

    async def case(self, person: Person, case_id: str, action: str, reason: str = "") -> Record:
        method = CASE_ACTIONS.get(action)
        if method is None:
            raise InvalidArgument.of("action", f"must be one of {', '.join(CASE_ACTIONS)}")
        request: dict[str, Any] = {"case_id": case_id}
        if action in ("pause", "reset"):
            if len(reason) > REASON_LIMIT:
                raise InvalidArgument.of("reason", f"is longer than {REASON_LIMIT} characters")
            request["reason"] = reason
        answer = await self._act(person, "dunning", method, request)
        self._reads.stale("dunning.action", answer)
        return answer

    async def resume_run(self, person: Person, run_id: str, gateway: str) -> Record:
        answer = await self._act(person, "recurring", "ResumeRun", {"run_id": run_id, "gateway": gateway})
        self._reads.stale("run.action", answer)
        return answer

    async def _act(self, person: Person, service: str, method: str, request: Mapping[str, Any]) -> Record:
        if not person.may_act:
            raise PermissionDenied(f"{person.caller} may read, not act")
        return await self._services.call(service, method, request, acting_for=person.caller)
