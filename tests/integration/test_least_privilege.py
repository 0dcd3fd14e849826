"""Every service refuses wrong callers and bad tokens, as real processes; the README's table is the code's."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from billing_common.auth import AccessPolicy
from billing_common.settings import CommonSettings
from billing_common.tokens import SigningKey
from billing_devtools.testing.plugin import InfraEnv, session_signing_key
from billing_devtools.testing.processes import RunningProcess, start_process
from dunning.entrypoints.servicer import ACCESS as DUNNING
from gateway_adapter.entrypoints.servicer import ACCESS as GATEWAY
from quota.entrypoints.servicer import ACCESS as QUOTA
from recurring.entrypoints.servicer import ACCESS as RECURRING
from tier.entrypoints.servicer import ACCESS as TIER

README = Path(__file__).resolve().parents[2] / "README.md"
# name: (package, env prefix, gRPC service, its default allow-lists)
SERVICES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "gateway-adapter": ("gateway_adapter", "GATEWAY", "billing.gateway.v1.GatewayService", GATEWAY),
    "quota": ("quota", "QUOTA", "billing.quota.v1.QuotaService", QUOTA),
    "recurring": ("recurring", "RECURRING", "billing.recurring.v1.RecurringService", RECURRING),
    "dunning": ("dunning", "DUNNING", "billing.dunning.v1.DunningService", DUNNING),
    "tier": ("tier", "TIER", "billing.tier.v1.TierService", TIER),
}
WRONG_CALLERS = [
    ("recurring", "CancelSubscription", "tier"),
    ("recurring", "CreateSubscription", "nobody"),
    ("recurring", "AddAccountCredit", "finance:bob"),
    ("recurring", "RunBilling", "console"),
    ("quota", "RecordUsage", "tier"),
    ("quota", "CheckQuota", "nobody"),
    ("quota", "CreatePlan", "recurring"),
    ("tier", "ReportSignals", "nobody"),
    ("tier", "ReportSignals", "recurring"),
    ("tier", "RunScan", "console"),
    ("dunning", "SetPolicy", "recurring"),
    ("dunning", "RetryNow", "finance"),
    ("gateway-adapter", "Charge", "dunning"),
    ("gateway-adapter", "Charge", "operator"),
    ("gateway-adapter", "Refund", "console"),
    # Granted CreateSubscription by configuration below, nothing else.
    ("recurring", "CancelSubscription", "signup"),
]
GRANTS = {"recurring": {"RECURRING_AUTH_ACCESS": "CreateSubscription+=signup"}}


def forged_tokens() -> dict[str, str]:
    """Tokens a hostile caller might try; none of them may pass any service."""
    ours, foreign, now = session_signing_key(), SigningKey.generate(), int(time.time())
    claims = {"sub": "operator", "aud": "billing", "iss": "billing-issuer", "iat": now, "exp": now + 3600}
    public_pem = ours.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def signed(key: SigningKey = ours, **changes: Any) -> str:
        payload = {name: value for name, value in {**claims, **changes}.items() if value is not None}
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": ours.kid})

    return {
        "without exp": signed(exp=None),
        "expired": signed(iat=now - 7200, exp=now - 3600),
        "exp a month ahead for a person": signed(exp=now + 30 * 86400),
        "signed by a foreign key": signed(foreign),
        "for another audience": signed(aud="elsewhere"),
        "HS256 keyed with our public key": hmac_signed(claims, public_pem, ours.kid),
        "unsigned (alg none)": unsigned(claims, ours.kid),
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_signed(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """Made by hand: PyJWT itself refuses to use a public key as an HMAC secret."""
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': kid}).encode())}.{b64(json.dumps(claims).encode())}"
    )
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def unsigned(claims: dict[str, Any], kid: str) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{b64(json.dumps(claims).encode())}."


async def call(address: str, service: str, method: str, token: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = channel.unary_unary(f"/{SERVICES[service][2]}/{method}", lambda _: b"", lambda data: data)
        try:
            await rpc(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=20)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(900)
async def test_wrong_callers_and_bad_tokens_are_refused_by_every_service(env: InfraEnv) -> None:
    started: list[RunningProcess] = []
    address: dict[str, str] = {}
    try:
        # One after the other, and patiently: on a busy machine tier alone (its WorkOS SDK) takes a minute.
        for name, (package, prefix, _, _) in SERVICES.items():
            settings = env.settings(CommonSettings, name)
            started.append(
                await start_process(package, prefix, settings, GRANTS.get(name), ready_timeout=180)
            )
            address[name] = started[-1].address
        for service, method, caller in WRONG_CALLERS:
            code = await call(address[service], service, method, env.token(caller))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (service, method, caller)
        for case, token in forged_tokens().items():
            for service, (_, _, _, access) in SERVICES.items():
                method = next(iter(access))
                code = await call(address[service], service, method, token)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (case, service)
        # The caller granted by configuration gets past the guard, to the request's own checks.
        granted = await call(address["recurring"], "recurring", "CreateSubscription", env.token("signup"))
        assert granted == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await asyncio.gather(*(running.terminate() for running in started))


def test_every_method_of_every_service_names_its_callers_and_nothing_that_writes_is_open_to_all() -> None:
    for _, _, service, access in SERVICES.values():
        policy = AccessPolicy.for_services({service: access})  # every method listed, no `*`
        assert all(policy.allowed.values()), service


def allow_list_table(name: str) -> str:
    _, _, service, access = SERVICES[name]
    rows = [f"| `{method}` | {', '.join(sorted(callers))} |" for method, callers in access.items()]
    return "\n".join([f"**{name}** (`{service}`)", "", "| method | callers |", "|---|---|", *rows])


@pytest.mark.parametrize("name", list(SERVICES))
def test_the_readme_shows_each_services_allow_lists_as_the_code_has_them(name: str) -> None:
    assert allow_list_table(name) in README.read_text(encoding="utf-8")
