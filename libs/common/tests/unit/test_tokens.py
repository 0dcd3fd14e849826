import json
import stat
from pathlib import Path

import jwt
import pytest

from billing_common.auth import AccessPolicy, Authenticator, KeySet, TokenVerifier
from billing_common.errors import Unauthenticated
from billing_common.tokens import SigningKey, issue, main

METHOD = "/billing.recurring.v1.RecurringService/RunBilling"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip()


def admitted(jwks: Path, token: str) -> str:
    keys = KeySet.from_jwks(jwks.read_text())
    guard = Authenticator(TokenVerifier(lambda: keys), AccessPolicy({METHOD: frozenset({"operator"})}))
    return guard.authorize(METHOD, f"Bearer {token}")


def test_the_issuer_rotates_keys_new_key_then_reissue_then_retire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwks = tmp_path / "public" / "jwks.json"
    old_kid = run(capsys, "new-key", "--private-key", str(tmp_path / "k1.pem"), "--jwks", str(jwks))
    old = run(capsys, "issue", "--private-key", str(tmp_path / "k1.pem"), "--subject", "operator:alice")
    assert stat.S_IMODE((tmp_path / "k1.pem").stat().st_mode) == 0o600
    assert admitted(jwks, old) == "operator:alice"

    new_kid = run(
        capsys,
        "new-key",
        "--private-key",
        str(tmp_path / "k2.pem"),
        "--jwks",
        str(jwks),
        "--algorithm",
        "ES256",
    )
    new = run(
        capsys,
        "issue",
        "--private-key",
        str(tmp_path / "k2.pem"),
        "--subject",
        "operator",
        "--lifetime",
        "1h",
    )
    assert [key["kid"] for key in json.loads(jwks.read_text())["keys"]] == [old_kid, new_kid]
    assert admitted(jwks, old) == "operator:alice"
    assert admitted(jwks, new) == "operator"

    run(capsys, "retire-key", "--jwks", str(jwks), f"--kid={old_kid}")
    with pytest.raises(Unauthenticated):
        admitted(jwks, old)
    assert admitted(jwks, new) == "operator"
    assert "PRIVATE" not in jwks.read_text()


def test_the_issuer_never_overwrites_a_key_nor_retires_the_last_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwks = tmp_path / "jwks.json"
    kid = run(capsys, "new-key", "--private-key", str(tmp_path / "k.pem"), "--jwks", str(jwks))
    assert main(["new-key", "--private-key", str(tmp_path / "k.pem"), "--jwks", str(jwks)]) == 1
    assert main(["retire-key", "--jwks", str(jwks), f"--kid={kid}"]) == 1
    assert main(["retire-key", "--jwks", str(jwks), "--kid", "unknown"]) == 1
    assert main(["issue", "--private-key", str(tmp_path / "k.pem"), "--subject", "*"]) == 1
    assert [key["kid"] for key in json.loads(jwks.read_text())["keys"]] == [kid]


def test_people_get_hours_and_services_a_month_unless_told_otherwise() -> None:
    key = SigningKey.generate()
    for subject, seconds in (("operator", 8 * 3600), ("finance:bob", 8 * 3600), ("recurring", 30 * 86400)):
        claims = jwt.decode(issue(key, subject), options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == seconds
        assert {claims["aud"], claims["iss"], claims["sub"]} == {"billing", "billing-issuer", subject}


def test_a_key_id_is_the_thumbprint_of_the_public_key_so_a_private_key_knows_its_own() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_pem(key.pem())
    assert again.kid == key.kid == key.public_jwk()["kid"]
    assert jwt.get_unverified_header(issue(again, "recurring"))["kid"] == key.kid
