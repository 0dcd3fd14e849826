"""Signed-in sessions: they expire after a while idle and at the latest after a working day, and
each carries the token that forms must send back (CSRF)."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from console.domain.people import Person


@dataclass(frozen=True)
class SessionRules:
    idle: timedelta = timedelta(minutes=30)
    longest: timedelta = timedelta(hours=8)


@dataclass(frozen=True)
class Session:
    session_id: str
    csrf_token: str
    started_at: datetime
    last_seen: datetime
    person: Person | None = None  # None before sign-in: the sign-in form has a CSRF token too

    def expires_at(self, rules: SessionRules) -> datetime:
        return min(self.last_seen + rules.idle, self.started_at + rules.longest)

    def expired(self, now: datetime, rules: SessionRules) -> bool:
        return now >= self.expires_at(rules)

    def seen(self, now: datetime) -> Session:
        return replace(self, last_seen=now)

    def accepts(self, csrf_token: str) -> bool:
        return bool(csrf_token) and hmac.compare_digest(self.csrf_token, csrf_token)


def new_session(now: datetime, person: Person | None = None) -> Session:
    """A fresh id and CSRF token; signing in always starts a new session (no fixation)."""
    return Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now, person)
