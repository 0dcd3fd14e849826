import base64
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.dunning.v1 import dunning_pb2
from billing.quota.v1 import quota_pb2
from billing.recurring.v1 import recurring_pb2
from billing_common.errors import InvalidArgument
from billing_common.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_TOKEN_CHARS,
    NOT_ISSUED,
    PageRequest,
    PageTokens,
)
from billing_common.settings import CommonSettings, SettingsError

KEY = "k" * 40
OTHER_KEY = "o" * 40
TOKENS = PageTokens([KEY])
MERCHANTS = ["m-a", "m-b", "m-c"]


@dataclass(frozen=True)
class Row:
    seq: int
    merchant_id: str


def refusal(tokens: PageTokens, request: object, start: int | str = 0) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as refused:
        tokens.read(request, start)  # type: ignore[arg-type]
    return refused.value


def store_page(rows: list[Row], merchant_id: str, page: PageRequest[int]) -> list[Row]:
    """What a store's keyset query answers: the filtered rows after the cursor, `limit` of them."""
    found = [r for r in rows if (not merchant_id or r.merchant_id == merchant_id) and r.seq > page.after]
    return sorted(found, key=lambda r: r.seq)[: page.limit]


@given(
    st.lists(st.sampled_from(MERCHANTS), max_size=40),
    st.sampled_from(["", *MERCHANTS]),
    st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=50),
)
def test_a_listing_pages_through_exactly_its_filtered_rows_in_order_once_each(
    merchants: list[str], merchant_id: str, sizes: list[int]
) -> None:
    rows = [Row(seq, merchant) for seq, merchant in enumerate(merchants, start=1)]
    request = dunning_pb2.ListCasesRequest(merchant_id=merchant_id)
    seen: list[Row] = []
    for size in sizes * 50:
        request.page_size = size
        page = TOKENS.read(request, 0)
        assert page.size == (size or DEFAULT_PAGE_SIZE)
        cut = page.cut(store_page(rows, merchant_id, page), lambda r: r.seq)
        seen += cut.items
        request.page_token = TOKENS.next_token(request, cut)
        if not request.page_token:
            break
    assert not request.page_token
    assert seen == [r for r in rows if not merchant_id or r.merchant_id == merchant_id]


@given(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=60))
def test_a_text_cursor_comes_back_as_it_was_issued(code: str) -> None:
    request = quota_pb2.ListPlansRequest(include_retired=True)
    request.page_token = TOKENS.issue(request, code)
    assert TOKENS.read(request, "").after == code


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_a_number_cursor_comes_back_as_it_was_issued(seq: int) -> None:
    request = recurring_pb2.ListRunsRequest()
    request.page_token = TOKENS.issue(request, seq)
    assert TOKENS.read(request, 0).after == seq
    assert len(request.page_token) <= MAX_TOKEN_CHARS


@given(st.data())
def test_a_token_with_any_byte_changed_is_refused(data: st.DataObject) -> None:
    request = dunning_pb2.ListCasesRequest(merchant_id="m-a")
    raw = bytearray(base64.urlsafe_b64decode(TOKENS.issue(request, 41) + "=="))
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    request.page_token = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert refusal(TOKENS, request).violations[0].field == "page_token"


def test_a_token_is_refused_on_another_filter_of_the_same_list() -> None:
    issued_for = dunning_pb2.ListCasesRequest(merchant_id="m-a", state=dunning_pb2.CASE_STATE_HELD)
    token = TOKENS.issue(issued_for, 7)
    for other in (
        dunning_pb2.ListCasesRequest(merchant_id="m-b", state=dunning_pb2.CASE_STATE_HELD),
        dunning_pb2.ListCasesRequest(merchant_id="m-a"),
        dunning_pb2.ListCasesRequest(merchant_id="m-a", state=dunning_pb2.CASE_STATE_HELD, account_id="x"),
    ):
        other.page_token = token
        assert refusal(TOKENS, other).violations[0].description == NOT_ISSUED
    issued_for.page_token = token
    issued_for.page_size = 3  # the page size may change between pages
    assert TOKENS.read(issued_for, 0).after == 7


def test_a_token_is_refused_on_another_list() -> None:
    token = TOKENS.issue(recurring_pb2.ListRunsRequest(), 7)
    assert refusal(TOKENS, recurring_pb2.ListInvoicesRequest(page_token=token)).violations[0].field == (
        "page_token"
    )
    assert refusal(TOKENS, dunning_pb2.ListCasesRequest(page_token=token))


def test_a_token_of_another_deployment_or_of_a_dropped_key_is_refused() -> None:
    request = recurring_pb2.ListRunsRequest()
    request.page_token = PageTokens([OTHER_KEY]).issue(request, 7)
    assert refusal(TOKENS, request).violations[0].description == NOT_ISSUED


def test_a_token_signed_with_the_previous_key_verifies_while_that_key_is_still_listed() -> None:
    request = recurring_pb2.ListRunsRequest()
    request.page_token = PageTokens([OTHER_KEY]).issue(request, 7)
    rotated = PageTokens([KEY, OTHER_KEY])
    assert rotated.read(request, 0).after == 7
    request.page_token = rotated.issue(request, 8)
    assert TOKENS.read(request, 0).after == 8


def test_a_number_cursor_is_refused_where_the_list_pages_by_text() -> None:
    request = quota_pb2.ListPlansRequest()
    request.page_token = TOKENS.issue(request, 7)
    assert refusal(TOKENS, request, start="").violations[0].field == "page_token"


@pytest.mark.parametrize(
    "token",
    [
        "1" * 40,
        "-5",
        "garbage!",
        "a\x00b",
        base64.urlsafe_b64encode(b"after:" + b"9" * 40).decode(),
        "A" * (MAX_TOKEN_CHARS + 4),
        "AQ",
        "=====",
        "é" * 10,
    ],
)
def test_tokens_we_never_issued_are_refused_with_a_short_reason_that_does_not_echo_them(token: str) -> None:
    refused = refusal(TOKENS, recurring_pb2.ListRunsRequest(page_token=token))
    assert [(v.field, v.description) for v in refused.violations] == [("page_token", NOT_ISSUED)]
    assert token not in refused.message


@given(st.text(max_size=400))
def test_any_text_as_a_token_is_refused_and_nothing_else_is_raised(token: str) -> None:
    request = dunning_pb2.ListCasesRequest(page_token=token)
    if token:
        assert refusal(TOKENS, request).violations[0].field == "page_token"


def test_page_sizes_default_and_are_bounded() -> None:
    assert TOKENS.read(recurring_pb2.ListRunsRequest(), 0).size == DEFAULT_PAGE_SIZE
    assert TOKENS.read(recurring_pb2.ListRunsRequest(page_size=10**9), 0).size == MAX_PAGE_SIZE
    assert TOKENS.read(recurring_pb2.ListRunsRequest(page_size=3), 0) == PageRequest(3, 0)
    refused = refusal(TOKENS, recurring_pb2.ListRunsRequest(page_size=-1, page_token="x"))
    assert {v.field for v in refused.violations} == {"page_size", "page_token"}


def test_a_service_without_page_token_keys_stops_at_start_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match="PAGE_TOKEN_KEYS"):
        PageTokens.from_settings(CommonSettings(service_name="quota"))
    with pytest.raises(SettingsError, match="at least 32 characters"):
        PageTokens.from_settings(CommonSettings(service_name="quota", page_token_keys=(KEY, "short")))
