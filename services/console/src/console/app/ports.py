"""What the console's use cases need from the outside, as protocols the adapters fulfil."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from console.domain.people import Account
from console.domain.sessions import Session

# A request or an answer of a service, as plain values: messages as dicts, enums by their short
# name ("HELD"), timestamps as aware datetimes, dates as dates, durations as timedeltas.
Record = dict[str, Any]


class Services(Protocol):
    """The five services' RPCs, by service and method name (`"dunning", "GetCase"`).

    Errors are billing_common's: NotFound, PermissionDenied, FailedPrecondition, Unavailable, ..."""

    async def call(
        self, service: str, method: str, request: Mapping[str, Any], acting_for: str = ""
    ) -> Record: ...


class SessionStore(Protocol):
    async def load(self, session_id: str) -> Session | None: ...

    async def save(self, session: Session, ttl_s: int) -> None: ...

    async def drop(self, session_id: str) -> None: ...


class Accounts(Protocol):
    def find(self, name: str) -> Account | None: ...


class DeadLetters(Protocol):
    async def depths(self) -> dict[str, int | None]:
        """Messages waiting in each dead-letter queue (None: the queue could not be read)."""
        ...
