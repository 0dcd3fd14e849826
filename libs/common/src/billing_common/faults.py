"""One answer to "did a dependency fail, or did we?": PostgreSQL, Redis or RabbitMQ not answering.

A dependency failure is never the caller's fault and never a bug of ours: the gRPC layer answers
it UNAVAILABLE (retryable, same idempotency key), health turns NOT_SERVING, start-up waits, and an
event consumer leaves the message for redelivery instead of spending its retries. Everything else
that escapes a handler is a bug and stays INTERNAL.
"""

from __future__ import annotations

import aio_pika
import asyncpg
import redis.exceptions

# Kinds that only ever mean "the server (or the way to it) is gone, stopping, starting or full".
DEPENDENCY_FAILURES: tuple[type[BaseException], ...] = (
    # Sockets refused, reset or timed out (TimeoutError is an OSError: pool acquire timeouts too).
    OSError,
    # PostgreSQL: SQLSTATE class 08 (connection lost, "closed in the middle of operation") ...
    asyncpg.PostgresConnectionError,
    # ... class 57 (admin/crash shutdown, cannot connect now, statement cancelled by the server) ...
    asyncpg.exceptions.OperatorInterventionError,
    # ... class 53 (too many connections, out of memory or disk) ...
    asyncpg.exceptions.InsufficientResourcesError,
    # ... and a read-only server (a standby after a failover).
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # Redis: connection refused or lost, loading its data set, read-only replica, cluster down.
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    # RabbitMQ: every aio-pika / aiormq error (connection and channel closed, publish not confirmed).
    aio_pika.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
)

# asyncpg raises its plain InterfaceError both for a closing pool or closed connection (ours to
# retry elsewhere) and for misuse (a bug): only the former is a dependency failure. Likewise its
# InternalClientError says "cannot switch to state ..." or "not connected" when the server ended
# the session under it (a shutdown's FATAL arriving while the connection was idle in a
# transaction), and other things for codec bugs.
_CLOSED = ("closed", "closing")
_BROKEN_PROTOCOL = ("cannot switch to state", "not connected")


def is_dependency_failure(error: BaseException) -> bool:
    """True when `error` (or every error in a group) says a dependency failed, not a caller or a bug."""
    if isinstance(error, BaseExceptionGroup):
        return all(is_dependency_failure(inner) for inner in error.exceptions)
    if isinstance(error, DEPENDENCY_FAILURES):
        return True
    if type(error) is asyncpg.InterfaceError:
        return any(words in str(error) for words in _CLOSED)
    if type(error) is asyncpg.exceptions.InternalClientError:
        return any(words in str(error) for words in _BROKEN_PROTOCOL)
    return False
