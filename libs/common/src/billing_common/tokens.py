"""The token issuer: the one holder of a private key. Never part of a service pod.

    python -m billing_common.tokens new-key --private-key keys/k2.pem --jwks keys/jwks.json
    python -m billing_common.tokens issue --private-key keys/k2.pem --subject recurring
    python -m billing_common.tokens issue --private-key keys/k2.pem --subject operator:alice --lifetime 4h
    python -m billing_common.tokens retire-key --jwks keys/jwks.json --kid=<kid of the old key>

A key id may start with "-", so it is given as `--kid=<kid>`.

`new-key` writes a private key (mode 0600) and adds its public half to the JWKS the pods read, so
old and new keys verify side by side while tokens are reissued; `retire-key` then removes the old one.
Key ids are RFC 7638 thumbprints, so a private key always knows its own `kid`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from billing_common.auth import AUDIENCE, ISSUER, PERSON_ROLES, KeySet, is_caller_name
from billing_common.settings import parse_duration

# Default lifetimes: a person's token lasts a working day at most; a service's is renewed monthly.
PERSON_LIFETIME = timedelta(hours=8)
SERVICE_LIFETIME = timedelta(days=30)
THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A private key with its algorithm and key id."""

    private: PrivateKey

    @classmethod
    def generate(cls, algorithm: str = "EdDSA") -> SigningKey:
        if algorithm == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        raise ValueError(f"algorithm {algorithm!r}: EdDSA or ES256")

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        private = serialization.load_pem_private_key(pem, password=None)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return cls(private)
        if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
            return cls(private)
        raise ValueError("the private key must be Ed25519 or EC P-256")

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def algorithm(self) -> str:
        return "EdDSA" if isinstance(self.private, ed25519.Ed25519PrivateKey) else "ES256"

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        public = {member: jwk[member] for member in THUMBPRINT_MEMBERS[jwk["kty"]]}
        return {**public, "kid": thumbprint(public), "alg": self.algorithm, "use": "sig"}

    @cached_property
    def kid(self) -> str:
        return str(self.public_jwk()["kid"])

    def jwks(self) -> str:
        """A key set holding this key's public half alone (what tests and `make run` give their pods)."""
        return json.dumps({"keys": [self.public_jwk()]})


def thumbprint(public: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace; base64url."""
    canonical = json.dumps(public, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def default_lifetime(subject: str) -> timedelta:
    return PERSON_LIFETIME if subject.partition(":")[0] in PERSON_ROLES else SERVICE_LIFETIME


def issue(
    key: SigningKey,
    subject: str,
    lifetime: timedelta | None = None,
    *,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
    now: float | None = None,
) -> str:
    if not is_caller_name(subject):
        raise ValueError(f"{subject!r} is not a caller name (`role` or `role:who`)")
    issued_at = int(time.time() if now is None else now)
    seconds = int((lifetime or default_lifetime(subject)).total_seconds())
    if seconds <= 0:
        raise ValueError("the lifetime must be positive")
    claims = {"sub": subject, "aud": audience, "iss": issuer, "iat": issued_at, "exp": issued_at + seconds}
    return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})


# ------------------------------------------------------------------------------------ JWKS files


def read_jwks(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    KeySet.from_jwks(text)  # refuses anything a pod would refuse
    keys: list[dict[str, Any]] = json.loads(text)["keys"]
    return keys


def write_jwks(path: Path, keys: list[dict[str, Any]]) -> None:
    """Replace the file in one step, as a pod reading it may look at any moment."""
    KeySet.from_jwks(json.dumps({"keys": keys}))
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps({"keys": keys}, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def new_key(private_key: Path, jwks: Path, algorithm: str = "EdDSA") -> SigningKey:
    if private_key.exists():
        raise ValueError(f"{private_key} exists: a key is never overwritten")
    key = SigningKey.generate(algorithm)
    private_key.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key.pem())
    jwks.parent.mkdir(parents=True, exist_ok=True)
    write_jwks(jwks, [*read_jwks(jwks), key.public_jwk()])
    return key


def retire_key(jwks: Path, kid: str) -> None:
    keys = read_jwks(jwks)
    kept = [key for key in keys if key.get("kid") != kid]
    if len(kept) == len(keys):
        raise ValueError(f"no key {kid!r} in {jwks}")
    if not kept:
        raise ValueError("that is the last key: add the new one first (new-key)")
    write_jwks(jwks, kept)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m billing_common.tokens", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("new-key", help="create a key pair; add its public key to the JWKS")
    create.add_argument("--private-key", type=Path, required=True)
    create.add_argument("--jwks", type=Path, required=True)
    create.add_argument("--algorithm", choices=("EdDSA", "ES256"), default="EdDSA")
    sign = commands.add_parser("issue", help="print a token for a caller")
    sign.add_argument("--private-key", type=Path, required=True)
    sign.add_argument("--subject", required=True, help="recurring, console, operator:alice, ...")
    sign.add_argument("--lifetime", help=f"e.g. 4h, 30d (default {PERSON_LIFETIME} for people, else 30 days)")
    sign.add_argument("--audience", default=AUDIENCE)
    sign.add_argument("--issuer", default=ISSUER)
    retire = commands.add_parser("retire-key", help="remove a key from the JWKS: its tokens stop working")
    retire.add_argument("--jwks", type=Path, required=True)
    retire.add_argument("--kid", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "new-key":
            print(new_key(args.private_key, args.jwks, args.algorithm).kid)
        elif args.command == "issue":
            key = SigningKey.from_pem(args.private_key.read_bytes())
            lifetime = parse_duration(args.lifetime) if args.lifetime else None
            print(issue(key, args.subject, lifetime, audience=args.audience, issuer=args.issuer))
        else:
            retire_key(args.jwks, args.kid)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
