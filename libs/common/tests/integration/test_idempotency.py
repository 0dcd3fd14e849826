import asyncio

import asyncpg
import pytest

from billing.recurring.v1 import recurring_pb2 as pb
from billing_common import db, idempotency
from billing_common.errors import KeyInFlight, KeyReused
from billing_common.idempotency import IdempotencyKey
from billing_devtools.testing.plugin import InfraEnv

from .conftest import service_schema


@pytest.fixture
async def pool(env: InfraEnv):
    schema = await service_schema(env, "idem", "CREATE TABLE credits (account TEXT, cents INT);")
    pool = await env.pool(schema)
    yield pool
    await pool.close()


def _credit(key: str, cents: int = 500) -> IdempotencyKey:
    request = pb.AddAccountCreditRequest(account_id="acct-1", idempotency_key=key, reason=f"{cents}")
    return IdempotencyKey.of("AddAccountCredit", request)


async def _add_credit(pool: asyncpg.Pool, idem: IdempotencyKey, cents: int = 500) -> str:
    """A use case as services write one: claim, work, complete in one transaction; replay otherwise."""
    async with db.transaction(pool) as conn:
        earlier = await idempotency.claim(conn, idem)
        if earlier is not None:
            return earlier
        await conn.execute("INSERT INTO credits VALUES ('acct-1', $1)", cents)
        await idempotency.complete(conn, idem, f"credit-{cents}")
        return f"credit-{cents}"


async def _credits(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM credits"))


async def test_a_finished_key_replays_its_answer_and_the_work_is_done_once(pool: asyncpg.Pool) -> None:
    first = await _add_credit(pool, _credit("k-1"))
    again = await _add_credit(pool, _credit("k-1"))
    assert first == again == "credit-500"
    assert await _credits(pool) == 1


async def test_the_same_key_with_a_different_request_is_refused_and_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    await _add_credit(pool, _credit("k-2", 500))
    with pytest.raises(KeyReused, match="'k-2' was used for a different request"):
        await _add_credit(pool, _credit("k-2", 900), cents=900)
    assert await _credits(pool) == 1
    assert await _add_credit(pool, _credit("k-2", 500)) == "credit-500"


async def test_a_key_in_flight_is_answered_as_such_without_waiting_then_replays(pool: asyncpg.Pool) -> None:
    idem = _credit("k-3")
    async with db.transaction(pool) as holder:
        assert await idempotency.claim(holder, idem) is None
        await holder.execute("INSERT INTO credits VALUES ('acct-1', 500)")
        with pytest.raises(KeyInFlight, match="still in flight"):
            await asyncio.wait_for(_add_credit(pool, idem), timeout=5)
        await idempotency.complete(holder, idem, "credit-500")
    assert await _add_credit(pool, idem) == "credit-500"
    assert await _credits(pool) == 1


async def test_a_claim_committed_without_its_answer_stays_in_flight(pool: asyncpg.Pool) -> None:
    """A call whose work outlives its claiming transaction: its key answers nothing until it completes."""
    idem = _credit("k-4")
    async with db.transaction(pool) as conn:
        assert await idempotency.claim(conn, idem) is None
    with pytest.raises(KeyInFlight):
        await _add_credit(pool, idem)
    async with db.transaction(pool) as conn:
        await idempotency.complete(conn, idem, "credit-500")
    assert await _add_credit(pool, idem) == "credit-500"
    assert await _credits(pool) == 0


async def test_work_that_fails_releases_its_key_for_a_retry(pool: asyncpg.Pool) -> None:
    idem = _credit("k-5")
    with pytest.raises(RuntimeError, match="gateway down"):
        async with db.transaction(pool) as conn:
            assert await idempotency.claim(conn, idem) is None
            raise RuntimeError("gateway down")
    assert await _add_credit(pool, idem) == "credit-500"
    assert await _credits(pool) == 1


async def test_keys_are_separate_per_scope(pool: asyncpg.Pool) -> None:
    credit = _credit("k-6")
    void = IdempotencyKey("VoidInvoice", "k-6", credit.fingerprint)
    await _add_credit(pool, credit)
    await _add_credit(pool, void)
    assert await _credits(pool) == 2


def test_the_fingerprint_leaves_the_key_out_and_covers_every_other_field() -> None:
    assert _credit("a").fingerprint == _credit("b").fingerprint
    assert _credit("a", 500).fingerprint != _credit("a", 900).fingerprint
