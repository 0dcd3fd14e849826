"""Who may sign in: a file of `<name> <role> <scrypt hash>` lines (a Kubernetes Secret), read again
when it is replaced."""

from __future__ import annotations

from billing_common.auth import WatchedFile
from console.domain.people import Account, parse_accounts


class AccountsFile:
    def __init__(self, path: str) -> None:
        self._accounts = WatchedFile(path, parse_accounts)

    def find(self, name: str) -> Account | None:
        return self._accounts().get(name)
