"""What the web layer writes into pages by itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from console.domain.billing import UsageRow
from console.domain.dunning import TimelineEntry
from console.domain.people import Person, Role
from console.entrypoints.web import _money, _period, _script_json, _templates


def test_chart_data_in_a_page_parses_back_and_cannot_close_its_script_element() -> None:
    data = {"note": "</script><script>alert(1)</script>", "days": [["2031-05-05", 2500]]}
    written = str(_script_json(data))
    assert "<" not in written and ">" not in written and "&#" not in written
    assert json.loads(written) == data


def test_money_is_shown_in_major_units_of_its_currency() -> None:
    assert _money({"amount_minor": 123456, "currency": "USD"}) == "1,234.56 USD"
    assert _money({"amount_minor": -2500, "currency": "USD"}) == "-25.00 USD"
    assert _money({"amount_minor": 500, "currency": "JPY"}) == "500 JPY"
    assert _money(None) == "—"


def test_a_usage_period_reads_as_a_day_as_dates_or_to_the_minute() -> None:
    def at(day: int, hour: int = 0) -> datetime:
        return datetime(2031, 3, day, hour, tzinfo=UTC)

    assert _period(at(31), datetime(2031, 4, 1, tzinfo=UTC)) == "2031-03-31"
    assert _period(at(5), datetime(2031, 4, 5, tzinfo=UTC)) == "2031-03-05 to 2031-04-05"
    assert _period(at(5, 3), at(5, 4)) == "2031-03-05 03:00 UTC to 2031-03-05 04:00 UTC"


def page(name: str, **values: object) -> str:
    """A template rendered as the web layer does, for Alice, with the text squeezed to single spaces."""
    html = (
        _templates()
        .get_template(name)
        .render(
            request=None,
            person=Person("alice", Role.OPERATOR),
            csrf_token="t",
            notice="",
            problem="",
            **values,
        )
    )
    return " ".join(html.split())


ACCOUNT = {
    "account_id": "acme",
    "tier": None,
    "timeline": [],
    "became": None,
    "hierarchy": {
        "account_id": "acme",
        "name": "acme",
        "kind": "END_USER",
        "tier": "PRO",
        "active": True,
        "children": [
            {"account_id": "acme-db", "name": "acme", "kind": "DATABASE", "tier": "PRO", "active": True}
        ],
    },
    "subscriptions": [],
    "invoices": [],
    "balances": [],
    "ledger": [
        {
            "created_at": None,
            "kind": "write_off",
            "account": "bad_debt",
            "amount": {"amount_minor": 3609, "currency": "USD"},
            "reference": "i1",
        }
    ],
    "entitlements": None,
    "cases": [],
}


def test_an_account_page_names_a_child_by_its_id_when_its_name_is_another_accounts() -> None:
    usage = [
        UsageRow(
            "exports.daily",
            0,
            5,
            "plan lite@1",
            (datetime(2031, 3, 31, tzinfo=UTC), datetime(2031, 4, 1, tzinfo=UTC)),
        )
    ]
    html = page("account.html", a={**ACCOUNT, "usage": usage})
    assert '<a href="/accounts/acme-db">acme</a> <span class="muted"><code>acme-db</code>, database' in html
    assert "<td>write off</td>" in html
    assert "<td>exports.daily</td><td>2031-03-31</td>" in html


def test_a_case_timeline_reads_title_then_detail_and_says_when_an_estimate_had_nothing_to_learn_from() -> (
    None
):
    case = {
        "case_id": "c1",
        "invoice_id": "i1",
        "account_id": "acme",
        "state": "EXHAUSTED",
        "next_attempt_at": None,
    }
    at = datetime(2031, 1, 4, 12, tzinfo=UTC)
    timeline = [
        TimelineEntry(at, "transition", "retry_scheduled → attempting", "attempt_started: attempt 1"),
        TimelineEntry(at, "attempt", "Attempt 1: failed", "day 2", estimated_success_bp=3460, sample_size=0),
    ]
    html = page("case.html", case=case, timeline=timeline, actions=())
    assert "<strong>retry_scheduled → attempting</strong>: attempt_started: attempt 1" in html
    assert "(estimated success 34.6%, the policy's starting estimate: no past attempts yet)" in html


def test_an_invoice_shows_a_unit_price_in_its_currency_and_no_decline_for_a_successful_attempt() -> None:
    invoice = {
        "invoice_id": "i1",
        "paid_at": None,
        "lines": [
            {
                "kind": "USAGE",
                "description": "Usage: api.calls",
                "quantity": 5601,
                "unit_price": {"value": "0.002"},
                "amount": {"amount_minor": 1120, "currency": "USD"},
            }
        ],
        "transactions": [
            {
                "attempt": 2,
                "created_at": None,
                "status": "SUCCEEDED",
                "failure_type": "NONE",
                "decline_kind": "NONE",
                "decline_code": "approved",
            }
        ],
    }
    html = page("invoice.html", invoice=invoice, payments=[], case=None)
    assert '<td class="num">0.002 USD</td><td class="num">11.20 USD</td>' in html
    assert "<td>succeeded</td><td>—</td> <td>—</td>" in html
