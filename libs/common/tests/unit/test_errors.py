"""The one NotFound of a load by keys."""

from __future__ import annotations

import pytest

from billing_common.errors import NotFound, existing


def test_the_thing_asked_for_is_returned_when_the_load_found_it() -> None:
    assert existing({"sub_1": "found"}, "sub_1", "subscription") == "found"


def test_a_thing_the_load_left_out_is_not_found_and_named() -> None:
    with pytest.raises(NotFound, match=r"^subscription sub_2 does not exist$"):
        existing({"sub_1": "found"}, "sub_2", "subscription")
