"""Errors that any layer may raise; the gRPC layer maps each kind to one status code.

Kept free of grpc so that pure domain code can raise them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class BillingError(Exception):
    """Base of every error a caller may provoke; never surfaces as UNKNOWN or INTERNAL."""

    def __init__(self, message: str, *, details: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, str] = dict(details or {})


class InvalidArgument(BillingError):
    def __init__(self, violations: Iterable[FieldViolation] | FieldViolation) -> None:
        items = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if not items:
            raise ValueError("InvalidArgument needs at least one field violation")
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in items))
        self.violations: list[FieldViolation] = items

    @classmethod
    def of(cls, field_name: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field_name, description))


@dataclass
class Violations:
    """Collects every problem with a request so the caller sees them all at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def check(self, ok: bool, field_name: str, description: str) -> None:
        if not ok:
            self.add(field_name, description)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


class NotFound(BillingError):
    pass


K = TypeVar("K")
V = TypeVar("V")


def existing(loaded: Mapping[K, V], key: K, what: str) -> V:
    """The one thing asked for from a load by keys (which leaves missing ones out), else NotFound
    naming it: `existing(await subscriptions.load([sid]), sid, "subscription")`."""
    if key not in loaded:
        raise NotFound(f"{what} {key} does not exist")
    return loaded[key]


class AlreadyExists(BillingError):
    pass


class FailedPrecondition(BillingError):
    pass


class Conflict(BillingError):
    """A concurrent change won (optimistic version mismatch); the caller may retry."""


class KeyReused(FailedPrecondition):
    """An idempotency key presented again with a different request: neither is done again."""

    def __init__(self, key: str, what: str = "request", differs: Iterable[str] = ()) -> None:
        named = ", ".join(differs)
        super().__init__(
            f"idempotency key {key!r} was used for a different {what}"
            + (f" (differs in {named})" if named else "")
        )


class KeyInFlight(Conflict):
    """Another call with the same idempotency key has not finished: its answer is not known yet."""

    def __init__(self, key: str) -> None:
        super().__init__(f"a call with idempotency key {key!r} is still in flight; retry with the same key")


class ResourceExhausted(BillingError):
    pass


class Unavailable(BillingError):
    """A dependency is down; retryable."""


class PermissionDenied(BillingError):
    pass


class Unauthenticated(BillingError):
    pass
