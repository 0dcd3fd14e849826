"""The outbox, relay, inbox and dead-letter queue against real PostgreSQL and RabbitMQ."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aio_pika
import asyncpg
import pytest
from prometheus_client import REGISTRY

from billing.events.v1 import payment_pb2
from billing_common import db, events, partitions
from billing_common.clock import ControllableClock
from billing_common.events import EventConsumer, Handlers, Outbox, OutboxRelay, event_type_of
from billing_common.partitions import event_tables
from billing_devtools.testing.faultproxy import FaultProxy
from billing_devtools.testing.plugin import InfraEnv, eventually
from billing_devtools.testing.scans import rows_read
from billing_devtools.testing.servers import RabbitMQNode, outage

CONSUMER_TABLES = db.Migration("0001.sql", "CREATE TABLE settled (payment_id TEXT NOT NULL);")
PRODUCER_TABLES = db.Migration("0001.sql", "CREATE TABLE payments (payment_id TEXT PRIMARY KEY);")
NOW = datetime(2026, 12, 2, 9, tzinfo=UTC)


async def _schema(env: InfraEnv, name: str, migration: db.Migration) -> asyncpg.Pool:
    schema = f"{name}_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    pool = await env.pool(schema)
    async with pool.acquire() as conn:
        await db.migrate(conn, schema, [*db.common_migrations(), migration])
    return pool


async def _record_payment(conn: asyncpg.Connection, event: payment_pb2.PaymentSucceeded) -> None:
    await conn.execute("INSERT INTO settled VALUES ($1)", event.payment.payment_id)


class Harness:
    def __init__(self, env: InfraEnv, producer: asyncpg.Pool, consumer_pool: asyncpg.Pool) -> None:
        self.env = env
        self.producer = producer
        self.consumer_pool = consumer_pool
        self.clock = ControllableClock(datetime(2026, 11, 21, 3, 1, tzinfo=UTC))
        self.outbox = Outbox("gateway-adapter", self.clock)
        self.queue = f"recurring.{env.run_id}.events"
        env.queues += [self.queue, f"{self.queue}.retry", f"{self.queue}.dlq"]
        self.tasks: list[asyncio.Task[None]] = []

    def consumer(self, handler=_record_payment, max_retries: int = 5, **options) -> EventConsumer:
        return EventConsumer(
            self.consumer_pool,
            self.env.infra.amqp_url,
            self.env.exchange,
            self.queue,
            Handlers().on(payment_pb2.PaymentSucceeded, handler),
            max_retries=max_retries,
            retry_delay=timedelta(milliseconds=100),
            **options,
        )

    def relay(self, poll_interval: timedelta = timedelta(milliseconds=50)) -> OutboxRelay:
        return OutboxRelay(
            self.producer,
            self.env.infra.amqp_url,
            self.env.exchange,
            "gateway-adapter",
            wake=self.outbox.written,
            poll_interval=poll_interval,
        )

    def start(self, coro_factory) -> None:
        self.tasks.append(asyncio.create_task(coro_factory()))

    async def commit_payment(self, payment_id: str) -> str:
        async with self.producer.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO payments VALUES ($1)", payment_id)
            return await self.outbox.add(
                conn, payment_pb2.PaymentSucceeded(payment=payment_pb2.PaymentFacts(payment_id=payment_id))
            )

    async def settled(self) -> list[str]:
        return [r["payment_id"] for r in await self.consumer_pool.fetch("SELECT payment_id FROM settled")]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.producer.close()
        await self.consumer_pool.close()


@pytest.fixture
async def harness(env: InfraEnv):
    h = Harness(
        env, await _schema(env, "producer", PRODUCER_TABLES), await _schema(env, "consumer", CONSUMER_TABLES)
    )
    yield h
    await h.close()


def test_routing_key_is_declared_by_the_contract() -> None:
    assert event_type_of(payment_pb2.PaymentSucceeded()) == "payment.succeeded"


async def test_event_committed_with_state_change_reaches_its_consumer(harness: Harness) -> None:
    consumer = harness.consumer()
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    harness.start(harness.relay().run)

    await harness.commit_payment("pay_1")

    assert await eventually(harness.settled) == ["pay_1"]
    # The row is marked once the broker confirms, which a quorum queue may do after the consumer
    # already has the message.
    assert await eventually(lambda: harness.producer.fetchval("SELECT published_at IS NOT NULL FROM outbox"))


async def test_an_event_is_relayed_once_its_transaction_commits_without_waiting_for_the_relays_poll(
    harness: Harness,
) -> None:
    """The relay is woken after the COMMIT: woken when the row was written, it found nothing yet
    (the transaction went on with more work) and slept its whole poll."""
    consumer = harness.consumer()
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    harness.start(harness.relay(poll_interval=timedelta(minutes=10)).run)
    await harness.commit_payment("pay_0")
    assert await eventually(harness.settled) == ["pay_0"]  # the relay is up, and waits for its poll

    async with db.transaction(harness.producer) as conn:
        await conn.execute("INSERT INTO payments VALUES ('pay_1')")
        await harness.outbox.add(
            conn, payment_pb2.PaymentSucceeded(payment=payment_pb2.PaymentFacts(payment_id="pay_1"))
        )
        await asyncio.sleep(0.5)  # the rest of the transaction's work

    async def settled_since() -> bool:
        return "pay_1" in await harness.settled()

    assert await eventually(settled_since, timeout=5)


async def test_the_relay_reports_how_long_the_oldest_unpublished_event_has_waited(harness: Harness) -> None:
    async with db.transaction(harness.producer) as conn:
        await harness.outbox.add(
            conn, payment_pb2.PaymentSucceeded(payment=payment_pb2.PaymentFacts(payment_id="pay_late"))
        )
        await conn.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")
    waited = {"producer": "gateway-adapter"}
    async with await aio_pika.connect(harness.env.infra.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await events.declare_exchange(channel, harness.env.exchange)
        relay = harness.relay()

        assert await relay.relay_once(exchange) == 1
        assert 90 <= REGISTRY.get_sample_value("billing_outbox_lag_seconds", waited) < 120
        assert await relay.relay_once(exchange) == 0
        assert REGISTRY.get_sample_value("billing_outbox_lag_seconds", waited) == 0


async def test_marking_events_published_finds_them_by_index_however_large_the_outbox_has_grown(
    harness: Harness,
) -> None:
    """Without statistics (a server without autovacuum never gathers them), PostgreSQL costs
    `id = ANY(<150 ids>)` on the outbox's non-unique id at most of the table, and scanned all of
    it to mark a batch published: about 120 rows read per charge in the gateway bench."""
    schema = f"producer_{harness.env.run_id}"
    async with harness.producer.acquire() as conn:  # the day's own partition, as in a service
        await partitions.maintain(
            conn, schema, event_tables(timedelta(days=7), timedelta(days=30)), harness.clock.now()
        )
    await harness.producer.execute(
        """INSERT INTO outbox (event_id, event_type, payload, created_at, published_at)
           SELECT gen_random_uuid(), 'payment.succeeded', '', $1, $1 FROM generate_series(1, 20000)""",
        harness.clock.now(),
    )
    for _ in range(150):
        await harness.commit_payment(f"pay_{uuid.uuid4()}")
    pool = await db.create_pool(
        db.dsn_with_user(harness.env.infra.postgres_admin_url, schema), schema, application="test", max_size=1
    )
    try:
        relay = OutboxRelay(pool, harness.env.infra.amqp_url, harness.env.exchange, "gateway-adapter")
        async with await aio_pika.connect(harness.env.infra.amqp_url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await events.declare_exchange(channel, harness.env.exchange)
            before = await rows_read(pool, "outbox%")

            assert await relay.relay_once(exchange) == 150

            read = await rows_read(pool, "outbox%") - before
            assert read <= 1_000  # the batch's own events, not the 20,000 before them
            assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    finally:
        await pool.close()


async def test_event_committed_while_the_broker_is_down_is_delivered_after_it_returns(
    private_rabbitmq: tuple[InfraEnv, RabbitMQNode],
) -> None:
    env, node = private_rabbitmq
    harness = Harness(
        env, await _schema(env, "producer", PRODUCER_TABLES), await _schema(env, "consumer", CONSUMER_TABLES)
    )
    try:
        consumer = harness.consumer()
        harness.start(consumer.run)
        await asyncio.wait_for(consumer.ready.wait(), 10)
        harness.start(harness.relay().run)

        async with outage(node):
            await harness.commit_payment("pay_during_outage")
            await asyncio.sleep(0.5)
            unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            assert await harness.producer.fetchval(unpublished) == 1

        assert await eventually(harness.settled, timeout=30) == ["pay_during_outage"]
    finally:
        await harness.close()


async def test_a_duplicated_delivery_has_exactly_one_effect(harness: Harness) -> None:
    consumer = harness.consumer()
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    relay = harness.relay()
    event_id = await harness.commit_payment("pay_twice")

    connection = await aio_pika.connect(harness.env.infra.amqp_url)
    async with connection:
        exchange = await connection.channel(publisher_confirms=True)
        exchange = await exchange.declare_exchange(
            harness.env.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        assert await relay.relay_once(exchange) == 1
        # As if the relay crashed after publishing but before marking the row: it publishes again.
        await harness.producer.execute("UPDATE outbox SET published_at = NULL")
        assert await relay.relay_once(exchange) == 1

    async def both_deliveries_handled() -> bool:
        depth = await harness.consumer_pool.fetchval("SELECT count(*) FROM inbox")
        return depth == 1 and await _queue_depth(harness.env, harness.queue) == 0

    await eventually(both_deliveries_handled)
    await asyncio.sleep(0.3)
    assert await harness.settled() == ["pay_twice"]
    assert await harness.consumer_pool.fetchval("SELECT event_id::text FROM inbox") == event_id


async def _relay_again(harness: Harness) -> None:
    """Relay the outbox's rows; the first time, or again as if the relay crashed before marking."""
    await harness.producer.execute("UPDATE outbox SET published_at = NULL")
    connection = await aio_pika.connect(harness.env.infra.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await events.declare_exchange(channel, harness.env.exchange)
        assert await harness.relay().relay_once(exchange) >= 1


def _handled(harness: Harness, outcome: str) -> float:
    labels = {"queue": harness.queue, "event_type": "payment.succeeded", "outcome": outcome}
    return REGISTRY.get_sample_value("billing_events_handled_total", labels) or 0.0


async def test_a_redelivery_after_maintenance_moved_the_inbox_row_has_no_effect(harness: Harness) -> None:
    consumer = harness.consumer()
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    await harness.commit_payment("pay_moved")
    await _relay_again(harness)
    assert await eventually(harness.settled) == ["pay_moved"]
    async with harness.consumer_pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
        done = await partitions.maintain(
            conn, schema, event_tables(timedelta(days=7), timedelta(days=30)), NOW
        )
    assert "inbox_p20261121" in done.created and done.moved_rows == 1

    await _relay_again(harness)
    await eventually(lambda: _handled(harness, "duplicate") == 1)

    assert await harness.settled() == ["pay_moved"]
    stored = "SELECT tableoid::regclass::text FROM inbox"
    assert [r[0] for r in await harness.consumer_pool.fetch(stored)] == ["inbox_p20261121"]


async def test_a_redelivery_of_an_event_handled_before_the_inbox_kept_its_time_has_no_effect(
    harness: Harness,
) -> None:
    consumer = harness.consumer()
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    event_id = await harness.commit_payment("pay_migrated")
    # As common migration 0003 keeps such a row: its handling time stands for the event's time.
    await harness.consumer_pool.execute(
        "INSERT INTO inbox (event_id, event_type, occurred_at) VALUES ($1, 'payment.succeeded', $2)",
        uuid.UUID(event_id),
        NOW,
    )
    await _relay_again(harness)
    await eventually(lambda: _handled(harness, "duplicate") == 1)
    assert await harness.settled() == []
    assert await harness.consumer_pool.fetchval("SELECT count(*) FROM inbox") == 1


async def _maintain_inbox(harness: Harness, now: datetime) -> partitions.Maintenance:
    async with harness.consumer_pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
        return await partitions.maintain(
            conn, schema, event_tables(timedelta(days=7), timedelta(days=30)), now
        )


async def test_a_redelivery_after_the_inbox_dropped_the_events_id_is_parked_not_applied_again(
    harness: Harness,
) -> None:
    """Past INBOX_RETENTION (30 days here) the event's partition is dropped: the consumer can no
    longer tell that it was handled, so it parks it rather than apply it a second time."""
    occurred = datetime(2026, 11, 21, 3, 1, tzinfo=UTC)  # the harness outbox's clock
    consumer = harness.consumer()
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    await harness.commit_payment("pay_forgotten")
    await _relay_again(harness)
    assert await eventually(harness.settled) == ["pay_forgotten"]

    kept = await _maintain_inbox(harness, occurred + timedelta(days=30))
    assert kept.dropped == [] and "inbox_p20261121" in kept.created
    await _relay_again(harness)
    await eventually(lambda: _handled(harness, "duplicate") == 1)

    forgot = await _maintain_inbox(harness, occurred + timedelta(days=31))
    assert "inbox_p20261121" in forgot.dropped
    await _relay_again(harness)

    async def parked() -> bool:
        return await _queue_depth(harness.env, f"{harness.queue}.dlq") == 1

    await eventually(parked, timeout=15)
    assert await harness.settled() == ["pay_forgotten"]


async def test_a_message_that_keeps_failing_ends_in_the_dead_letter_queue(harness: Harness) -> None:
    attempts = 0

    async def always_fails(conn: asyncpg.Connection, event: payment_pb2.PaymentSucceeded) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute("INSERT INTO settled VALUES ($1)", event.payment.payment_id)
        raise RuntimeError("downstream refused")

    consumer = harness.consumer(always_fails, max_retries=2, watch_interval=timedelta(milliseconds=100))
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    harness.start(harness.relay().run)

    await harness.commit_payment("pay_poison")

    await eventually(lambda: _queue_depth(harness.env, f"{harness.queue}.dlq"), timeout=15)
    assert attempts == 3  # the first try and two retries
    dead_letters = {"queue": f"{harness.queue}.dlq"}
    await eventually(lambda: REGISTRY.get_sample_value("billing_events_queue_messages", dead_letters) == 1)
    assert await harness.settled() == []  # each failed attempt rolled back its writes
    assert await harness.consumer_pool.fetchval("SELECT count(*) FROM inbox") == 0
    connection = await aio_pika.connect(harness.env.infra.amqp_url)
    async with connection:
        channel = await connection.channel()
        parked = await (await channel.get_queue(f"{harness.queue}.dlq")).get()
        assert parked is not None
        assert payment_pb2.PaymentSucceeded.FromString(parked.body).payment.payment_id == "pay_poison"
        assert "downstream refused" in str(parked.headers["x-dead-reason"])
        await parked.ack()


async def _queue_depth(env: InfraEnv, queue: str) -> int:
    connection = await aio_pika.connect(env.infra.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def test_event_queues_are_quorum_queues(harness: Harness) -> None:
    consumer = harness.consumer()
    dead_letter = f"{harness.queue}.dlq"
    as_declared = {
        harness.queue: {
            "x-delivery-limit": 20,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter,
        },
        f"{harness.queue}.retry": {
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": harness.queue,
        },
        dead_letter: {},
    }
    connection = await aio_pika.connect(harness.env.infra.amqp_url)
    async with connection:
        await consumer.declare(await connection.channel())
        for name, arguments in as_declared.items():
            # The same queue declared as a classic one is refused: the broker holds a quorum queue.
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="x-queue-type"):
                await (await connection.channel()).declare_queue(
                    name, durable=True, arguments={**arguments, "x-queue-type": "classic"}
                )


async def test_a_message_that_is_never_answered_goes_to_the_dead_letter_queue_at_the_delivery_limit(
    harness: Harness,
) -> None:
    consumer = EventConsumer(
        harness.consumer_pool,
        harness.env.infra.amqp_url,
        harness.env.exchange,
        harness.queue,
        Handlers().on(payment_pb2.PaymentSucceeded, _record_payment),
        delivery_limit=2,
    )
    connection = await aio_pika.connect(harness.env.infra.amqp_url)
    async with connection:
        await consumer.declare(await connection.channel())
        await (await connection.channel()).default_exchange.publish(
            aio_pika.Message(b"", type="payment.succeeded"), routing_key=harness.queue
        )
        deliveries = 0
        while await _take(connection, harness.queue) is not None:
            deliveries += 1  # taken, then the channel dies unanswered, like a pod killed mid-handler
            assert deliveries <= 3, "the broker kept redelivering past its limit"
        assert deliveries == 3  # the first delivery and two redeliveries
        assert await eventually(lambda: _queue_depth(harness.env, f"{harness.queue}.dlq")) == 1


async def _take(connection: aio_pika.abc.AbstractConnection, queue: str) -> object | None:
    """Take one message and close the channel without answering it."""
    channel = await connection.channel()
    for _ in range(20):
        message = await (await channel.get_queue(queue)).get(no_ack=False, fail=False)
        if message is not None:
            await channel.close()
            return message
        await asyncio.sleep(0.1)
    await channel.close()
    return None


async def test_a_database_outage_spends_neither_a_retry_nor_a_delivery_of_the_event(
    harness: Harness,
) -> None:
    schema = f"consumer_{harness.env.run_id}"
    async with FaultProxy(db.dsn_with_user(harness.env.infra.postgres_admin_url, schema)) as proxy:
        pool = await db.create_pool(proxy.url, schema, application="test")
        try:
            consumer = EventConsumer(
                pool,
                harness.env.infra.amqp_url,
                harness.env.exchange,
                harness.queue,
                Handlers().on(payment_pb2.PaymentSucceeded, _record_payment),
                max_retries=0,  # a retry spent on the outage would park the event
                retry_delay=timedelta(milliseconds=100),
                delivery_limit=2,  # so would a redelivery per failed attempt
            )
            harness.start(consumer.run)
            await asyncio.wait_for(consumer.ready.wait(), 10)
            harness.start(harness.relay().run)
            for _ in range(4):  # more failed attempts than the broker allows deliveries
                proxy.cut_before(b"INSERT INTO inbox")

            await harness.commit_payment("pay_across_an_outage")

            assert await eventually(harness.settled, timeout=30) == ["pay_across_an_outage"]
            assert proxy.cuts == 4
            assert await _queue_depth(harness.env, f"{harness.queue}.dlq") == 0
        finally:
            await pool.close()


async def test_a_consumer_counts_an_event_waiting_in_its_queue_as_soon_as_it_is_there(
    harness: Harness,
) -> None:
    """The suite clock asks a pod for its due work at any moment: a count from the queue watcher's
    last look, made before the event arrived, would report the pod idle while it has work."""
    handling = asyncio.Event()
    release = asyncio.Event()

    async def slow(conn: asyncpg.Connection, event: payment_pb2.PaymentSucceeded) -> None:
        handling.set()
        await release.wait()
        await _record_payment(conn, event)

    consumer = harness.consumer(slow, prefetch=1, watch_interval=timedelta(hours=1))
    harness.start(consumer.run)
    await asyncio.wait_for(consumer.ready.wait(), 10)
    harness.start(harness.relay().run)

    await harness.commit_payment("pay_1")
    await asyncio.wait_for(handling.wait(), 10)
    await harness.commit_payment("pay_2")
    await eventually(
        lambda: harness.producer.fetchval("SELECT bool_and(published_at IS NOT NULL) FROM outbox")
    )

    assert await consumer.due(datetime.now(UTC)) == {"events waiting": 1, "events being handled": 1}
    release.set()
    assert sorted(await eventually(lambda: _two(harness.settled))) == ["pay_1", "pay_2"]
    assert await consumer.due(datetime.now(UTC)) == {"events waiting": 0, "events being handled": 0}


async def _two(settled: Callable[[], Awaitable[list[str]]]) -> list[str] | None:
    found = await settled()
    return found if len(found) == 2 else None
