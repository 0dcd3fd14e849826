"""RabbitMQ: the events that make cached answers stale, and the depth of the dead-letter queues.

Each pod listens on a queue of its own (exclusive, deleted with the connection) bound to every
event: it only forgets cache entries, so a missed event costs at most the cache's lifetime, and
nothing is acknowledged into anyone else's work.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from billing_common.events import event_class
from console.adapters.plain import to_plain
from console.app.reads import CachedReads

log = logging.getLogger(__name__)


class CacheInvalidation:
    def __init__(self, connection: AbstractRobustConnection, exchange: str, reads: CachedReads) -> None:
        self._connection = connection
        self._exchange = exchange
        self._reads = reads
        self.heard = 0

    async def start(self) -> None:
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self._exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        event_type = message.type or message.routing_key or ""
        self.heard += 1
        try:
            payload: object = to_plain(event_class(event_type).FromString(message.body))
        except ValueError:
            payload = {}  # an event type this build does not know: its family still goes stale
        self._reads.stale(event_type, payload)


class DeadLetterDepths:
    def __init__(self, connection: AbstractRobustConnection, queues: Sequence[str]) -> None:
        self._connection = connection
        self._queues = tuple(queues)

    async def depths(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for name in self._queues:
            found[name] = None
            # A passive declare of a missing queue closes the channel: one channel per queue.
            with contextlib.suppress(aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException):
                channel = await self._connection.channel()
                async with channel:
                    queue = await channel.declare_queue(name, passive=True)
                    result = queue.declaration_result
                    found[name] = int(result.message_count or 0)
        return found
