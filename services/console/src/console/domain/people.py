"""People who sign in to the console: who they are, their role, and what the role lets them do.

The services decide what a person may do (their allow-lists name the role); the console only hides
the buttons a role could not use, so finance never sees an action that would be refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

# scrypt cost: 16 MiB per sign-in check, far past a guessing budget (the README gives its time).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
HASH_SCHEME = "scrypt"


class Role(StrEnum):
    OPERATOR = "operator"  # runs billing: reads everything and takes actions
    FINANCE = "finance"  # reads money matters, changes nothing


@dataclass(frozen=True)
class Person:
    name: str
    role: Role

    @property
    def caller(self) -> str:
        """How the services know this person: `operator:alice`, in allow-lists and histories."""
        return f"{self.role.value}:{self.name}"

    @property
    def may_act(self) -> bool:
        return self.role is Role.OPERATOR


@dataclass(frozen=True)
class Account:
    """A person who may sign in, with the scrypt hash of their password (never the password)."""

    person: Person
    password_hash: str


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"{HASH_SCHEME}${salt.hex()}${digest.hex()}"


def password_matches(password_hash: str, password: str) -> bool:
    scheme, _, rest = password_hash.partition("$")
    salt_hex, _, digest_hex = rest.partition("$")
    if scheme != HASH_SCHEME or not salt_hex or not digest_hex:
        return False
    try:
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    found = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return hmac.compare_digest(found, digest)


def parse_accounts(text: str) -> dict[str, Account]:
    """One person a line: `<name> <operator|finance> <scrypt hash>`; `#` starts a comment."""
    accounts: dict[str, Account] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"line {number}: expected `<name> <role> <password hash>`")
        name, role, password_hash = parts
        if role not in Role.__members__.values():
            raise ValueError(f"line {number}: role must be one of {', '.join(Role)}")
        if not name.replace(".", "").replace("-", "").replace("_", "").isalnum() or len(name) > 64:
            raise ValueError(f"line {number}: a name is letters, digits, '.', '-' or '_' (64 at most)")
        if name in accounts:
            raise ValueError(f"line {number}: {name} appears twice")
        accounts[name] = Account(Person(name, Role(role)), password_hash)
    return accounts
