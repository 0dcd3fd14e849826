"""The one detector of card numbers (PANs) in free text, and their redaction.

A card number is 13 to 19 digits that pass the Luhn check, written in one piece or in groups
joined by up to three separator characters (spaces, dashes, dots, slashes, underscores...), and it
is found wherever it stands in a string: after letters or an underscore (`tok_4242...`,
`x4242...`) as well as between spaces. Digits glued to a longer run of digits without a separator
(a 40-digit reference) are one number, not a card number inside another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MIN_DIGITS = 13
MAX_DIGITS = 19
REDACTED = "[card number removed]"

# Cheap pre-check: at least 13 digits, at most three separator characters between two of them.
_CANDIDATE = re.compile(r"(?:[0-9][^0-9A-Za-z]{0,3}){12}[0-9]")
# UUIDs are ids, never card numbers, even when some of their groups are all digits.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
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


def _card_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where card numbers stand in `text`: whole groups of a run, 13-19 digits, Luhn-valid, not
    starting with 0 (no card's issuer number does)."""
    if "-" in text:
        text = _UUID.sub(lambda uuid: "x" * len(uuid.group()), text)
    for run in _RUN.finditer(text):
        groups = list(_GROUP.finditer(text, run.start(), run.end()))
        for first in range(len(groups)):
            if groups[first].group()[0] == "0":
                continue
            digits = ""
            for last in range(first, len(groups)):
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
