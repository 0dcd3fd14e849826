"""Signing in and out, and the session every request carries."""

from __future__ import annotations

from billing_common.clock import Clock
from console.app.ports import Accounts, SessionStore
from console.domain.people import password_matches
from console.domain.sessions import Session, SessionRules, new_session

# Compared against when the name is unknown, so a wrong name costs as long as a wrong password.
_UNKNOWN = "scrypt$00000000000000000000000000000000$" + "00" * 64


class SignIn:
    def __init__(self, accounts: Accounts, sessions: SessionStore, clock: Clock, rules: SessionRules) -> None:
        self._accounts = accounts
        self._sessions = sessions
        self._clock = clock
        self.rules = rules

    async def current(self, session_id: str | None) -> Session:
        """The request's live session (its idle time restarted), or a new anonymous one."""
        now = self._clock.now()
        found = await self._sessions.load(session_id) if session_id else None
        if found is None or found.expired(now, self.rules):
            if found is not None:
                await self._sessions.drop(found.session_id)
            found = new_session(now)
        session = found.seen(now)
        await self._save(session)
        return session

    async def sign_in(self, session: Session, name: str, password: str) -> Session | None:
        """A new session for the person (the old one dropped), or None for a wrong name or password."""
        account = self._accounts.find(name)
        matches = password_matches(account.password_hash if account else _UNKNOWN, password)
        if account is None or not matches:
            return None
        await self._sessions.drop(session.session_id)
        signed_in = new_session(self._clock.now(), account.person)
        await self._save(signed_in)
        return signed_in

    async def sign_out(self, session: Session) -> None:
        await self._sessions.drop(session.session_id)

    async def _save(self, session: Session) -> None:
        left = session.expires_at(self.rules) - self._clock.now()
        await self._sessions.save(session, max(1, int(left.total_seconds())))
