"""Paging for every List RPC: bounded page sizes and one opaque, tamper-evident page token.

A token is base64url (unpadded) of

    version (1 byte) | cursor | tag (16 bytes)

where the cursor is typed (`i` + a signed 64-bit big-endian integer, or `s` + at most
`MAX_TEXT_CURSOR_BYTES` of UTF-8 without NUL) and the tag is HMAC-SHA256, cut to 128 bits, over
the version, the request's type (buf lint keeps one request type per method, so it names the
method), the request's other fields (its filter: deterministic protobuf bytes without `page_size`
and `page_token`) and the cursor. A token verifies only for the List and the filter it was issued
for, and only in a deployment that holds its key: a token from another List, another filter or
another deployment, an edited token or a made-up one is INVALID_ARGUMENT on `page_token`, and no
cursor reaches a query before its tag is checked. The token is signed, not encrypted: it holds a
row key, nothing a caller could not list.

Keys come from the `PAGE_TOKEN_KEYS` setting (`<SERVICE>_PAGE_TOKEN_KEYS`), the same in every pod
of a deployment: one or more comma-separated random keys of at least 32 characters. The first
signs; every key verifies, so a key is rotated by first adding the new one second, then moving it
first, then dropping the old one, and no listing in progress breaks on a rolling update.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from billing_common.errors import Violations
from billing_common.settings import CommonSettings, SettingsError

if TYPE_CHECKING:
    from google.protobuf.message import Message

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MIN_KEY_CHARS = 32
MAX_TEXT_CURSOR_BYTES = 256
NOT_ISSUED = "is not a page token issued for this request"

_VERSION = 1
_TAG_BYTES = 16
_INT = b"i"
_TEXT = b"s"
_INT64 = struct.Struct(">q")
# version + text tag + longest text cursor + tag, in base64: anything longer was not issued here.
MAX_TOKEN_CHARS = math.ceil((2 + MAX_TEXT_CURSOR_BYTES + _TAG_BYTES) * 4 / 3)
# The two fields every List request has beside its filter.
_PAGE_SIZE = "page_size"
_PAGE_TOKEN = "page_token"
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")

C = TypeVar("C", int, str)
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T, C]):
    """One page of a listing, and the cursor after its last item when more follow."""

    items: list[T]
    next_after: C | None = None


@dataclass(frozen=True)
class PageRequest(Generic[C]):
    """What a List asks of its store: `limit` rows after the cursor `after` (the start on page one)."""

    size: int
    after: C

    @property
    def limit(self) -> int:
        """One row more than a page: its presence says that another page follows."""
        return self.size + 1

    def cut(self, rows: Sequence[T], cursor_of: Callable[[T], C]) -> Page[T, C]:
        """The page out of `rows` fetched with `limit`, and its next cursor if a row was left over."""
        items = list(rows[: self.size])
        more = len(rows) > self.size and bool(items)
        return Page(items, cursor_of(items[-1]) if more else None)


class PageTokens:
    """Reads page requests and issues next-page tokens for one deployment's keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("page tokens need at least one key")
        if any(len(key) < MIN_KEY_CHARS for key in keys):
            raise ValueError(f"every page token key needs at least {MIN_KEY_CHARS} characters")
        self._keys = [key.encode() for key in keys]

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> PageTokens:
        """The deployment's token keys, or a stop at start naming the setting."""
        try:
            return cls(settings.page_token_keys)
        except ValueError as exc:
            raise SettingsError(
                f"PAGE_TOKEN_KEYS ({settings.service_name}): {exc}; set one or more random keys, "
                "comma-separated, the same in every pod"
            ) from None

    def read(self, request: Message, start: C) -> PageRequest[C]:
        """The page a List request asks for; `start` is the cursor of page one and fixes its type."""
        violations = Violations()
        requested: int = getattr(request, _PAGE_SIZE)
        token: str = getattr(request, _PAGE_TOKEN)
        violations.check(requested >= 0, "page_size", "must not be negative")
        after = start
        if token:
            found = self._verify(request, token, type(start))
            violations.check(found is not None, "page_token", NOT_ISSUED)
            if found is not None:
                after = found
        violations.raise_if_any()
        return PageRequest(min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), after)

    def next_token(self, request: Message, page: Page[Any, C]) -> str:
        """The token of the page after `page`, or "" when it was the last."""
        return "" if page.next_after is None else self.issue(request, page.next_after)

    def issue(self, request: Message, after: C) -> str:
        body = bytes([_VERSION]) + _encode_cursor(after)
        tag = self._tag(self._keys[0], request, body)
        return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode("ascii")

    def _verify(self, request: Message, token: str, kind: type[C]) -> C | None:
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN_ALPHABET.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if len(raw) < 2 + _TAG_BYTES or body[0] != _VERSION:
            return None
        if not any(hmac.compare_digest(tag, self._tag(key, request, body)) for key in self._keys):
            return None
        return _decode_cursor(body[1:], kind)

    @staticmethod
    def _tag(key: bytes, request: Message, body: bytes) -> bytes:
        scope = request.DESCRIPTOR.full_name.encode()
        where = _filter_of(request)
        mac = hmac.new(key, digestmod=hashlib.sha256)
        for part in (scope, where, body):
            mac.update(struct.pack(">I", len(part)))
            mac.update(part)
        return mac.digest()[:_TAG_BYTES]


def _filter_of(request: Message) -> bytes:
    """The request without its paging fields: what every page of one listing shares."""
    where = type(request)()
    where.CopyFrom(request)
    where.ClearField(_PAGE_SIZE)
    where.ClearField(_PAGE_TOKEN)
    return where.SerializeToString(deterministic=True)


def _encode_cursor(after: int | str) -> bytes:
    if isinstance(after, int):
        return _INT + _INT64.pack(after)
    text = after.encode()
    if len(text) > MAX_TEXT_CURSOR_BYTES or "\x00" in after:
        raise ValueError("a text cursor is at most 256 bytes of UTF-8 without NUL")
    return _TEXT + text


def _decode_cursor(data: bytes, kind: type[C]) -> C | None:
    """The cursor, if it has the type and bounds this List expects (checked after the tag)."""
    tag, value = data[:1], data[1:]
    if kind is int and tag == _INT and len(value) == _INT64.size:
        number: int = _INT64.unpack(value)[0]
        return kind(number)
    if kind is str and tag == _TEXT and len(value) <= MAX_TEXT_CURSOR_BYTES:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            return None
        return None if "\x00" in text else kind(text)
    return None
