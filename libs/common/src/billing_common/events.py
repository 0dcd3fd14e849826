"""Events over RabbitMQ: transactional outbox, relay with publisher confirms, consumer with inbox.

- One durable topic exchange; the routing key is the event type declared in the contract
  (`option (billing.events.v1.event_type) = "payment.succeeded"`); payloads are protobuf.
- Producers call `Outbox.add(conn, event)` inside the transaction of their state change;
  `OutboxRelay` publishes committed rows and marks them, so an event is never lost when the
  broker is down at commit time (at-least-once).
- Consumers register a typed `Handler[E]` per event message in `Handlers`; `EventConsumer`
  decodes each message and records its event id in the inbox in the handler's own transaction,
  so a redelivery has no second effect; a failing message is retried a bounded number of times
  through a delay queue and then parked in `<queue>.dlq`.
- The outbox and inbox are partitioned by day (`billing_common.partitions`). The inbox keeps an
  event's id for INBOX_RETENTION after the event occurred; the consumer parks an event from before
  the inbox's watermark (the time before which ids were dropped) unhandled, so an event is either
  recognised or parked, never applied twice.
- Trace context travels in message headers, the correlation id in the event's header: each row
  stores the context of the transaction that wrote it, the relay publishes it in a PRODUCER span
  under that context, and the consumer's span continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import pkgutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Protocol, TypeVar, cast

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from google.protobuf.message import DecodeError, Message
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge

from billing_common import context, db, telemetry
from billing_common.clock import Clock
from billing_common.faults import is_dependency_failure

log = logging.getLogger(__name__)

EVENTS_PUBLISHED = Counter(
    "billing_events_published_total", "Events relayed from the outbox", ["producer", "event_type"]
)
EVENTS_HANDLED = Counter(
    "billing_events_handled_total", "Events consumed, by outcome", ["queue", "event_type", "outcome"]
)
OUTBOX_LAG = Gauge("billing_outbox_lag_seconds", "Age of the oldest unpublished outbox row", ["producer"])
QUEUE_MESSAGES = Gauge(
    "billing_events_queue_messages",
    "Messages waiting in a consumer's queues (main, retry and dead-letter), as the broker counts them",
    ["queue"],
)
QUEUE_WATCH_INTERVAL_S = 15.0
# Pauses between attempts at an event while the database is unreachable (doubling up to the longest).
OUTAGE_FIRST_PAUSE_S = 0.2
OUTAGE_LONGEST_PAUSE_S = 5.0

CONTENT_TYPE = "application/x-protobuf"
RETRY_HEADER = "x-retry-count"
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
FORGOTTEN = "forgotten"


# ---------------------------------------------------------------- the registry of event types


@cache
def _registry() -> dict[str, type[Message]]:
    from billing.events import v1 as events_pkg
    from billing.events.v1 import envelope_pb2

    option = envelope_pb2.event_type
    found: dict[str, type[Message]] = {}
    for module_info in pkgutil.iter_modules(events_pkg.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{events_pkg.__name__}.{module_info.name}")
        for name in module.DESCRIPTOR.message_types_by_name:
            cls = getattr(module, name)
            event_type = cls.DESCRIPTOR.GetOptions().Extensions[option]
            if event_type:
                found[event_type] = cls
    return found


def event_type_of(event: Message | type[Message]) -> str:
    descriptor = event.DESCRIPTOR
    for event_type, cls in _registry().items():
        if cls.DESCRIPTOR is descriptor:
            return event_type
    raise ValueError(f"{descriptor.full_name} declares no event_type option")


def event_class(event_type: str) -> type[Message]:
    try:
        return _registry()[event_type]
    except KeyError:
        raise ValueError(f"unknown event type {event_type!r}") from None


def all_event_types() -> list[str]:
    return sorted(_registry())


# ---------------------------------------------------------------- producing


class Outbox:
    """Writes events into the producer's outbox table, in the caller's transaction."""

    def __init__(self, producer: str, clock: Clock) -> None:
        self._producer = producer
        self._clock = clock
        self.written = asyncio.Event()

    async def add(self, conn: asyncpg.Connection, event: Message) -> str:
        """Stamp the header (id, time, producer, correlation id) and store the event."""
        (event_id,) = await self.add_many(conn, [event])
        return event_id

    async def add_many(self, conn: asyncpg.Connection, events: Sequence[Message]) -> list[str]:
        """Store several events in one round trip (a batch's state changes announce together)."""
        carrier = telemetry.capture()
        rows = []
        for event in events:
            event_type = event_type_of(event)
            stamped: Any = event  # every event message has a `header` (a contract rule)
            header = stamped.header
            header.event_id = str(uuid.uuid4())
            now = self._clock.now()
            header.occurred_at.FromDatetime(now)
            header.producer = self._producer
            header.correlation_id = context.current_correlation_id()
            rows.append((uuid.UUID(header.event_id), event_type, event.SerializeToString(), carrier, now))
        if rows:
            await conn.executemany(
                """INSERT INTO outbox (event_id, event_type, payload, headers, created_at)
                   VALUES ($1, $2, $3, $4, $5)""",
                rows,
            )
            # Once committed: a relay woken before then finds nothing and waits for its next poll.
            db.after_commit(conn, self.written.set)
        return [str(row[0]) for row in rows]


async def declare_exchange(channel: AbstractChannel, name: str) -> AbstractExchange:
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


class OutboxRelay:
    """Publishes committed outbox rows with publisher confirms, then marks them published."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        amqp_url: str,
        exchange: str,
        producer: str,
        *,
        wake: asyncio.Event | None = None,
        poll_interval: timedelta = timedelta(milliseconds=200),
        batch_size: int = 200,
    ) -> None:
        self._pool = pool
        self._amqp_url = amqp_url
        self._exchange_name = exchange
        self._producer = producer
        self._wake = wake or asyncio.Event()
        self._poll = poll_interval.total_seconds()
        self._batch = batch_size

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                connection = await aio_pika.connect(self._amqp_url, timeout=5)
                async with connection:
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await declare_exchange(channel, self._exchange_name)
                    backoff = 0.2
                    await self._relay_forever(exchange)
            except Exception as exc:  # any failure of the connection: reconnect; rows stay unpublished
                log.warning("event relay cannot reach the broker; will retry", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _relay_forever(self, exchange: AbstractExchange) -> None:
        while True:
            sent = await self.relay_once(exchange)
            if sent < self._batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)

    async def relay_once(self, exchange: AbstractExchange) -> int:
        async with db.transaction(self._pool) as conn:
            rows = await conn.fetch(
                """SELECT id, event_id, event_type, payload, headers,
                          extract(epoch FROM now() - created_at) AS waited
                   FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
                self._batch,
            )
            # The oldest unpublished event's wait, on the database's clock (rows come oldest first).
            OUTBOX_LAG.labels(self._producer).set(float(rows[0]["waited"]) if rows else 0.0)
            if not rows:
                return 0
            await asyncio.gather(*(self._publish(exchange, row) for row in rows))
            # `published_at IS NULL` finds them through the small index of unpublished rows: on
            # `id = ANY(...)` alone, a table without statistics is costed as if most of it matched,
            # and scanned whole.
            await conn.execute(
                """UPDATE outbox SET published_at = now()
                   WHERE id = ANY($1::bigint[]) AND published_at IS NULL""",
                [r["id"] for r in rows],
            )
        for row in rows:
            EVENTS_PUBLISHED.labels(self._producer, row["event_type"]).inc()
        return len(rows)

    async def _publish(self, exchange: AbstractExchange, row: asyncpg.Record) -> None:
        stored = dict(row["headers"] or {})
        event_type = row["event_type"]
        producer = None
        if telemetry.enabled:
            producer = telemetry.start_producer_span(
                event_type,
                stored,
                {
                    "messaging.system": "rabbitmq",
                    "messaging.operation": "publish",
                    "messaging.destination.name": self._exchange_name,
                    "messaging.rabbitmq.destination.routing_key": event_type,
                    "messaging.message.id": str(row["event_id"]),
                },
            )
            headers = telemetry.message_headers(producer)
        else:
            headers = {k: v for k, v in stored.items() if k in ("traceparent", "tracestate")}
        message = aio_pika.Message(
            body=bytes(row["payload"]),
            content_type=CONTENT_TYPE,
            type=event_type,
            message_id=str(row["event_id"]),
            app_id=self._producer,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=dict(headers),
        )
        try:
            # Not mandatory: an event type nobody subscribes to is normal, not a failure to report.
            await exchange.publish(message, routing_key=event_type, mandatory=False, timeout=10)
        except BaseException as error:
            if producer is not None:
                telemetry.failed(producer, error)
            raise
        finally:
            if producer is not None:
                producer.end()


# ---------------------------------------------------------------- consuming

E = TypeVar("E", bound=Message, contravariant=True)
M = TypeVar("M", bound=Message)


class Handler(Protocol[E]):
    """Handles one kind of event inside the inbox transaction of that event.

    Its writes go through `conn`, so they commit with the inbox row (a redelivered event has no
    second effect) or roll back with it (the event is retried).
    """

    async def __call__(self, conn: asyncpg.Connection, event: E, /) -> None: ...


class Handlers:
    """The events a service consumes, each with its handler; a handler is typed for its message."""

    def __init__(self) -> None:
        self._by_type: dict[str, Handler[Any]] = {}

    def on(self, event: type[M], handler: Handler[M]) -> Handlers:
        """Handle `event` messages (a contract message with an event type) with `handler`."""
        event_type = event_type_of(event)
        if event_type in self._by_type:
            raise ValueError(f"{event_type} has a handler already")
        self._by_type[event_type] = handler
        return self

    @property
    def event_types(self) -> list[str]:
        return list(self._by_type)

    async def handle(self, conn: asyncpg.Connection, event_type: str, event: Message) -> None:
        await self._by_type[event_type](conn, event)


@dataclass(frozen=True)
class QueueNames:
    main: str

    @property
    def retry(self) -> str:
        return f"{self.main}.retry"

    @property
    def dead_letter(self) -> str:
        return f"{self.main}.dlq"


class EventConsumer:
    """Consumes the event types in `handlers` from one durable queue with exactly-once effect."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        amqp_url: str,
        exchange: str,
        queue: str,
        handlers: Handlers,
        *,
        max_retries: int = 5,
        retry_delay: timedelta = timedelta(seconds=2),
        delivery_limit: int = 20,
        prefetch: int = 32,
        watch_interval: timedelta = timedelta(seconds=QUEUE_WATCH_INTERVAL_S),
    ) -> None:
        if not handlers.event_types:
            raise ValueError("an event consumer needs at least one handler")
        self._pool = pool
        self._amqp_url = amqp_url
        self._exchange_name = exchange
        self.queues = QueueNames(queue)
        self._handlers = handlers
        self._max_retries = max_retries
        self._retry_delay_ms = int(retry_delay.total_seconds() * 1000)
        self._delivery_limit = delivery_limit
        self._prefetch = prefetch
        self._watch_interval = watch_interval.total_seconds()
        self.ready = asyncio.Event()
        # Messages waiting in the main and retry queues at the last look, and being handled now.
        self._waiting = 0
        self._handling = 0
        self._watch_channel: AbstractChannel | None = None

    async def due(self, _now: datetime) -> dict[str, int]:
        """Events still to handle, for the suite's test clock (billing_common.suite_clock): the
        queues are asked now, since a count from the last look may predate an event just sent."""
        if self._watch_channel is not None and not self._watch_channel.is_closed:
            with contextlib.suppress(Exception):  # the watcher notices a lost broker and says so
                self._waiting = await self._count_waiting(self._watch_channel)
        return {"events waiting": self._waiting, "events being handled": self._handling}

    async def declare(self, channel: AbstractChannel) -> aio_pika.abc.AbstractQueue:
        """Quorum queues, replicated by a broker cluster with no change here.

        Our retry queue and dead-letter queue handle a handler that fails; the broker's delivery
        limit handles a message that never gets an answer at all (it kills the consumer each time),
        dead-lettering it into the same dead-letter queue.
        """
        exchange = await declare_exchange(channel, self._exchange_name)
        queue = await channel.declare_queue(
            self.queues.main,
            durable=True,
            arguments={
                **QUORUM,
                "x-delivery-limit": self._delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.queues.dead_letter,
            },
        )
        await channel.declare_queue(self.queues.dead_letter, durable=True, arguments={**QUORUM})
        await channel.declare_queue(
            self.queues.retry,
            durable=True,
            arguments={
                **QUORUM,
                "x-message-ttl": self._retry_delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.queues.main,
            },
        )
        for event_type in self._handlers.event_types:
            await queue.bind(exchange, routing_key=event_type)
        return queue

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                connection = await aio_pika.connect(self._amqp_url, timeout=5)
                async with connection:
                    channel = await connection.channel()
                    await channel.set_qos(prefetch_count=self._prefetch)
                    queue = await self.declare(channel)
                    self.ready.set()
                    backoff = 0.2
                    watcher = asyncio.create_task(self._watch_queues(connection))
                    try:
                        async with queue.iterator() as messages:
                            async for message in messages:
                                await self._handle(channel, message)
                    finally:
                        watcher.cancel()
            except Exception as exc:  # handler errors are caught per message; this is the connection
                self.ready.clear()
                log.warning(
                    "event consumer lost the broker or the database; will reconnect",
                    extra={"queue": self.queues.main, "error": repr(exc)},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _watch_queues(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """How many messages wait in this consumer's queues, asked of the broker now and then."""
        try:
            channel = self._watch_channel = await connection.channel()
            while True:
                self._waiting = await self._count_waiting(channel)
                await asyncio.sleep(self._watch_interval)
        except Exception as exc:  # the consumer itself notices a lost connection and reconnects
            if not is_dependency_failure(exc):
                raise
            log.warning("queue depths unavailable", extra={"queue": self.queues.main, "error": repr(exc)})

    async def _count_waiting(self, channel: AbstractChannel) -> int:
        """Messages in the main and retry queues (the dead-letter queue's are no one's work)."""
        waiting = 0
        for name in (self.queues.main, self.queues.retry, self.queues.dead_letter):
            declared = await channel.declare_queue(name, passive=True)
            count = declared.declaration_result.message_count or 0
            QUEUE_MESSAGES.labels(name).set(count)
            waiting += count if name != self.queues.dead_letter else 0
        return waiting

    async def _handle(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        self._handling += 1
        try:
            await self._handle_counted(channel, message)
        finally:
            self._handling -= 1

    async def _handle_counted(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        event_type = message.type or message.routing_key or ""
        headers = {k: str(v) for k, v in (message.headers or {}).items()}
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.operation": "process",
            "messaging.destination.name": self.queues.main,
            "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
            "messaging.message.id": message.message_id or "",
        }
        with telemetry.span(
            f"consume {event_type}", parent=headers, kind=SpanKind.CONSUMER, attributes=attributes
        ) as current:
            try:
                event: Any = event_class(event_type).FromString(message.body)
            except (ValueError, DecodeError) as exc:
                await self._park(channel, message, f"undecodable: {exc}")
                return
            token = context.correlation_id.set(event.header.correlation_id or context.new_correlation_id())
            try:
                outcome = await self._apply_once_reachable(event_type, event)
                if outcome == FORGOTTEN:
                    await self._park(
                        channel, message, "the inbox has forgotten its time: it may have been handled"
                    )
                    return
                EVENTS_HANDLED.labels(self.queues.main, event_type, outcome).inc()
                log.debug(
                    "event handled",
                    extra={"event_type": event_type, "event_id": event.header.event_id, "outcome": outcome},
                )
                await message.ack()
            except Exception as exc:
                if is_dependency_failure(exc):
                    # The broker is gone (the answer could not be sent): it redelivers the event,
                    # which spends none of its retries.
                    raise
                log.exception(
                    "event handler failed", extra={"event_type": event_type, "queue": self.queues.main}
                )
                telemetry.failed(current, exc)
                await self._retry_or_park(channel, message, exc)
            finally:
                context.correlation_id.reset(token)

    async def _apply_once_reachable(self, event_type: str, event: Any) -> str:
        """Wait out a database outage holding the delivery.

        Handing the event back to the broker instead would count against its delivery limit at
        every attempt, and a long enough outage would dead-letter good events.
        """
        pause = OUTAGE_FIRST_PAUSE_S
        while True:
            try:
                return await self._apply(event_type, event)
            except Exception as exc:
                if not is_dependency_failure(exc):
                    raise
                log.warning(
                    "event consumer cannot reach the database; holding the event",
                    extra={"queue": self.queues.main, "event_type": event_type, "error": repr(exc)},
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, OUTAGE_LONGEST_PAUSE_S)

    async def _apply(self, event_type: str, event: Any) -> str:
        """Handle `event` unless the inbox holds its id, or has forgotten the ids of its time.

        The key (id, occurred_at) stops two deliveries of the same message at once, as both carry
        the same time; the lookup by id alone finds rows whose time differs: handled before the
        inbox kept the event's time, or an event with no time (not from an outbox), which takes
        the time it is handled. Ids of events before the inbox's watermark may have been dropped
        with their partition: such an event is neither handled nor taken for a duplicate (one
        with no time cannot be placed before or after it, and is handled).
        """
        async with self._pool.acquire() as held, db.committing(cast(asyncpg.Connection, held)) as conn:
            outcome = await conn.fetchrow(
                """WITH forgotten AS (
                       SELECT coalesce(max(forgotten_before), '-infinity') AS before
                       FROM partition_watermarks WHERE table_name = 'inbox'),
                   event AS (
                       SELECT coalesce($3::timestamptz, now()) AS occurred_at),
                   claimed AS (
                       INSERT INTO inbox (event_id, event_type, occurred_at)
                       SELECT $1, $2, event.occurred_at FROM event, forgotten
                       WHERE ($3 IS NULL OR $3 >= forgotten.before)
                         AND NOT EXISTS (SELECT 1 FROM inbox WHERE event_id = $1)
                       ON CONFLICT DO NOTHING RETURNING true)
                   SELECT EXISTS (SELECT 1 FROM claimed) AS first,
                          coalesce($3 < (SELECT before FROM forgotten), false) AS forgotten""",
                uuid.UUID(event.header.event_id),
                event_type,
                _occurred_at(event),
            )
            assert outcome is not None  # the statement always returns its one row
            if outcome["forgotten"]:
                return FORGOTTEN
            if not outcome["first"]:
                return "duplicate"
            await self._handlers.handle(conn, event_type, event)
        return "handled"

    async def _retry_or_park(
        self, channel: AbstractChannel, message: AbstractIncomingMessage, exc: Exception
    ) -> None:
        retries = int(str((message.headers or {}).get(RETRY_HEADER) or 0))
        if retries >= self._max_retries:
            await self._park(channel, message, f"{type(exc).__name__}: {exc}")
            return
        await channel.default_exchange.publish(
            _copy(message, {RETRY_HEADER: retries + 1, "x-last-error": str(exc)[:500]}),
            routing_key=self.queues.retry,
        )
        EVENTS_HANDLED.labels(self.queues.main, message.type or "", "retried").inc()
        await message.ack()

    async def _park(self, channel: AbstractChannel, message: AbstractIncomingMessage, reason: str) -> None:
        log.error(
            "event parked in the dead-letter queue",
            extra={"queue": self.queues.dead_letter, "reason": reason},
        )
        await channel.default_exchange.publish(
            _copy(message, {"x-dead-reason": reason[:500]}), routing_key=self.queues.dead_letter
        )
        EVENTS_HANDLED.labels(self.queues.main, message.type or "", "dead_lettered").inc()
        await message.ack()


def _occurred_at(event: Any) -> datetime | None:
    """When the event happened, as its producer's outbox stamped it; None if nobody did."""
    header = event.header
    if not header.HasField("occurred_at"):
        return None
    occurred: datetime = header.occurred_at.ToDatetime(tzinfo=UTC)
    return occurred


def _copy(message: AbstractIncomingMessage, extra_headers: Mapping[str, Any]) -> aio_pika.Message:
    return aio_pika.Message(
        body=message.body,
        content_type=message.content_type,
        type=message.type,
        message_id=message.message_id,
        app_id=message.app_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={**(message.headers or {}), **extra_headers},
    )
