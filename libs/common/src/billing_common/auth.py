"""Service-to-service authentication: bearer JWTs naming the calling service, per-method allow-lists."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import jwt

from billing_common.errors import PermissionDenied, Unauthenticated

AUDIENCE = "billing"
ANY_CALLER = "*"
MIN_SECRET_BYTES = 32
# Methods every caller may use without a token: probes and tooling.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def issue_token(secret: str, subject: str, ttl: timedelta = timedelta(days=365)) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + int(ttl.total_seconds())},
        secret,
        algorithm="HS256",
    )


@dataclass(frozen=True)
class AccessPolicy:
    """Full method name (`/pkg.Service/Method`) -> the callers allowed to call it."""

    allowed: Mapping[str, frozenset[str]]

    @classmethod
    def for_service(cls, service: str, methods: Mapping[str, set[str] | frozenset[str]]) -> AccessPolicy:
        return cls({f"/{service}/{name}": frozenset(callers) for name, callers in methods.items()})

    def merged(self, other: AccessPolicy) -> AccessPolicy:
        return AccessPolicy({**self.allowed, **other.allowed})


class Authenticator:
    """Verifies bearer tokens (with a small cache: this runs on every RPC) and checks allow-lists."""

    def __init__(self, secret: str, policy: AccessPolicy, *, insecure: bool = False) -> None:
        if len(secret) < MIN_SECRET_BYTES and not insecure:
            raise ValueError(
                f"the auth signing key must be at least {MIN_SECRET_BYTES} bytes (or turn on insecure mode)"
            )
        self._secret = secret
        self._policy = policy
        self.insecure = insecure
        self._verified: dict[str, tuple[str, float]] = {}

    def is_open(self, method: str) -> bool:
        return method.split("/")[1] in OPEN_SERVICES if method.count("/") >= 2 else False

    def authorize(self, method: str, authorization: str | None) -> str:
        """The caller's name, or an error saying why the call is refused."""
        if self.is_open(method):
            return "anonymous"
        if self.insecure:
            return self._subject(authorization) if authorization else "insecure-dev"
        if not authorization:
            raise Unauthenticated("missing bearer token")
        caller = self._subject(authorization)
        allowed = self._policy.allowed.get(method)
        if allowed is None or (caller not in allowed and ANY_CALLER not in allowed):
            raise PermissionDenied(f"caller {caller!r} may not call {method}")
        return caller

    def _subject(self, authorization: str) -> str:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        cached = self._verified.get(token)
        if cached and cached[1] > time.time():
            return cached[0]
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=AUDIENCE)
        except jwt.PyJWTError as exc:
            if self.insecure:
                return "insecure-dev"
            raise Unauthenticated(f"invalid token: {exc}") from None
        subject = str(claims.get("sub") or "")
        if not subject:
            raise Unauthenticated("token names no caller")
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[token] = (subject, float(claims["exp"]))
        return subject
