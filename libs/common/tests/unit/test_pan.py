"""The one card-number detector: found wherever it stands, however it is grouped; never in ids."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_common.pan import REDACTED, contains_card_number, luhn_valid, redact_card_numbers


def _with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "tok_4242424242424242",
        "x4242424242424242",
        "4242.4242.4242.4242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "4242/4242/4242/4242",
        "card: 5555 5555 5555 4444, exp 12/30",
        "3782-822463-10005",
        "6011111111111117end",
        "ref 1234-4242-4242-4242-4242",
    ],
)
def test_card_numbers_are_found_after_letters_underscores_and_in_any_grouping(text: str) -> None:
    assert contains_card_number(text)
    assert REDACTED in redact_card_numbers(text)


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890123456",  # fails the Luhn check
        "00000000-0000-0000-0000-000000000000",
        "12345678-1234-1234-1234-123456789012",  # a UUID whose groups are all digits
        "0000000000000000",
        "4" * 40,  # one long number, not a card number inside another
        "2026-12-02T11:15:00Z",
        "retry after 2026-12-02 11:57:04.621+00:00",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # a SHA-256 digest
        "\\x0a670a24330a1212345678901234567890",  # bytes written as hex
        "tenant-42",
        "",
    ],
)
def test_ids_dates_and_long_numbers_are_not_card_numbers(text: str) -> None:
    assert not contains_card_number(text)
    assert redact_card_numbers(text) == text


@given(
    body=st.text(alphabet="0123456789", min_size=12, max_size=18).filter(lambda b: b[0] != "0"),
    separator=st.sampled_from(["", " ", "-", ".", "_", "/", " - "]),
    group=st.integers(3, 6),
    before=st.sampled_from(["", "tok_", "x", "pay with ", "a:"]),
    after=st.sampled_from(["", " thanks", "_end", "z"]),
)
def test_any_luhn_valid_number_of_13_to_19_digits_is_found_and_redacted_without_a_digit_left(
    body: str, separator: str, group: int, before: str, after: str
) -> None:
    pan = _with_check_digit(body)
    grouped = separator.join(pan[i : i + group] for i in range(0, len(pan), group))
    text = f"{before}{grouped}{after}"

    assert contains_card_number(text)
    redacted = redact_card_numbers(text)
    assert pan not in "".join(c for c in redacted if c.isdigit())
    assert redacted.startswith(before) and redacted.endswith(after)
