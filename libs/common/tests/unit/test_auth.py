import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from billing.quota.v1 import quota_pb2
from billing_common import auth as auth_module
from billing_common.auth import (
    AccessPolicy,
    AccessRules,
    AuthConfig,
    Authenticator,
    KeySet,
    Lifetimes,
    TokenVerifier,
    WatchedFile,
)
from billing_common.errors import PermissionDenied, Unauthenticated
from billing_common.settings import CommonSettings, SettingsError, load_settings
from billing_common.tokens import SigningKey, issue
from billing_devtools import devrun
from billing_devtools.services import SERVICES

NOW = 1_900_000_000.0
KEY = SigningKey.generate()
FOREIGN = SigningKey.generate()
QUOTA = "billing.quota.v1.QuotaService"
CHECK = f"/{QUOTA}/CheckQuota"
DEFAULTS = {
    "CheckQuota": {"operator"},
    "ListPlans": {"recurring", "operator", "finance"},
    "CreatePlan": {"operator"},
}
QUOTA_METHODS = [method.name for method in quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].methods]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def time_of_tests() -> float:
    return NOW


def jwks(*keys: SigningKey) -> str:
    return json.dumps({"keys": [key.public_jwk() for key in keys]})


def guard(
    rules: str = "",
    *,
    clock: Callable[[], float] = time_of_tests,
    keys: KeySet | None = None,
    **lifetimes: Any,
) -> Authenticator:
    key_set = KeySet.from_jwks(jwks(KEY))
    verifier = TokenVerifier(lambda: key_set, lifetimes=Lifetimes(**lifetimes), now=clock)
    policy = AccessPolicy({f"/{QUOTA}/{name}": frozenset(callers) for name, callers in DEFAULTS.items()})
    return Authenticator(verifier, policy.changed_by(AccessRules.parse(rules)))


def live(caller: str) -> str:
    """A token issued now, for guards built from settings (which run on the real clock)."""
    return issue(KEY, caller)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def token(subject: str = "operator", lifetime: timedelta | None = None, now: float = NOW) -> str:
    return issue(KEY, subject, lifetime, now=now)


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "sub": "operator",
        "aud": "billing",
        "iss": "billing-issuer",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def signed(key: SigningKey = KEY, kid: str | None = None, **changes: Any) -> str:
    return jwt.encode(
        claims(**changes), key.private, algorithm=key.algorithm, headers={"kid": kid or key.kid}
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], secret: bytes | None) -> str:
    """A token made without PyJWT, which refuses to sign HS256 with public key material."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


PUBLIC = KEY.private.public_key()
PUBLIC_MATERIAL = {
    "the public key in PEM": PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "the raw public key": PUBLIC.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    "the JWK's x": KEY.public_jwk()["x"].encode(),
    "the JWK as JSON": json.dumps(KEY.public_jwk()).encode(),
    "the whole JWKS": jwks(KEY).encode(),
}
REFUSED = {
    "no exp": signed(exp=None),
    "no iat": signed(iat=None),
    "no sub": signed(sub=None),
    "no aud": signed(aud=None),
    "no iss": signed(iss=None),
    "expired a second ago": signed(exp=int(NOW) - 1),
    "expiring now": signed(exp=int(NOW)),
    "exp beyond a service's maximum lifetime": signed(sub="recurring", exp=int(NOW) + 32 * 86400),
    "an operator token for a day": signed(exp=int(NOW) + 86400),
    "a year-long token issued eleven months ago": signed(
        sub="recurring", iat=int(NOW) - 335 * 86400, exp=int(NOW) + 30 * 86400
    ),
    "issued in the future": signed(iat=int(NOW) + 600, exp=int(NOW) + 3600),
    "not valid before later": signed(nbf=int(NOW) + 600),
    "exp that is not a number": signed(exp="tomorrow"),
    "exp that is a boolean": signed(exp=True),
    "for another audience": signed(aud="another-suite"),
    "from another issuer": signed(iss="someone-else"),
    "a caller named *": signed(sub="*"),
    "a caller with spaces": signed(sub="operator alice"),
    "signed by an unknown key": signed(FOREIGN),
    "signed by another key under our key id": signed(FOREIGN, kid=KEY.kid),
    "with no key id": jwt.encode(claims(), KEY.private, algorithm="EdDSA"),
    "alg none": hand_made({"alg": "none", "kid": KEY.kid}, None),
    **{
        f"HS256 keyed with {name}": hand_made({"alg": "HS256", "kid": KEY.kid}, secret)
        for name, secret in PUBLIC_MATERIAL.items()
    },
    "not a JWT": "not-a-token",
    "a tampered payload": ".".join(
        [signed().split(".")[0], b64(json.dumps(claims(sub="recurring")).encode()), signed().split(".")[2]]
    ),
}


def test_a_caller_on_the_allow_list_is_admitted_by_its_role_or_its_whole_name() -> None:
    auth = guard("ListPlans+=storefront:eu")
    assert auth.authorize(CHECK, bearer(token("operator"))) == "operator"
    # A person: the role admits, the whole name is what logs and history record.
    assert auth.authorize(CHECK, bearer(token("operator:alice"))) == "operator:alice"
    assert auth.authorize(f"/{QUOTA}/ListPlans", bearer(token("recurring"))) == "recurring"
    # A grant to one whole caller admits that caller, not its whole role.
    assert auth.authorize(f"/{QUOTA}/ListPlans", bearer(token("storefront:eu"))) == "storefront:eu"
    with pytest.raises(PermissionDenied):
        auth.authorize(f"/{QUOTA}/ListPlans", bearer(token("storefront:us")))


@pytest.mark.parametrize("caller", ["tier", "nobody", "recurring", "finance:bob", "console", "operatorx"])
def test_a_caller_not_on_the_allow_list_is_refused(caller: str) -> None:
    with pytest.raises(PermissionDenied):
        guard().authorize(CHECK, bearer(token(caller)))


def test_a_method_without_an_allow_list_admits_nobody() -> None:
    with pytest.raises(PermissionDenied):
        guard().authorize(f"/{QUOTA}/Unlisted", bearer(token("operator")))


@pytest.mark.parametrize("authorization", [None, "", "Basic b3BlcmF0b3I6eA==", "Bearer", "Bearer "])
def test_a_call_without_a_bearer_token_is_unauthenticated(authorization: str | None) -> None:
    with pytest.raises(Unauthenticated):
        guard().authorize(CHECK, authorization)


@pytest.mark.parametrize("case", list(REFUSED))
def test_every_unsigned_foreign_expired_or_incomplete_token_is_unauthenticated(case: str) -> None:
    with pytest.raises(Unauthenticated):
        guard().authorize(CHECK, bearer(REFUSED[case]))


def test_the_refusals_above_are_of_tokens_that_would_pass_otherwise() -> None:
    assert guard().authorize(CHECK, bearer(signed())) == "operator"
    assert guard().authorize(CHECK, bearer(signed(exp=int(NOW) + 12 * 3600))) == "operator"
    recurring = signed(sub="recurring", exp=int(NOW) + 31 * 86400)
    assert guard().authorize(f"/{QUOTA}/ListPlans", bearer(recurring)) == "recurring"


def test_lifetimes_are_limited_per_kind_of_caller_by_configuration() -> None:
    long_person = bearer(signed(exp=int(NOW) + 2 * 86400))
    assert guard(person=timedelta(days=2)).authorize(CHECK, long_person) == "operator"
    short_service = bearer(signed(sub="recurring", exp=int(NOW) + 2 * 86400))
    with pytest.raises(Unauthenticated):
        guard(service=timedelta(days=1)).authorize(f"/{QUOTA}/ListPlans", short_service)


def test_a_remembered_token_is_refused_at_the_very_instant_it_expires() -> None:
    clock = Clock()
    auth = guard(clock=clock)
    short = bearer(token("operator", timedelta(seconds=30)))
    assert auth.authorize(CHECK, short) == "operator"
    clock.now = NOW + 29.999
    assert auth.authorize(CHECK, short) == "operator"
    clock.now = NOW + 30
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authorize(CHECK, short)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authorize(CHECK, short)


def test_keys_rotate_old_and_new_tokens_pass_together_then_the_retired_key_is_refused(tmp_path: Path) -> None:
    new_key = SigningKey.generate()
    key_file = tmp_path / "jwks.json"
    key_file.write_text(jwks(KEY, new_key))
    ticks = Clock(0.0)
    keys = WatchedFile(str(key_file), KeySet.from_jwks, recheck_s=5, monotonic=ticks)
    auth = Authenticator(TokenVerifier(keys, now=Clock()), AccessPolicy({CHECK: frozenset({"operator"})}))
    old, new = bearer(token()), bearer(issue(new_key, "operator", now=NOW))
    assert auth.authorize(CHECK, old) == auth.authorize(CHECK, new) == "operator"

    replacement = tmp_path / "jwks.next"
    replacement.write_text(jwks(new_key))
    replacement.replace(key_file)  # as a Secret or ConfigMap volume is updated
    ticks.now = 5.0
    with pytest.raises(Unauthenticated, match="known key"):
        auth.authorize(CHECK, old)  # remembered as verified before, refused all the same
    assert auth.authorize(CHECK, new) == "operator"


def test_a_replaced_key_file_that_does_not_parse_keeps_the_keys_in_use(tmp_path: Path) -> None:
    key_file = tmp_path / "jwks.json"
    key_file.write_text(jwks(KEY))
    ticks = Clock(0.0)
    keys = WatchedFile(str(key_file), KeySet.from_jwks, recheck_s=1, monotonic=ticks)
    key_file.write_text('{"keys": [')
    ticks.now = 2.0
    assert keys().kids == {KEY.kid}


def settings(**values: Any) -> CommonSettings:
    return CommonSettings(**{"auth_jwks": jwks(KEY), **values})


def private_jwk(key: SigningKey) -> dict[str, Any]:
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.private, as_dict=True)
    return {**jwk, "kid": key.kid}


@pytest.mark.parametrize(
    "key_set",
    [
        pytest.param(json.dumps({"keys": [private_jwk(KEY)]}), id="a private key"),
        pytest.param(
            json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}), id="an HMAC secret"
        ),
        pytest.param(json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r"}]}), id="RSA"),
        pytest.param(json.dumps({"keys": [{**KEY.public_jwk(), "kid": ""}]}), id="a key without kid"),
        pytest.param(json.dumps({"keys": [KEY.public_jwk(), KEY.public_jwk()]}), id="a key id twice"),
        pytest.param(json.dumps({"keys": [{**KEY.public_jwk(), "alg": "HS256"}]}), id="a key marked HS256"),
        pytest.param(json.dumps({"keys": []}), id="no key"),
        pytest.param("{not json", id="not JSON"),
        pytest.param("/nonexistent/jwks.json", id="a missing file"),
    ],
)
def test_a_pod_refuses_to_start_with_anything_but_public_signature_keys(key_set: str) -> None:
    with pytest.raises(SettingsError, match=r"^QUOTA_AUTH_JWKS"):
        AuthConfig.from_settings(settings(auth_jwks=key_set), "QUOTA")


def test_a_pod_without_a_key_set_does_not_start_unless_insecure_mode_is_asked_for() -> None:
    with pytest.raises(SettingsError, match="QUOTA_AUTH_JWKS is required"):
        AuthConfig.from_settings(CommonSettings(), "QUOTA")
    insecure = AuthConfig.from_settings(CommonSettings(auth_insecure=True), "QUOTA")
    guard = insecure.authenticator({QUOTA: {method: {"operator"} for method in QUOTA_METHODS}})
    assert guard.authorize(CHECK, None) == "insecure-dev"


def test_health_and_reflection_are_open_to_all() -> None:
    assert guard().authorize("/grpc.health.v1.Health/Check", None) == "anonymous"


# ------------------------------------------------------------------ allow-lists by configuration


def authenticator(rules: str) -> Authenticator:
    config = AuthConfig.from_settings(settings(auth_access=rules), "QUOTA")
    return config.authenticator({QUOTA: {method: {"operator"} for method in QUOTA_METHODS}})


def test_a_deployment_grants_a_new_product_service_by_configuration() -> None:
    auth = authenticator(
        "CheckQuota, CheckQuotaBatch += storefront; billing.quota.v1.QuotaService/GetPlan+=storefront"
    )
    storefront = bearer(live("storefront"))
    assert auth.authorize(CHECK, storefront) == "storefront"
    assert auth.authorize(f"/{QUOTA}/GetPlan", storefront) == "storefront"
    assert auth.authorize(CHECK, bearer(live("operator"))) == "operator"  # added to, not replaced
    with pytest.raises(PermissionDenied):
        auth.authorize(f"/{QUOTA}/RecordUsage", storefront)


def test_a_deployment_replaces_or_empties_a_methods_list_by_configuration() -> None:
    auth = authenticator("CheckQuota=console; CreatePlan=")
    assert auth.authorize(CHECK, bearer(live("console"))) == "console"
    for method in (CHECK, f"/{QUOTA}/CreatePlan"):
        with pytest.raises(PermissionDenied):
            auth.authorize(method, bearer(live("operator")))


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        ("CheckQuota+=*", "not a caller"),
        ("CheckQuota+=storefront,", ""),
        ("ChekQuota+=storefront", "no method 'ChekQuota'"),
        ("billing.tier.v1.TierService/GetScan+=x", "no method"),
        ("CheckQuota storefront", "is not `Method"),
        ("+=storefront", "is not `Method"),
        ("CheckQuota+=Store Front", "not a caller"),
    ],
)
def test_a_bad_access_setting_stops_the_start_naming_the_variable(rules: str, reason: str) -> None:
    if not reason:  # a trailing comma is harmless
        authenticator(rules)
        return
    with pytest.raises(SettingsError, match=f"^QUOTA_AUTH_ACCESS: .*{reason}"):
        authenticator(rules)


def test_defaults_must_name_every_caller_and_cover_every_method_of_the_contract() -> None:
    with pytest.raises(ValueError, match=r"no `\*`"):
        AccessPolicy.for_services({"billing.testing.Echo": {"Echo": {"*"}}})
    with pytest.raises(ValueError, match=r"allow-lists missing for .*CheckQuotaBatch"):
        AccessPolicy.for_services({QUOTA: DEFAULTS})


# --------------------------------------------------------------------------- outgoing token


def test_the_outgoing_token_file_is_read_again_when_the_issuer_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "RECHECK_S", 0.0)
    first, second = token("recurring"), issue(KEY, "recurring", now=NOW + 86400)
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    current = AuthConfig.from_settings(settings(auth_token_file=str(token_file)), "RECURRING").outgoing_token
    assert current() == first
    (tmp_path / "token.next").write_text(second + "\n")
    (tmp_path / "token.next").replace(token_file)  # as a Secret volume is updated
    assert current() == second


def test_a_service_token_is_given_inline_or_as_a_file_but_not_both(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(token("recurring"))
    with pytest.raises(SettingsError, match="RECURRING_AUTH_TOKEN or RECURRING_AUTH_TOKEN_FILE"):
        AuthConfig.from_settings(
            settings(auth_token=token("recurring"), auth_token_file=str(tmp_path / "token")), "RECURRING"
        )
    with pytest.raises(SettingsError, match="RECURRING_AUTH_TOKEN_FILE"):
        AuthConfig.from_settings(settings(auth_token_file=str(tmp_path / "missing")), "RECURRING")
    (tmp_path / "garbage").write_text("hello")
    with pytest.raises(SettingsError, match="RECURRING_AUTH_TOKEN_FILE: is not a JWT"):
        AuthConfig.from_settings(settings(auth_token_file=str(tmp_path / "garbage")), "RECURRING")
    with pytest.raises(SettingsError, match="RECURRING_AUTH_TOKEN: is not a JWT"):
        AuthConfig.from_settings(settings(auth_token="hello"), "RECURRING")


def test_make_run_gives_each_pod_public_keys_and_its_own_token_and_no_signing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devrun, "DEV_KEYS", tmp_path)
    key = devrun.dev_signing_key()
    assert devrun.dev_signing_key().kid == key.kid  # made once, kept
    private_pem = (tmp_path / "signing-key.pem").read_text()
    assert "PRIVATE KEY" in private_pem
    for name, prefix, _, grpc_port, metrics_port in SERVICES:
        environment = devrun.service_env(name, prefix, grpc_port, metrics_port, key)
        pod = load_settings(CommonSettings, prefix, environment)
        values = [str(getattr(pod, field.name)) for field in dataclasses.fields(pod)]
        files = [Path(value).read_text() for value in values if value.startswith(str(tmp_path))]
        assert files and not any("PRIVATE" in text or private_pem in text for text in [*values, *files])
        config = AuthConfig.from_settings(pod, prefix)  # the key set has public keys only, or this fails
        own = config.authenticator({QUOTA: {method: {name} for method in QUOTA_METHODS}})
        assert own.authorize(CHECK, bearer(config.outgoing_token())) == name


def test_the_console_acting_for_a_person_needs_both_on_the_list_and_is_recorded_as_the_person() -> None:
    auth = authenticator("CheckQuota+=console,finance; CreatePlan+=console")
    console = bearer(live("console"))
    assert auth.authorize(CHECK, console, "operator:alice") == "operator:alice"
    assert auth.authorize(CHECK, console, "finance:bob") == "finance:bob"
    assert auth.authorize(CHECK, console) == "console"
    with pytest.raises(PermissionDenied, match="finance:bob"):
        auth.authorize(f"/{QUOTA}/CreatePlan", bearer(live("console")), "finance:bob")


@pytest.mark.parametrize(("caller", "acting_for"), [("operator", "operator:eve"), ("console", "recurring")])
def test_only_the_console_acts_for_someone_and_only_for_people(caller: str, acting_for: str) -> None:
    auth = authenticator("CheckQuota+=console,recurring")
    with pytest.raises(PermissionDenied):
        auth.authorize(CHECK, bearer(live(caller)), acting_for)
