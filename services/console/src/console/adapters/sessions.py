"""Sessions in Redis, shared by every console pod, gone when they expire."""

from __future__ import annotations

import json
from datetime import datetime

from redis.asyncio import Redis

from console.domain.people import Person, Role
from console.domain.sessions import Session


class RedisSessions:
    def __init__(self, redis: Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace

    def _key(self, session_id: str) -> str:
        return f"{self._namespace}:session:{session_id}"

    async def load(self, session_id: str) -> Session | None:
        raw = await self._redis.get(self._key(session_id))
        if raw is None:
            return None
        data = json.loads(raw)
        person = Person(data["name"], Role(data["role"])) if data.get("name") else None
        return Session(
            session_id,
            data["csrf"],
            datetime.fromisoformat(data["started_at"]),
            datetime.fromisoformat(data["last_seen"]),
            person,
        )

    async def save(self, session: Session, ttl_s: int) -> None:
        data = {
            "csrf": session.csrf_token,
            "started_at": session.started_at.isoformat(),
            "last_seen": session.last_seen.isoformat(),
            "name": session.person.name if session.person else "",
            "role": session.person.role.value if session.person else "",
        }
        await self._redis.set(self._key(session.session_id), json.dumps(data), ex=ttl_s)

    async def drop(self, session_id: str) -> None:
        await self._redis.delete(self._key(session_id))
