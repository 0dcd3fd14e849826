"""Print the line of the users file for a person: `python -m console.entrypoints.passwords alice operator`.

The password is read from standard input, never from the command line."""

from __future__ import annotations

import getpass
import sys

from console.domain.people import Role, hash_password


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[2] not in Role.__members__.values():
        sys.exit("usage: python -m console.entrypoints.passwords <name> <operator|finance>")
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        sys.exit("a password has at least 12 characters")
    print(f"{sys.argv[1]} {sys.argv[2]} {hash_password(password)}")


if __name__ == "__main__":
    main()
