"""Request-scoped values that follow a request through RPCs, events and logs."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
caller: ContextVar[str] = ContextVar("caller", default="")


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str:
    """The current correlation id, creating one when work starts outside any request."""
    value = correlation_id.get()
    if not value:
        value = new_correlation_id()
        correlation_id.set(value)
    return value
