"""The one detector of card numbers (PANs) in free text, and their redaction.

A card number is 13 to 19 digits that pass the Luhn check and do not start with 0 (no issuer's
number does), written in one piece or in groups (of at least three digits, but for the last)
joined by up to three separator characters (spaces, dashes, dots, slashes, underscores...), and it
is found wherever it stands in a string: after letters or an underscore (`tok_4242...`,
`x4242...`) as well as between spaces. What is not a card number although its digits might pass
the check:

- digits glued to a longer run of digits (a 40-digit reference is one number);
- groups of one or two digits, the shape of dates and times (`2026-12-02 11:57:04`);
- digits inside a UUID, or inside a long hexadecimal word (a SHA-256 digest as an idempotency key,
  bytes written as `\x0a67...`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MIN_DIGITS = 13
MAX_DIGITS = 19
MIN_GROUP = 3
HEX_WORD = 20
REDACTED = "[card number removed]"

# Cheap pre-check: at least 13 digits, at most three separator characters between two of them.
_CANDIDATE = re.compile(r"(?:[0-9][^0-9A-Za-z]{0,3}){12}[0-9]")
# UUIDs and long hexadecimal words are ids and digests, never card numbers.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_WORD = re.compile(rf"(?<![0-9A-Za-z])(?:0?x)?[0-9a-fA-F]{{{HEX_WORD},}}(?![0-9A-Za-z])")
# A run of digit groups, each joined to the next by one to three separator characters.
_RUN = re.compile(r"[0-9]+(?:[^0-9A-Za-z]{1,3}[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _blank(match: re.Match[str]) -> str:
    return "x" * len(match.group())


def _card_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where card numbers stand in `text` (positions in `text` itself)."""
    if "-" in text:
        text = _UUID.sub(_blank, text)
    if len(text) >= HEX_WORD:
        text = _HEX_WORD.sub(_blank, text)
    for run in _RUN.finditer(text):
        groups = list(_GROUP.finditer(text, run.start(), run.end()))
        for first in range(len(groups)):
            if groups[first].group()[0] == "0":
                continue
            digits = ""
            for last in range(first, len(groups)):
                # Every group but the last has at least three digits: 4-4-4-4, 4-6-5, 3-3-3-3-1.
                if last > first and len(groups[last - 1].group()) < MIN_GROUP:
                    break
                digits += groups[last].group()
                if len(digits) > MAX_DIGITS:
                    break
                if len(digits) >= MIN_DIGITS and luhn_valid(digits):
                    yield groups[first].start(), groups[last].end()


def contains_card_number(text: str) -> bool:
    if len(text) < MIN_DIGITS or _CANDIDATE.search(text) is None:
        return False
    return next(_card_spans(text), None) is not None


def redact_card_numbers(text: str) -> str:
    """`text` with every card number replaced by a marker that keeps none of its digits."""
    if len(text) < MIN_DIGITS or _CANDIDATE.search(text) is None:
        return text
    spans = list(_card_spans(text))
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        parts.append(text[position : max(start, position)])
        parts.append(REDACTED)
        position = end
    parts.append(text[position:])
    return "".join(parts)
