"""Who may call what: bearer JWTs verified with public keys only, and per-method allow-lists.

A pod holds the public key set (JWKS) and nothing that can sign: the private key stays with the
issuer (`python -m billing_common.tokens`). A caller is the token's `sub`: a service (`recurring`),
the web console (`console`) or a person's role, optionally with who (`operator`, `operator:alice`).
Allow-lists name roles (the part before `:`) or whole callers, method by method; the defaults are in
each servicer and a deployment changes them with `<PREFIX>_AUTH_ACCESS`. The console names the person
it acts for in a header (`ACTING_FOR_HEADER`): such a call needs both the console and the person's
role on the method's list, and is recorded as the person's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import jwt
from google.protobuf import descriptor_pool
from prometheus_client import Gauge

from billing_common.errors import PermissionDenied, Unauthenticated
from billing_common.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)
T = TypeVar("T")

AUDIENCE = "billing"
ISSUER = "billing-issuer"
# Callers that are not one of the five services.
OPERATOR = "operator"  # people who run billing: every action
FINANCE = "finance"  # people who read money matters: no action
CONSOLE = "console"  # the finance/ops web console, acting for the people signed in to it
READERS = frozenset({OPERATOR, FINANCE, CONSOLE})
PERSON_ROLES = (OPERATOR, FINANCE)
# Metadata by which the console names the person signed in to it (`operator:alice`).
ACTING_FOR_HEADER = "x-billing-acting-for"
# Methods every caller may use without a token: probes and tooling.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
# `role` or `role:who`; the role is what allow-lists usually name.
CALLER_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}(?::[A-Za-z0-9._@+-]{1,128})?")
# Asymmetric algorithms only, each tied to its key type: a public key can never act as an HMAC secret.
ALGORITHMS = {("OKP", "Ed25519"): "EdDSA", ("EC", "P-256"): "ES256"}
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")
REQUIRED_CLAIMS = ["exp", "iat", "sub", "aud", "iss"]
# How far an issuer's clock may run ahead of ours (`iat`, `nbf`); expiry itself gets no leeway.
CLOCK_SKEW_S = 60.0
# How often a watched file (key set, outgoing token) is checked for a replacement.
RECHECK_S = 5.0
MAX_CACHED_TOKENS = 10_000

OUTGOING_TOKEN_EXPIRY = Gauge(
    "auth_outgoing_token_expires_at_seconds",
    "When the token this service presents to others expires (unix time); renew it before",
)


def is_caller_name(name: str) -> bool:
    return CALLER_NAME.fullmatch(name) is not None


# ------------------------------------------------------------------------------------ key set


@dataclass(frozen=True)
class PublicKey:
    kid: str
    algorithm: str
    key: Any  # a `cryptography` public key object


class KeySet:
    """The public keys tokens may be signed with, by key id; several at once while keys rotate."""

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, text: str) -> KeySet:
        """Parse a JWKS document; private, symmetric or unsupported keys are refused (ValueError)."""
        try:
            document = json.loads(text)
        except ValueError:
            raise ValueError("is not JSON") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ValueError('must be a JWKS: {"keys": [...]} with at least one key')
        keys: dict[str, PublicKey] = {}
        for entry in entries:
            key = _public_key(entry)
            if key.kid in keys:
                raise ValueError(f"key id {key.kid!r} appears twice")
            keys[key.kid] = key
        return cls(keys)

    def get(self, kid: object) -> PublicKey | None:
        return self._keys.get(kid) if isinstance(kid, str) else None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)


def _public_key(entry: object) -> PublicKey:
    if not isinstance(entry, dict):
        raise ValueError("every key must be a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("every key needs a `kid` (tokens name the key that signed them)")
    if any(member in entry for member in PRIVATE_MEMBERS):
        raise ValueError(f"key {kid!r} holds private or secret material: pods take public keys only")
    algorithm = ALGORITHMS.get((str(entry.get("kty")), str(entry.get("crv"))))
    if algorithm is None:
        raise ValueError(f"key {kid!r}: only Ed25519 (OKP) and P-256 (EC) public keys are accepted")
    if entry.get("alg", algorithm) != algorithm or entry.get("use", "sig") != "sig":
        raise ValueError(f"key {kid!r}: `alg` must be {algorithm} and `use` sig")
    try:
        return PublicKey(kid, algorithm, jwt.PyJWK(entry, algorithm).key)
    except jwt.PyJWTError as exc:
        raise ValueError(f"key {kid!r} is not a valid public key: {exc}") from None


class WatchedFile(Generic[T]):
    """A small file, parsed, and read again when it is replaced (a rotated Secret or ConfigMap).

    Looked at no more often than every `recheck_s`; a replacement that does not parse is logged and
    the last good value kept, so a half-written file never takes a pod's keys or token away.
    """

    def __init__(
        self,
        path: str,
        parse: Callable[[str], T],
        *,
        recheck_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._parse = parse
        self._recheck_s = RECHECK_S if recheck_s is None else recheck_s
        self._monotonic = monotonic
        self._signature = self._stat()
        with open(path, encoding="utf-8") as file:
            self._value = parse(file.read())
        self._next_check = monotonic() + self._recheck_s

    def __call__(self) -> T:
        if self._monotonic() >= self._next_check:
            self._next_check = self._monotonic() + self._recheck_s
            self._reload_if_replaced()
        return self._value

    def _stat(self) -> tuple[int, int, int]:
        found = os.stat(self.path)
        return found.st_ino, found.st_mtime_ns, found.st_size

    def _reload_if_replaced(self) -> None:
        try:
            signature = self._stat()
            if signature == self._signature:
                return
            self._signature = signature
            with open(self.path, encoding="utf-8") as file:
                self._value = self._parse(file.read())
            log.info("reloaded a replaced file", extra={"path": self.path})
        except (OSError, ValueError) as exc:
            log.warning("kept the previous contents of a file", extra={"path": self.path, "error": str(exc)})


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Caller:
    name: str  # the token's subject: `recurring`, `operator:alice`
    role: str  # the part before `:`
    expires_at: float


@dataclass(frozen=True)
class Lifetimes:
    """The longest a token may live, from its `iat` (or now, if that is earlier) to its `exp`."""

    service: timedelta = timedelta(days=31)
    person: timedelta = timedelta(hours=12)
    person_roles: frozenset[str] = frozenset(PERSON_ROLES)

    def limit_s(self, role: str) -> float:
        return (self.person if role in self.person_roles else self.service).total_seconds()


class TokenVerifier:
    """Checks signature, audience, issuer and times; remembers verified tokens until their `exp`.

    The cache matters: it runs on every RPC, and a signature check costs more than the call. A hit
    is refused at the same instant as a fresh check would be (`exp <= now`), and the cache is
    emptied whenever the key set changes, so a retired key takes its tokens with it.
    """

    def __init__(
        self,
        keys: Callable[[], KeySet],
        *,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        lifetimes: Lifetimes | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._audience = audience
        self._issuer = issuer
        self._lifetimes = lifetimes or Lifetimes()
        self._now = now
        self._verified: dict[str, Caller] = {}
        self._verified_with: KeySet | None = None

    def verify(self, token: str) -> Caller:
        keys = self._keys()
        if keys is not self._verified_with:
            self._verified.clear()
            self._verified_with = keys
        now = self._now()
        cached = self._verified.get(token)
        if cached is not None:
            if now < cached.expires_at:
                return cached
            del self._verified[token]
            raise Unauthenticated("token expired")
        caller = self._check(token, keys, now)
        if len(self._verified) >= MAX_CACHED_TOKENS:
            self._verified.clear()
        self._verified[token] = caller
        return caller

    def _check(self, token: str, keys: KeySet, now: float) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("token is not a JWT") from None
        key = keys.get(header.get("kid"))
        if key is None:
            raise Unauthenticated("token is not signed by a known key")
        if header.get("alg") != key.algorithm:
            raise Unauthenticated(f"token algorithm is not {key.algorithm}, the one of its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                # Times are checked below, on our clock, the same way as for a cached token.
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token has no `{exc.claim}` claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token is from another issuer") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token ({type(exc).__name__})") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not is_caller_name(subject):
            raise Unauthenticated("token names no valid caller")
        role = subject.partition(":")[0]
        expires_at, issued_at = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
        if expires_at <= now:
            raise Unauthenticated("token expired")
        if issued_at > now + CLOCK_SKEW_S or _numeric_date(claims, "nbf", now) > now + CLOCK_SKEW_S:
            raise Unauthenticated("token is not valid yet")
        if expires_at - min(issued_at, now) > self._lifetimes.limit_s(role):
            raise Unauthenticated(f"token lives longer than a token for {role!r} may")
        return Caller(subject, role, expires_at)


def _numeric_date(claims: Mapping[str, Any], name: str, default: float | None = None) -> float:
    value = claims.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"token claim `{name}` is not a time")
    return float(value)


# ------------------------------------------------------------------------------ allow-lists


@dataclass(frozen=True)
class AccessPolicy:
    """Full method name (`/pkg.Service/Method`) -> the roles or callers allowed to call it."""

    allowed: Mapping[str, frozenset[str]]

    def __post_init__(self) -> None:
        for method, callers in self.allowed.items():
            for caller in callers:
                if not is_caller_name(caller):
                    raise ValueError(
                        f"{method}: {caller!r} is not a caller (name each one: `role` or `role:who`; no `*`)"
                    )

    @classmethod
    def for_services(cls, services: Mapping[str, Mapping[str, Collection[str]]]) -> AccessPolicy:
        """Each service's defaults (`service -> method -> callers`), checked against its contract."""
        allowed: dict[str, frozenset[str]] = {}
        for service, methods in services.items():
            declared = _declared_methods(service)
            if declared is not None and declared != set(methods):
                missing, unknown = sorted(declared - set(methods)), sorted(set(methods) - declared)
                raise ValueError(
                    f"{service}: allow-lists missing for {missing}, listed for unknown {unknown}"
                )
            allowed.update({f"/{service}/{name}": frozenset(callers) for name, callers in methods.items()})
        return cls(allowed)

    def allows(self, method: str, caller: Caller) -> bool:
        callers = self.allowed.get(method)
        return callers is not None and (caller.role in callers or caller.name in callers)

    def changed_by(self, rules: AccessRules) -> AccessPolicy:
        allowed = dict(self.allowed)
        for rule in rules.rules:
            for name in rule.methods:
                method = self._resolve(name)
                allowed[method] = allowed[method] | rule.callers if rule.adds else rule.callers
        return AccessPolicy(allowed)

    def _resolve(self, name: str) -> str:
        if "/" in name:
            method = "/" + name.lstrip("/")
            if method in self.allowed:
                return method
            raise ValueError(f"no method {name!r} here")
        found = [method for method in self.allowed if method.rsplit("/", 1)[1] == name]
        if len(found) == 1:
            return found[0]
        if not found:
            known = ", ".join(sorted(method.rsplit("/", 1)[1] for method in self.allowed))
            raise ValueError(f"no method {name!r} here (methods: {known})")
        raise ValueError(f"{name!r} is a method of several services: write it `package.Service/{name}`")


def _declared_methods(service: str) -> set[str] | None:
    try:
        return {method.name for method in descriptor_pool.Default().FindServiceByName(service).methods}
    except KeyError:
        return None  # a service without a compiled contract (the echo service of tests and benchmarks)


@dataclass(frozen=True)
class AccessRule:
    methods: tuple[str, ...]
    callers: frozenset[str]
    adds: bool  # `+=` adds the callers to the method's list; `=` replaces it


@dataclass(frozen=True)
class AccessRules:
    """A deployment's changes to the allow-lists: `CheckQuota,CheckQuotaBatch+=storefront; SetClock=`."""

    rules: tuple[AccessRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AccessRules:
        rules = []
        for part in text.split(";"):
            if not part.strip():
                continue
            target, equals, callers_text = part.partition("=")
            target = target.strip()
            adds = target.endswith("+")
            methods = tuple(m.strip() for m in target.removesuffix("+").split(","))
            if not equals or not all(methods):
                raise ValueError(
                    f"{part.strip()!r} is not `Method[,Method]+=caller[,caller]` or `Method=...`"
                )
            callers = frozenset(c.strip() for c in callers_text.split(",") if c.strip())
            for caller in callers:
                if not is_caller_name(caller):
                    raise ValueError(
                        f"{caller!r} is not a caller (name each one: `role` or `role:who`; no `*`)"
                    )
            rules.append(AccessRule(methods, callers, adds))
        return cls(tuple(rules))


# --------------------------------------------------------------------------- the whole guard


class Authenticator:
    """Admits a call when its bearer token verifies and its caller is on the method's allow-list."""

    def __init__(
        self, verifier: TokenVerifier | None, policy: AccessPolicy, *, insecure: bool = False
    ) -> None:
        if verifier is None and not insecure:
            raise ValueError("a key set to verify tokens with is required (or turn on insecure mode)")
        self._verifier = verifier
        self._policy = policy
        self.insecure = insecure

    def is_open(self, method: str) -> bool:
        return method.split("/")[1] in OPEN_SERVICES if method.count("/") >= 2 else False

    def authorize(self, method: str, authorization: str | None, acting_for: str | None = None) -> str:
        """The caller's name (the person's, when the console acts for one), or an error saying why
        the call is refused."""
        if self.is_open(method):
            return "anonymous"
        if self.insecure:
            if acting_for and is_caller_name(acting_for):
                return acting_for
            try:
                return self._caller(authorization).name if authorization else "insecure-dev"
            except Unauthenticated:
                return "insecure-dev"
        if not authorization:
            raise Unauthenticated("missing bearer token")
        caller = self._caller(authorization)
        if not self._policy.allows(method, caller):
            raise PermissionDenied(f"caller {caller.name!r} may not call {method}")
        if acting_for:
            return self._person(method, caller, acting_for).name
        return caller.name

    def _person(self, method: str, caller: Caller, acting_for: str) -> Caller:
        """The person the console acts for, held to the method's allow-list like any caller."""
        if caller.role != CONSOLE:
            raise PermissionDenied(f"caller {caller.name!r} may not act for someone else")
        role = acting_for.partition(":")[0]
        if not is_caller_name(acting_for) or role not in PERSON_ROLES:
            raise PermissionDenied("the console acts for people only: `operator:<who>` or `finance:<who>`")
        person = Caller(acting_for, role, caller.expires_at)
        if not self._policy.allows(method, person):
            raise PermissionDenied(f"{acting_for!r} may not call {method}")
        return person

    def _caller(self, authorization: str) -> Caller:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or self._verifier is None:
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        return self._verifier.verify(token.strip())


# ---------------------------------------------------------------------- from the settings


@dataclass(frozen=True)
class AuthConfig:
    """The auth settings of a pod, parsed and checked once at start; errors name their variable."""

    verifier: TokenVerifier | None
    rules: AccessRules
    outgoing_token: Callable[[], str]
    insecure: bool
    access_variable: str

    @classmethod
    def from_settings(cls, settings: CommonSettings, variable_prefix: str = "") -> AuthConfig:
        def variable(field: str) -> str:
            return f"{variable_prefix}_{field}" if variable_prefix else field

        verifier = None
        if settings.auth_jwks:
            try:
                keys = _key_source(settings.auth_jwks)
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{variable('AUTH_JWKS')}: {exc}") from None
            for role in settings.auth_person_roles:
                if not is_caller_name(role) or ":" in role:
                    raise SettingsError(f"{variable('AUTH_PERSON_ROLES')}: {role!r} is not a role name")
            verifier = TokenVerifier(
                keys,
                audience=settings.auth_audience,
                issuer=settings.auth_issuer,
                lifetimes=Lifetimes(
                    settings.auth_max_token_lifetime,
                    settings.auth_max_person_token_lifetime,
                    frozenset(settings.auth_person_roles),
                ),
            )
        elif not settings.auth_insecure:
            raise SettingsError(
                f"{variable('AUTH_JWKS')} is required: the public keys that verify callers' tokens"
                f" (or {variable('AUTH_INSECURE')}=true for development)"
            )
        try:
            rules = AccessRules.parse(settings.auth_access)
        except ValueError as exc:
            raise SettingsError(f"{variable('AUTH_ACCESS')}: {exc}") from None
        return cls(
            verifier,
            rules,
            _outgoing_token(settings, variable),
            settings.auth_insecure,
            variable("AUTH_ACCESS"),
        )

    def authenticator(self, services: Mapping[str, Mapping[str, Collection[str]]]) -> Authenticator:
        """The guard for these services' methods: their default allow-lists changed by AUTH_ACCESS."""
        defaults = AccessPolicy.for_services(services)  # a mistake in code, not in the settings
        try:
            policy = defaults.changed_by(self.rules)
        except ValueError as exc:
            raise SettingsError(f"{self.access_variable}: {exc}") from None
        return Authenticator(self.verifier, policy, insecure=self.insecure)


def _key_source(setting: str) -> Callable[[], KeySet]:
    """AUTH_JWKS is the key set itself (JSON, fixed for the process) or a file read again when replaced."""
    if setting.lstrip().startswith("{"):
        keys = KeySet.from_jwks(setting)
        return lambda: keys
    return WatchedFile(setting, KeySet.from_jwks)


def _outgoing_token(settings: CommonSettings, variable: Callable[[str], str]) -> Callable[[], str]:
    if settings.auth_token and settings.auth_token_file:
        raise SettingsError(f"set {variable('AUTH_TOKEN')} or {variable('AUTH_TOKEN_FILE')}, not both")
    if not settings.auth_token_file:
        token = settings.auth_token.strip()
        if token:
            try:
                _note_outgoing_token(token)
            except ValueError as exc:
                raise SettingsError(f"{variable('AUTH_TOKEN')}: {exc}") from None
        return lambda: token
    try:
        return WatchedFile(settings.auth_token_file, _note_outgoing_token)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{variable('AUTH_TOKEN_FILE')}: {exc}") from None


def _note_outgoing_token(text: str) -> str:
    """The token as read, after telling (gauge, warning) when it expires: renewal is the issuer's job."""
    token = text.strip()
    try:
        expires = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        raise ValueError("is not a JWT with an `exp`") from None
    OUTGOING_TOKEN_EXPIRY.set(expires)
    if expires - time.time() < timedelta(days=3).total_seconds():
        log.warning(
            "the token this service presents expires soon: issue a new one",
            extra={"expires_at": datetime.fromtimestamp(expires, UTC).isoformat()},
        )
    return token
