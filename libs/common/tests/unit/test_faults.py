"""What counts as a failed dependency (UNAVAILABLE, retry) and what stays a bug or a bad request."""

import aiormq.exceptions
import asyncpg
import pytest
import redis.exceptions

from billing_common.faults import is_dependency_failure

DEPENDENCY_FAILED = [
    ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    TimeoutError(),  # a pool acquire or a connect that timed out
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
    asyncpg.InterfaceError("pool is closing"),
    asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
    aiormq.exceptions.ChannelInvalidStateError("writer is None"),
    ExceptionGroup("both", [TimeoutError(), redis.exceptions.ConnectionError("gone")]),
]

OURS_OR_THE_CALLERS = [
    ValueError("A string literal cannot contain NUL (0x00) characters."),
    KeyError("exp"),
    asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
    asyncpg.exceptions.NumericValueOutOfRangeError("value out of range"),
    asyncpg.exceptions.DataError("invalid input for query argument $1 (value out of int64 range)"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.exceptions.InternalClientError("no decoder for OID 16385"),
    redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ExceptionGroup("mixed", [TimeoutError(), ValueError("bad")]),
]


@pytest.mark.parametrize("error", DEPENDENCY_FAILED, ids=lambda e: type(e).__name__)
def test_a_server_gone_stopping_or_full_is_a_dependency_failure(error: BaseException) -> None:
    assert is_dependency_failure(error)


@pytest.mark.parametrize("error", OURS_OR_THE_CALLERS, ids=lambda e: type(e).__name__)
def test_bad_data_and_bugs_are_not_dependency_failures(error: BaseException) -> None:
    assert not is_dependency_failure(error)
